"""Training on a streamed dataset (`pqvae-train --streaming`), through datasets' real streaming path.

The Hub is unreachable here, so the "Hub dataset" is a local folder in the Hub's layout (parquet shards with embedded
audio under data/, named by split) passed as `--dataset_name`: `load_dataset(name, streaming=True)` then runs the
same builder and streaming code as for a Hub id.
"""

import json

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_OVERRIDES
from datasets import Audio, Dataset, IterableDataset, load_from_disk
from safetensors.torch import load_file

from pqvae_hf import PQVAEConfig, PQVAEModel
from pqvae_hf.cli import run as cli_run
from pqvae_hf.data import load_audio_dataset
from pqvae_hf.dataset_tokenization import tokenize_dataset
from pqvae_hf.train import run

COMMON = ["--per_device_train_batch_size", "6", "--per_device_eval_batch_size", "4", "--learning_rate", "3e-3",
          "--report_to", "none", "--seed", "0", "--crop_seconds", "0.75", "--dataloader_num_workers", "0",
          "--disable_tqdm", "true", "--config_overrides", TINY_OVERRIDES + ",dead_code_restart_interval=4"]


@pytest.fixture(scope="module")
def hub_folder(audiofolder, tmp_path_factory):
    """The audiofolder's three splits as a Hub-style dataset: data/<split>-00000-of-00001.parquet, audio as bytes."""
    folder = tmp_path_factory.mktemp("hub") / "speech"
    (folder / "data").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        source = load_audio_dataset(dataset_dir=str(audiofolder), split=split, split_column="split")
        cells = [{"bytes": open(cell["path"], "rb").read(), "path": cell["path"]} for cell in source["audio"]]
        embedded = Dataset.from_dict({"audio": cells, "duration_s": source["duration_s"]}).cast_column("audio", Audio())
        embedded.to_parquet(folder / "data" / f"{split}-00000-of-00001.parquet")
    return folder


def test_load_audio_dataset_streams_a_hub_dataset(hub_folder):
    stream = load_audio_dataset(dataset_name=str(hub_folder), split="train", streaming=True, max_samples=5)
    assert isinstance(stream, IterableDataset)
    rows = list(stream)
    assert len(rows) == 5 and stream.features["audio"].decode is False
    assert all(isinstance(row["audio"]["bytes"], bytes) and len(row["audio"]["bytes"]) > 100 for row in rows)
    loaded = load_audio_dataset(dataset_dir=str(hub_folder), split="train")
    assert [row["audio"]["bytes"] for row in rows] == [cell["bytes"] for cell in loaded["audio"][:5]]
    with pytest.raises(ValueError, match=r"Split 'dev' not found; available: \['train', 'validation', 'test'\]"):
        load_audio_dataset(dataset_name=str(hub_folder), split="dev", streaming=True)
    with pytest.raises(ValueError, match="Audio column 'speech' not found; columns are"):
        load_audio_dataset(dataset_name=str(hub_folder), split="train", audio_column="speech", streaming=True)


def _train(hub_folder, output_dir, *extra):
    return run(["--dataset_name", str(hub_folder), "--output_dir", str(output_dir), "--streaming", "true", *COMMON,
                *extra])


def test_streamed_training_runs_past_the_end_of_the_stream_and_evaluates(hub_folder, tmp_path):
    results = _train(hub_folder, tmp_path / "full", "--do_train", "--max_steps", "12", "--logging_steps", "3",
                     "--shuffle_buffer_size", "8", "--do_eval", "--test_split", "test")
    state = json.loads((tmp_path / "full" / "trainer_state.json").read_text())
    assert state["global_step"] == 12  # 12 steps although the stream has no length (24 clips: 3 passes of 4 batches)
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 4 and all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    # The streamed evaluation splits score exactly what the same weights score on the loaded (not streamed) splits.
    loaded = run(["--dataset_name", str(hub_folder), "--output_dir", str(tmp_path / "eval"), "--model_name_or_path",
                  str(tmp_path / "full"), "--do_eval", "--test_split", "test", "--report_to", "none",
                  "--per_device_eval_batch_size", "4", "--disable_tqdm", "true"])
    for prefix in ("eval", "test"):
        assert results[f"{prefix}_frames"] == loaded[f"{prefix}_frames"] > 100
        assert results[f"{prefix}_mel_l1"] == pytest.approx(loaded[f"{prefix}_mel_l1"], rel=1e-6)
        assert results[f"{prefix}_composite_usage"] == loaded[f"{prefix}_composite_usage"]
    assert "streamed" in (tmp_path / "full" / "README.md").read_text()


