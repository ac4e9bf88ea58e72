"""Training with transformers.Trainer on a generated audiofolder dataset (tiny model, a few dozen steps)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, chirp, load_in_clean_process
from safetensors.torch import load_file

from pqvae_hf.train import run as main

COMMON = ["--split_column", "split", "--per_device_train_batch_size", "6", "--per_device_eval_batch_size", "4",
          "--learning_rate", "3e-3", "--report_to", "none", "--seed", "0", "--crop_seconds", "0.75",
          "--dataloader_num_workers", "0", "--disable_tqdm", "true"]


def _train(audiofolder, output_dir, *extra):
    return main(["--dataset_dir", str(audiofolder), "--output_dir", str(output_dir), *COMMON, *extra])


@pytest.fixture(scope="module")
def trained(audiofolder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("runs") / "scratch"
    results = _train(audiofolder, output_dir, "--do_train", "--do_eval", "--max_steps", "40", "--logging_steps", "5",
                     "--save_steps", "20", "--test_split", "test", "--warmup_steps", "5",
                     "--config_overrides", TINY_OVERRIDES + ",dead_code_restart_interval=10")
    return output_dir, results


def test_loss_goes_down_and_eval_metrics_are_complete(trained):
    output_dir, results = trained
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    train_logs = [entry for entry in history if "train_codebook0_perplexity" in entry]
    assert len(train_logs) == 8 and all(1 <= e["train_codebook0_perplexity"] <= 16 for e in train_logs)
    for prefix in ("eval", "test"):
        assert results[f"{prefix}_frames"] > 100
        assert 0 < results[f"{prefix}_mel_l1"] < 10 and results[f"{prefix}_mel_l2"] > 0
        for m in (0, 1):
            usage = results[f"{prefix}_codebook{m}_usage"]
            assert isinstance(usage, int) and 1 <= usage <= 16
            assert results[f"{prefix}_codebook{m}_usage_fraction"] == usage / 16
            assert 1 <= results[f"{prefix}_codebook{m}_perplexity"] <= usage + 1e-6
        assert 1 <= results[f"{prefix}_composite_perplexity"] <= results[f"{prefix}_composite_usage"] <= 256
        assert results[f"{prefix}_bits_per_second"] == 8 * 8000 / 64


def test_output_folder_is_what_would_be_pushed_and_loads_cleanly(trained, tmp_path):
    output_dir, results = trained
    for name in ("config.json", "model.safetensors", "modeling_pqvae.py", "configuration_pqvae.py",
                 "quantization_pqvae.py", "feature_extraction_pqvae.py", "processing_pqvae.py",
                 "processor_config.json", "README.md"):
        assert (output_dir / name).exists(), name
    assert not list(output_dir.glob("pytorch_model*"))  # weights only as safetensors
    card = (output_dir / "README.md").read_text()
    assert "trust_remote_code=True" in card and "composite codebook | 256" in card
    assert f"{results['test_mel_l1']:.4g}" in card  # measured numbers, not placeholders
    audio = np.stack([chirp(0.6, 8000, 11), chirp(0.6, 8000, 12)])
    for folder in (output_dir, output_dir / "checkpoint-20"):
        remote = load_in_clean_process(folder, audio, tmp_path)
        assert remote["module"].startswith("transformers_modules")
        assert np.array(remote["codes"]).shape == (2, 2, 0.6 * 8000 // 64 + 1)


def test_resume_from_checkpoint_matches_an_uninterrupted_run(audiofolder, tmp_path):
    args = ["--do_train", "--max_steps", "12", "--save_steps", "6", "--logging_steps", "6", "--eval_split", "",
            "--config_overrides", TINY_OVERRIDES + ",dead_code_restart_interval=4"]
    _train(audiofolder, tmp_path / "full", *args)
    _train(audiofolder, tmp_path / "resumed", *args)
    # Interrupt "resumed" after step 6: drop its final weights and continue from checkpoint-6.
    _train(audiofolder, tmp_path / "resumed", *args, "--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoint-6"))
    full = load_file(tmp_path / "full" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    six = load_file(tmp_path / "full" / "checkpoint-6" / "model.safetensors")
    assert any(not torch.equal(six[k], full[k]) for k in full)  # the last 6 steps did change the weights


def test_fine_tune_decoder_only_keeps_tokens_identical(trained, audiofolder, tmp_path):
    output_dir, _ = trained
    _train(audiofolder, tmp_path / "finetuned", "--do_train", "--max_steps", "6", "--eval_split", "",
           "--model_name_or_path", str(output_dir), "--train_decoder_only", "true")
    before = load_file(output_dir / "model.safetensors")
    after = load_file(tmp_path / "finetuned" / "model.safetensors")
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith("decoder.") for key in changed), sorted(changed)[:5]
    with pytest.raises(ValueError, match="config_overrides applies to training from scratch"):
        _train(audiofolder, tmp_path / "bad", "--do_train", "--model_name_or_path", str(output_dir),
               "--config_overrides", "codebook_size=8")
    with pytest.raises(ValueError, match="Nothing to do"):
        _train(audiofolder, tmp_path / "bad")


def test_ddp_two_processes_on_cpu(audiofolder, tmp_path):
    """`torchrun --nproc_per_node 2` (gloo): ranks share EMA statistics, so both hold the same codebooks."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29513",
               "-m", "pqvae_hf.train", "--dataset_dir", str(audiofolder), "--output_dir", str(tmp_path / "ddp"),
               *COMMON, "--do_train", "--do_eval", "--max_steps", "6", "--logging_steps", "3", "--ddp_backend", "gloo",
               "--config_overrides", TINY_OVERRIDES, "--use_cpu", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Total train batch size (w. parallel, distributed & accumulation) = 12" in result.stderr
    metrics = json.loads((tmp_path / "ddp" / "all_results.json").read_text())
    assert metrics["eval_frames"] > 100 and metrics["eval_composite_perplexity"] >= 1
