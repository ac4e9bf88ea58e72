"""Bad audio files: every error names the file (path, or dataset row and split) and the fix; --skip_bad_audio
skips them with a log line each, a count and a report. The same checks serve the CLI, training and tokenization."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_OVERRIDES, chirp, make_audiofolder, tiny_config, warm_up
from datasets import Audio, Dataset

from pqvae_hf import PQVAEModel
from pqvae_hf.data import BadAudioError, decode_audio, load_audio_dataset, read_audio_file
from pqvae_hf.dataset_tokenization import tokenize_dataset


def write_bad_files(directory) -> dict:
    """One file per kind of problem met in real corpora; returns {kind: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    sf.write(directory / "empty.wav", np.zeros(0, np.float32), 8000)  # a header and nothing else
    sf.write(directory / "full.wav", chirp(4.3, 8000, 1), 8000, subtype="PCM_16")
    data = (directory / "full.wav").read_bytes()
    (directory / "truncated.wav").write_bytes(data[: 44 + int(1.43 * 8000) * 2])  # data chunk cut short
    (directory / "full.wav").unlink()
    (directory / "garbage.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk that is not audio")
    nan = chirp(0.5, 8000, 2)
    nan[100] = np.nan
    sf.write(directory / "nan.wav", nan, 8000, subtype="FLOAT")
    return {kind: directory / f"{kind}.wav" for kind in ("empty", "truncated", "garbage", "nan", "missing")}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return write_bad_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """The generated audiofolder plus one bad file of each kind in the train split (rows 24-28 of 'train')."""
    directory = make_audiofolder(tmp_path_factory.mktemp("bad_corpus") / "corpus", num_train=24, num_validation=2,
                                 num_test=2)
    files = write_bad_files(directory / "bad")
    with open(directory / "metadata.csv") as handle:
        rows = list(csv.DictReader(handle))
    train = [r for r in rows if r["split"] == "train"]
    bad = [{**train[0], "file_name": f"bad/{path.name}"} for path in files.values()]
    rows = train + bad + [r for r in rows if r["split"] != "train"]
    with open(directory / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny"
    warm_up(PQVAEModel(tiny_config())).save_pretrained(path)
    return str(path)


MESSAGES = {  # what a user sees for each bad file named on its own (CLI, read_audio_file)
    "empty": "{path} holds no audio samples (header only). Re-export the file or remove it.",
    "truncated": "{path} is truncated: its header declares 4.30 s of audio but the file holds 1.43 s. Re-copy or"
                 " re-export the file.",
    "garbage": "{path} could not be decoded (Error in WAV file. No 'data' chunk marker). Supported:"
               " wav/flac/ogg/opus/mp3 (libsndfile); convert it, e.g. ffmpeg -i FILE out.wav.",
    "nan": "{path} contains NaN or Inf samples. Re-export the file.",
    "missing": "{path} does not exist. Check the path.",
}


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_each_bad_file_is_named_with_its_problem_and_fix(bad_files, kind):
    with pytest.raises(BadAudioError) as error:
        read_audio_file(str(bad_files[kind]))
    assert str(error.value) == MESSAGES[kind].format(path=bad_files[kind])
    assert ".." not in str(error.value)


def test_dataset_cells_are_named_by_path_row_and_split(bad_files):
    message = "{} holds no audio samples (header only). Re-export the file or remove it; or skip bad files with" \
              " --skip_bad_audio (Python: skip_bad_audio=True)."
    with pytest.raises(BadAudioError) as error:
        decode_audio({"bytes": None, "path": str(bad_files["empty"])}, 8000, row=5, split="train")
    assert str(error.value) == message.format(f"{bad_files['empty']} (row 5 of split 'train')")
    # Corrupt embedded bytes: named by the cell's own path, never as <_io.BytesIO object at 0x...>.
    with pytest.raises(BadAudioError) as error:
        decode_audio({"bytes": b"RIFF0000WAVEnothing", "path": "speaker1/utt7.wav"}, 8000, row=3, split="test")
    assert str(error.value).startswith("speaker1/utt7.wav (embedded bytes, row 3 of split 'test') could not be decoded")
    assert "BytesIO" not in str(error.value)
    with pytest.raises(BadAudioError, match=r"^row 2 of split 'x' holds no audio samples"):
        decode_audio({"array": np.zeros(0), "sampling_rate": 8000}, 8000, row=2, split="x")


def test_cli_names_the_bad_file_and_checks_the_path_before_loading_the_model(tmp_path, bad_files, checkpoint):
    # --model points nowhere: had the model been loaded first, that would be the error.
    for kind, model in (("missing", str(tmp_path / "no_model")), ("truncated", checkpoint)):
        process = subprocess.run([sys.executable, "-m", "pqvae_hf.cli", "tokenize", str(bad_files[kind]), "--model",
                                  model], capture_output=True, text=True)
        assert process.returncode != 0
        assert process.stderr.strip().endswith("pqvae tokenize: " + MESSAGES[kind].format(path=bad_files[kind])), \
            process.stderr[-2000:]


def test_tokenize_dataset_stops_at_a_bad_file_by_default_and_skips_with_a_report(bad_corpus, checkpoint, tmp_path):
    data = load_audio_dataset(dataset_dir=str(bad_corpus), split="train", split_column="split")
    data = data.remove_columns(["duration_s"])
    with pytest.raises(BadAudioError) as error:
        tokenize_dataset(data, checkpoint, batch_size=8, split="train", load_from_cache_file=False)
    assert str(error.value).startswith(f"{bad_corpus / 'bad' / 'empty.wav'} (row 24 of split 'train') holds no audio")
    assert "--skip_bad_audio" in str(error.value)

    report = tmp_path / "bad_audio.json"
    tokens, summary = tokenize_dataset(data, checkpoint, batch_size=8, split="train", skip_bad_audio=True,
                                       bad_audio_report=str(report), load_from_cache_file=False, return_summary=True)
    assert len(tokens) == 24 and summary["bad_audio_skipped"] == 5 and summary["files"] == 24
    listed = json.loads(report.read_text())
    assert listed["skipped"] == 5 and listed["checked"] == 29
    assert [(f["row"], f["path"].split("/")[-1]) for f in listed["files"]] == [
        (24, "empty.wav"), (25, "truncated.wav"), (26, "garbage.wav"), (27, "nan.wav"), (28, "missing.wav")]
    assert all(f["split"] == "train" and f["problem"] for f in listed["files"])
    assert "skipped 5 bad audio files of 29" in summary["bad_audio"]


def test_cli_tokenize_dataset_skip_bad_audio_writes_the_report_next_to_the_tokens(bad_corpus, checkpoint, tmp_path,
                                                                                  caplog):
    from pqvae_hf.cli import run

    with caplog.at_level("WARNING"):
        summary = run(["tokenize-dataset", "--dataset_dir", str(bad_corpus), "--split", "train", "--split_column",
                       "split", "--model", checkpoint, "--output_dir", str(tmp_path / "tokens"), "--column_prefix",
                       "pqvae_", "--skip_bad_audio"])
    assert summary["files"] == 24 and summary["bad_audio_skipped"] == 5
    assert json.loads((tmp_path / "tokens" / "bad_audio.json").read_text())["skipped"] == 5
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping bad audio")]
    assert len(skipped) == 5 and any("truncated.wav (row 25 of split 'train')" in line for line in skipped)
    assert any("Skipped 5 of 29 files of split 'train'" in r.getMessage() for r in caplog.records)


def test_training_stops_at_a_bad_file_by_default_and_skips_with_a_report(bad_corpus, tmp_path):
    from pqvae_hf.train import main, run

    common = ["--dataset_dir", str(bad_corpus), "--split_column", "split", "--do_train", "--max_steps", "3",
              "--eval_split", "", "--per_device_train_batch_size", "29", "--report_to", "none", "--disable_tqdm",
              "true", "--crop_seconds", "0.5", "--config_overrides", TINY_OVERRIDES]
    with pytest.raises(SystemExit) as error:
        main([*common, "--output_dir", str(tmp_path / "stops")])
    assert str(error.value.code).startswith("pqvae-train: ") and "(row 2" in str(error.value.code)
    assert "of split 'train')" in str(error.value.code) and "--skip_bad_audio" in str(error.value.code)

    results = run([*common, "--output_dir", str(tmp_path / "skips"), "--skip_bad_audio", "true"])
    assert results["bad_audio_skipped"] == 5
    report = json.loads((tmp_path / "skips" / "bad_audio.json").read_text())
    assert report["skipped"] == 5 and {f["row"] for f in report["files"]} == {24, 25, 26, 27, 28}
    assert (tmp_path / "skips" / "model.safetensors").exists()


def test_corrupt_embedded_bytes_in_a_saved_dataset_are_named_by_their_path(checkpoint, tmp_path):
    good = (tmp_path / "good.wav")
    sf.write(good, chirp(0.5, 8000, 3), 8000)
    data = Dataset.from_dict({"audio": [{"bytes": good.read_bytes(), "path": "a/good.wav"},
                                        {"bytes": b"\x00" * 300, "path": "a/broken.wav"}]})
    data = data.cast_column("audio", Audio(decode=False))
    with pytest.raises(BadAudioError, match=r"^a/broken.wav \(embedded bytes, row 1 of split 'dev'\) could not be"):
        tokenize_dataset(data, checkpoint, split="dev", load_from_cache_file=False)
    tokens = tokenize_dataset(data, checkpoint, split="dev", skip_bad_audio=True, load_from_cache_file=False)
    assert len(tokens) == 1
    shutil.rmtree(tmp_path, ignore_errors=True)