def test_a_streamed_run_cut_and_resumed_matches_an_uninterrupted_one(hub_folder, tmp_path):
    # Trainer resumes a stream by replaying it past the batches already seen, counted from the stream's start; so
    # resuming is exact within the first pass (12 batches of 2 = the 24 training clips), which a run on a
    # large streamed corpus never leaves.
    args = ["--do_train", "--max_steps", "12", "--save_steps", "6", "--per_device_train_batch_size", "2",
            "--eval_split", "", "--shuffle_buffer_size", "8"]
    _train(hub_folder, tmp_path / "full", *args)
    _train(hub_folder, tmp_path / "resumed", *args)
    _train(hub_folder, tmp_path / "resumed", *args, "--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoint-6"))
    full, resumed = (load_file(tmp_path / name / "model.safetensors") for name in ("full", "resumed"))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    six = load_file(tmp_path / "full" / "checkpoint-6" / "model.safetensors")
    assert any(not torch.equal(six[k], full[k]) for k in full)  # the last 6 steps did change the weights


def test_streaming_refuses_what_a_stream_cannot_do(hub_folder, tmp_path):
    with pytest.raises(ValueError, match=r"--streaming needs --max_steps N \(a stream has no length"):
        _train(hub_folder, tmp_path / "a", "--do_train", "--eval_split", "")
    with pytest.raises(ValueError, match="--skip_bad_audio checks every file before training, which a stream cannot"):
        _train(hub_folder, tmp_path / "b", "--do_train", "--max_steps", "2", "--skip_bad_audio", "true")
    with pytest.raises(ValueError, match="--shuffle_buffer_size must be >= 1, got 0"):
        _train(hub_folder, tmp_path / "c", "--do_train", "--max_steps", "2", "--shuffle_buffer_size", "0")


def test_a_stream_tokenizes_lazily_or_to_disk_with_the_same_tokens(hub_folder, tmp_path):
    torch.manual_seed(0)
    PQVAEModel(PQVAEConfig(**TINY)).eval().save_pretrained(tmp_path / "model")
    stream = load_audio_dataset(dataset_name=str(hub_folder), split="test", streaming=True)
    tokens = tokenize_dataset(stream, str(tmp_path / "model"), batch_size=4, column_prefix="pqvae_")
    assert isinstance(tokens, IterableDataset)
    loaded = tokenize_dataset(load_audio_dataset(dataset_dir=str(hub_folder), split="test"), str(tmp_path / "model"),
                              batch_size=4, load_from_cache_file=False, column_prefix="pqvae_")
    streamed_rows = list(tokens)
    assert len(streamed_rows) == len(loaded) == 6
    for row, expected in zip(streamed_rows, loaded):
        assert set(row) == set(expected) == {"duration_s", "pqvae_audio_codes", "pqvae_composite_ids",
                                             "pqvae_num_frames", "pqvae_duration_s"}
        assert row["pqvae_audio_codes"] == expected["pqvae_audio_codes"]
        assert row["pqvae_num_frames"] == expected["pqvae_num_frames"] > 0
    with pytest.raises(ValueError, match=r"num_proc > 1 and skip_bad_audio need\(s\) the whole dataset up front"):
        tokenize_dataset(stream, str(tmp_path / "model"), num_proc=2, skip_bad_audio=True)
    # The CLI reads the audio as a stream and writes only the tokens, with the same totals as a loaded run.
    summary = cli_run(["tokenize-dataset", "--dataset_name", str(hub_folder), "--split", "test", "--streaming",
                       "--model", str(tmp_path / "model"), "--output_dir", str(tmp_path / "tokens"),
                       "--column_prefix", "pqvae_"])
    saved = load_from_disk(str(tmp_path / "tokens"))
    assert saved["pqvae_audio_codes"] == loaded["pqvae_audio_codes"]
    assert summary["files"] == 6 and summary["tokens"] == sum(loaded["pqvae_num_frames"]) > 0
    assert summary["audio_seconds_per_second"] > 0 and summary["cache_hit"] is False


def test_a_local_audiofolder_streams_too(audiofolder, tmp_path):
    results = run(["--dataset_dir", str(audiofolder), "--split_column", "split", "--output_dir", str(tmp_path / "run"),
                   "--streaming", "true", "--do_train", "--do_eval", "--max_steps", "3", *COMMON])
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 3
    assert results["eval_frames"] > 100 and np.isfinite(results["eval_mel_l1"])
