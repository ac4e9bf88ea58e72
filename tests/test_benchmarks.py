"""The benchmark scripts run end to end in their quick mode (numbers are not asserted: timings are noisy)."""

import json
import math
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
    command = [sys.executable, str(REPO / "benchmarks" / "index_collapse.py"), "--corpus_dir", str(audiofolder),
               "--quick", "--steps", "3", "--lm_steps", "3", "--batch_size", "4", "--crop_seconds", "0.5",
               "--threads", "1", "--output_dir", str(tmp_path)]
    process = subprocess.run(command, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    rows = {row["name"]: row for row in summary["results"]}
    assert list(rows)[:2] == ["PQ-2x256+DD", "VQ-2^16"] and len(rows) == 10
    assert {"peer VQ-2^16 (vector-quantize-pytorch)", "peer FSQ 8-8-8-5-5-5", "peer SimVQ-2^16",
            "PQ-2x256+DD OPQ rotation"} <= set(rows)
    for name, row in rows.items():
        expected_size = 8 * 8 * 8 * 5 * 5 * 5 if "FSQ" in name else 65536
        assert row["composite_size"] == expected_size, name
        assert abs(row["bits_per_second"] - 62.5 * math.log2(expected_size)) < 1e-6
        for split in ("test", "validation"):
            metrics = row[split]
            assert metrics["clips"] == 6 and metrics["log_mel_l1"] > 0
            assert 1 <= metrics["composite_perplexity"] <= metrics["composite_usage"]
    assert rows["PQ-2x256+DD"]["overrides"]["entropy_loss_weight"] > 0
    assert rows["PQ-2x256 plain"]["overrides"]["entropy_loss_weight"] == 0
    # token-LM check: both tokenizers of the quick grid, cross-entropy bounded by a uniform guess over the vocabulary
    assert sorted(row["name"] for row in summary["token_lm"]) == ["PQ-2x256+DD", "VQ-2^16"]
    for row in summary["token_lm"]:
        assert row["vocab_size"] == 65536 and row["test_tokens"] > 0
        assert 0 < row["test_bits_per_frame"] < row["max_bits_per_frame"] + 1
        assert row["test_bits_per_second"] == pytest.approx(62.5 * row["test_bits_per_frame"])
    for name in ("results.md", "perplexity_vs_codebook_size.png", "usage_histogram.png"):
        assert (tmp_path / name).stat().st_size > 500, name
    assert "Token LM" in (tmp_path / "results.md").read_text()

    # a second call finds every variant done and only rewrites the report
    again = subprocess.run(command, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0 and "1/10" not in again.stderr
    assert json.loads((tmp_path / "results.json").read_text())["results"] == summary["results"]
