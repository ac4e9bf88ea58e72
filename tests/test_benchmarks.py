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


CONVERGED = REPO / "benchmarks" / "index_collapse_converged.py"


def test_index_collapse_converged_quick_mode_reports_seed_spreads_curves_and_timings(audiofolder, tmp_path):
    command = [sys.executable, str(CONVERGED), "--corpus_dir", str(audiofolder), "--quick", "--steps", "8",
               "--val_every", "4", "--restart_interval", "2", "--freeze_steps", "2", "--init_frames", "300",
               "--seeds", "0", "1", "--threads", "1", "--output_dir", str(tmp_path), "--variants", "PQ-2x256+DD",
               "RVQ-2x256+DD", "FSQ 8-8-8-5-5-5 (peer)", "VQ-2^16 plain"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    pairs = sorted((row["name"], row["seed"]) for row in summary["results"])
    # every core variant with both seeds, the plain recipe with the first seed only
    assert pairs == sorted([("PQ-2x256+DD", 0), ("PQ-2x256+DD", 1), ("RVQ-2x256+DD", 0), ("RVQ-2x256+DD", 1),
                            ("FSQ 8-8-8-5-5-5 (peer)", 0), ("FSQ 8-8-8-5-5-5 (peer)", 1), ("VQ-2^16 plain", 0)])
    # the report covers the whole grid, not only this process's --variants: the rest is listed as not run
    assert summary["running"] == [] and summary["pending"] == [
        "VQ-2^16 (seed 0)", "PQ-2x256 (seed 0)", "VQ-2^16+DD (seed 0)", "VectorQuantize-2^16 (peer, matched) (seed 0)",
        "VQ-2^16 (seed 1)", "PQ-2x256 (seed 1)", "VQ-2^16+DD (seed 1)", "PQ-2x256+DD plain (seed 0)"]
    for row in summary["results"]:
        assert [point["step"] for point in row["curve"]] == [4, 8]
        assert all(point["val_mel_l1"] > 0 and point["composite_perplexity"] >= 1 for point in row["curve"])
        breakdown = row["time_breakdown"]
        assert breakdown["ms_per_step"] > 0 and breakdown["backbone_and_optimizer_s"] > 0
        if row["name"].startswith(("PQ", "RVQ")):
            assert breakdown["quantizer_search_s"] > 0 and breakdown["ema_restarts_init_s"] > 0
            assert row["overrides"]["dead_code_restart_last_step"] == 6 and row["restart_checks"] > 0
            # k-means waited for 300 frames (a batch of 4 clips has fewer), passing latents through meanwhile
            assert row["quantizer_initialised_at_step"] > 1
        assert row["test"]["clips"] == 6 and row["test"]["log_mel_l1"] > 0
    pq = summary["variants"]["PQ-2x256+DD"]
    assert pq["seeds"] == [0, 1] and pq["test_mel_l1"]["std"] is not None and len(pq["test_mel_l1"]["values"]) == 2
    assert summary["variants"]["VQ-2^16 plain"]["test_mel_l1"]["std"] is None
    markdown = (tmp_path / "results.md").read_text()
    assert " ± " in markdown and "Validation learning curve" in markdown and "by component" in markdown
    for name in ("perplexity_vs_l1.png", "learning_curves.png", "time_breakdown.png", "usage_histogram.png"):
        assert (tmp_path / name).stat().st_size > 500, name

    # the token-LM stage: the joint 65,536-word head and, for PQ tokens, the factorised head at the joint LM's width
    # and at (about) its parameter count
    lm = subprocess.run(command + ["--stage", "token_lm", "--lm_steps", "2"], capture_output=True, text=True,
                        timeout=600, env=env)
    assert lm.returncode == 0, lm.stderr[-3000:]
    heads = {row["head_kind"]: row for row in json.loads((tmp_path / "results.json").read_text())["token_lm"]}
    assert set(heads) == {"joint", "factorised-same-width", "factorised-same-parameters"}
    joint = heads["joint"]["lm_parameters"]
    assert heads["factorised-same-width"]["lm_parameters"] < joint / 10
    assert abs(heads["factorised-same-parameters"]["lm_parameters"] - joint) < 0.05 * joint
    for row in heads.values():
        assert 0 < row["test_bits_per_frame"] < row["max_bits_per_frame"] + 2
    assert "factorised" in (tmp_path / "results.md").read_text()

    # a missing pair is reported as not run, never filled in; the report stage alone rebuilds from the JSONs
    (tmp_path / "variants" / "RVQ-2x256+DD__seed1.json").unlink()
    again = subprocess.run(command + ["--report_only"], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert "RVQ-2x256+DD (seed 1)" in summary["pending"] and len(summary["pending"]) == 9
    assert len(summary["results"]) == 6
    markdown_lines = (tmp_path / "results.md").read_text().splitlines()
    not_run = next(line for line in markdown_lines if line.startswith("Not run yet: "))
    assert "RVQ-2x256+DD (seed 1)" in not_run and "PQ-2x256+DD (seed 0)" not in not_run


def test_index_collapse_converged_resumes_a_stopped_run_exactly(audiofolder, tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import index_collapse_converged as converged
    import torch

    from pqvae_hf.data import add_index_column, decode_audio, load_audio_dataset

    args = converged.parse_args(["--corpus_dir", str(audiofolder), "--quick", "--steps", "8", "--val_every", "4",
                                 "--restart_interval", "2", "--freeze_steps", "2", "--init_frames", "40",
                                 "--replay_frames", "64"])
    train = add_index_column(load_audio_dataset(dataset_dir=str(audiofolder), split_column="split", split="train"))
    val = [decode_audio(cell, 16000) for cell in
           load_audio_dataset(dataset_dir=str(audiofolder), split_column="split", split="validation")["audio"]][:2]
    name, _, overrides, _ = converged.pairs(args)[0]
    assert name == "PQ-2x256+DD"
    torch.set_num_threads(1)
    reference, reference_record = converged.train_pair(name, overrides, 0, args, train, val, str(tmp_path / "a"))

    original = converged.Batches.__call__

    requests = []

    def stop_at_step_6(self, step):
        requests.append(step)
        if step == 6 and requests.count(6) == 2:  # the first request is the frames-per-batch estimate at start-up
            raise KeyboardInterrupt("stopped")
        return original(self, step)

    monkeypatch.setattr(converged.Batches, "__call__", stop_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        converged.train_pair(name, overrides, 0, args, train, val, str(tmp_path / "b"))
    assert (tmp_path / "b" / "checkpoint.pt").exists()
    monkeypatch.setattr(converged.Batches, "__call__", original)
    resumed, record = converged.train_pair(name, overrides, 0, args, train, val, str(tmp_path / "b"))
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert [p["val_mel_l1"] for p in record["curve"]] == [p["val_mel_l1"] for p in reference_record["curve"]]


def test_factorised_token_lm_is_causal_and_scores_every_sub_code():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import numpy as np
    import token_lm
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lm = token_lm.FactorisedTokenLM(2, 16, context=16, hidden=32, layers=1, heads=2).eval()
    codes, is_bos, mask = token_lm._code_batch(token_lm._code_windows([rng.integers(0, 16, (2, 10))], 16))
    assert bool(is_bos[0, 0]) and not is_bos[0, 1:].any() and codes.shape == (1, 11, 2)
    changed = codes.clone()
    changed[0, 5, 1] = (changed[0, 5, 1] + 1) % 16
    with torch.no_grad():
        before, after = lm(codes, is_bos, mask), lm(changed, is_bos, mask)
    assert before.shape == (1, 11, 2, 16)
    assert torch.allclose(before[0, :5], after[0, :5]) and not torch.allclose(before[0, 5:], after[0, 5:])
    # a structured sequence (sub-code 1 = sub-code 0 of the previous frame) is learnt below the uniform 8 bits
    sequence = rng.integers(0, 16, 400)
    train = [np.stack([sequence[1:], sequence[:-1]])]
    result = token_lm.train_and_score_factorised(train, train, 2, 16, steps=60, hidden=32, layers=1, heads=2,
                                                 learning_rate=1e-2)
    assert result["max_bits_per_frame"] == 8 and result["test_bits_per_frame"] < 6.5


def test_converged_targets_call_a_gap_inside_the_seed_spread_a_tie():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import index_collapse_converged as converged

    def row(method, l1, usage=(1.0, 1.0), perplexity=(200.0, 210.0)):
        split = {"log_mel_l1": l1, "codebook_usage_fraction": list(usage), "codebook_perplexity": list(perplexity)}
        return {"method": method, "composite_size": 65536, "test": split, "validation": split}

    by_variant = {"PQ-2x256+DD": [row("PQ+DD", 0.534), row("PQ+DD", 0.557)],  # mean 0.5455, std 0.016
                  "VQ-2^16": [row("VQ", 0.549), row("VQ", 0.553)],            # mean 0.551: inside 2 x 0.016
                  "PQ-2x256": [row("PQ", 0.597), row("PQ", 0.600)],           # 0.053 worse: beyond the spread
                  "FSQ": [row("FSQ", 0.500)]}                                  # better, one seed each side
    lines = {line.split(" | ")[0].lstrip("| "): line for line in converged.targets(by_variant)[5:]}
    assert lines["test mel L1 <= VQ-2^16"].endswith("| tie (not shown either way) |")
    assert "within the seed spread" in lines["test mel L1 <= VQ-2^16"]
    assert lines["test mel L1 <= PQ-2x256"].endswith("| yes |")
    assert lines["test mel L1 <= FSQ"].endswith("| **no** |")
    assert lines[">= 99 % of every sub-codebook used (test)"].endswith("| yes |")
    assert lines["sub-perplexity >= 0.8 N (test)"].endswith("| **no** |")  # 200 / 256 = 0.78 N
