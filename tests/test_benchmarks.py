"""The benchmark scripts run end to end in their quick mode (numbers are not asserted: timings are noisy)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "checkpoints" / "pqvae-speech-small" / "model.safetensors"


@pytest.mark.skipif(not SHIPPED.exists(), reason="needs the shipped checkpoint")
def test_speed_benchmark_quick_mode(tmp_path):
    process = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--quick", "--threads", "1",
                              "--output_dir", str(tmp_path)], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads((tmp_path / "speed.json").read_text())
    names = [model["name"] for model in result["models"]]
    assert names == ["pqvae", "encodec"] and all("rows" in model for model in result["models"])
    for model in result["models"]:
        row = model["rows"][0]
        assert row["encode_audio_s_per_s"] > 0 and row["decode_audio_s_per_s"] > 0 and model["peak_rss_mb"] > 50
    assert len(result["ratios"]) == 1 and result["ratios"][0]["peer"] == "encodec"
    quantizer = result["quantizer"]
    assert quantizer["expected_speedup_from_macs"] == 256 and quantizer["speedup"] > 1
    assert "PQ-VAE / peer throughput ratios" in (tmp_path / "speed.md").read_text()


def test_index_collapse_quick_mode_end_to_end(audiofolder, tmp_path):
    process = subprocess.run([sys.executable, str(REPO / "benchmarks" / "index_collapse.py"), "--corpus_dir",
                              str(audiofolder), "--quick", "--steps", "3", "--batch_size", "4", "--crop_seconds", "0.5",
                              "--output_dir", str(tmp_path)], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    names = [row["name"] for row in summary["results"]]
    assert names[:2] == ["VQ-2^16 plain", "PQ-2x256 plain"] and len(names) == 6
    for row in summary["results"]:
        assert row["composite_size"] == 65536 and row["bits_per_second"] == 1000
        for split in ("test", "validation"):
            metrics = row[split]
            assert metrics["clips"] == 6 and metrics["log_mel_l1"] > 0
            assert 1 <= metrics["composite_perplexity"] <= metrics["composite_usage"]
    for name in ("results.md", "perplexity_vs_codebook_size.png", "usage_histogram.png"):
        assert (tmp_path / name).stat().st_size > 500, name
