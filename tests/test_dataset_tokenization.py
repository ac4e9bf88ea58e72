"""tokenize_dataset: exact lengths, batch == single, num_proc, shards, long audio, decode=False, cache."""

import numpy as np
import pytest
import torch
from conftest import tiny_config, warm_up
from datasets import Audio, Dataset, concatenate_datasets

from pqvae_hf import PQVAEModel
from pqvae_hf.data import decode_audio, load_audio_dataset
from pqvae_hf.dataset_tokenization import shard_for_this_process, tokenize_dataset


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config()))
    path = tmp_path_factory.mktemp("models") / "tiny"
    model.save_pretrained(path)
    return model, str(path)


@pytest.fixture(scope="module")
def dataset(audiofolder):
    # The corpus's own duration_s column would clash with the output column of that name (see the clash test).
    return load_audio_dataset(dataset_dir=str(audiofolder), split="train", split_column="split").remove_columns(
        ["duration_s"])


def _rows(tokenized):
    return [(r["audio_codes"], r["composite_ids"], r["num_frames"]) for r in tokenized]


def test_exact_lengths_and_batch_equals_single(dataset, checkpoint):
    model, path = checkpoint
    batched = tokenize_dataset(dataset, path, batch_size=8, load_from_cache_file=False)
    single = tokenize_dataset(dataset, path, batch_size=1, load_from_cache_file=False)
    assert _rows(batched) == _rows(single)
    assert "audio" not in batched.column_names and "speaker" in batched.column_names
    for row, source in zip(batched, dataset):
        audio = decode_audio(source["audio"], 8000)
        frames = len(audio) // 64 + 1
        assert row["num_frames"] == frames == len(row["composite_ids"])
        assert np.array(row["audio_codes"]).shape == (2, frames)
        assert row["duration_s"] == pytest.approx(len(audio) / 8000)
        alone = model.encode(torch.from_numpy(audio)[None, None]).audio_codes[0]
        assert row["audio_codes"] == alone.tolist()
        assert row["composite_ids"] == (alone[0] + 16 * alone[1]).tolist()


def test_num_proc_and_shards_reproduce_the_single_process_result(dataset, checkpoint):
    _, path = checkpoint
    one = tokenize_dataset(dataset, path, batch_size=4, load_from_cache_file=False)
    two = tokenize_dataset(dataset, path, batch_size=4, num_proc=2, load_from_cache_file=False)
    assert _rows(one) == _rows(two)
    shards = [tokenize_dataset(shard_for_this_process(dataset, rank, 3), path, batch_size=4,
                               load_from_cache_file=False) for rank in range(3)]
    assert _rows(concatenate_datasets(shards)) == _rows(one)
    with pytest.raises(ValueError, match="outside world size"):
        shard_for_this_process(dataset, 3, 3)


def test_long_audio_is_chunked_and_matches_whole_encoding(dataset, checkpoint):
    model, path = checkpoint
    whole = tokenize_dataset(dataset.select(range(6)), path, load_from_cache_file=False)
    chunked = tokenize_dataset(dataset.select(range(6)), path, chunk_seconds=0.5, load_from_cache_file=False)
    same = [np.mean(np.array(a["audio_codes"]) == np.array(b["audio_codes"])) for a, b in zip(whole, chunked)]
    assert min(same) >= 0.99, same  # only float near-ties may differ
    assert [r["num_frames"] for r in whole] == [r["num_frames"] for r in chunked]


def test_decoded_audio_column_lm_tokens_and_model_objects(dataset, checkpoint):
    model, path = checkpoint
    decoded = dataset.select(range(4)).cast_column("audio", Audio(decode=True, sampling_rate=None))
    try:
        decoded[0]["audio"]  # needs torchcodec + FFmpeg; the function casts to decode=False anyway
    except Exception:
        pass
    from_decoded = tokenize_dataset(decoded, model, lm_token_offset=1000, add_boundary_tokens=True,
                                    load_from_cache_file=False)
    plain = tokenize_dataset(dataset.select(range(4)), path, load_from_cache_file=False)
    assert _rows(from_decoded) == _rows(plain)
    for row in from_decoded:
        assert row["lm_tokens"][0] == 1000 + 256 and row["lm_tokens"][-1] == 1000 + 257
        assert row["lm_tokens"][1:-1] == [1000 + c for c in row["composite_ids"]]


def test_cache_hit_on_rerun_and_miss_when_the_model_changes(dataset, checkpoint, tmp_path):
    model, path = checkpoint
    first = tokenize_dataset(dataset, path, batch_size=8)
    again = tokenize_dataset(dataset, path, batch_size=8)
    assert first.cache_files and again.cache_files[0]["filename"] == first.cache_files[0]["filename"]
    changed = PQVAEModel.from_pretrained(path)
    with torch.no_grad():
        changed.decoder.proj_out.bias.add_(1.0)  # a different model, same config
    changed.save_pretrained(tmp_path / "changed")
    other = tokenize_dataset(dataset, str(tmp_path / "changed"), batch_size=8)
    assert other.cache_files[0]["filename"] != first.cache_files[0]["filename"]


def test_cli_tokenize_dataset_writes_a_token_dataset(audiofolder, checkpoint, tmp_path):
    from datasets import load_from_disk

    from pqvae_hf.cli import run as main

    _, path = checkpoint
    summary = main(["tokenize-dataset", "--dataset_dir", str(audiofolder), "--split", "test", "--split_column",
                    "split", "--model", path, "--output_dir", str(tmp_path / "tokens"), "--lm_token_offset", "5",
                    "--column_prefix", "pqvae_"])
    saved = load_from_disk(str(tmp_path / "tokens"))
    assert summary["files"] == len(saved) == 6
    assert summary["tokens"] == sum(saved["pqvae_num_frames"]) and summary["audio_seconds_per_second"] > 0
    assert all(t == c + 5 for row in saved for t, c in zip(row["pqvae_lm_tokens"], row["pqvae_composite_ids"]))
    assert saved["duration_s"] == [round(0.15 + (i * 0.37) % 2.35, 3) for i in range(30, 36)]  # the user's column
    assert saved["pqvae_duration_s"] == pytest.approx(saved["duration_s"], abs=2e-3)


def test_push_failure_keeps_the_tokens_saved_locally_and_says_where(audiofolder, checkpoint, tmp_path, monkeypatch,
                                                                   capsys):
    from datasets import load_from_disk

    from pqvae_hf.cli import run as main

    _, path = checkpoint
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the push fails for real: offline mode
    with pytest.raises(SystemExit) as error:
        main(["tokenize-dataset", "--dataset_dir", str(audiofolder), "--split", "test", "--split_column", "split",
              "--model", path, "--column_prefix", "pqvae_", "--push_to_hub", "someone/tokens"])
    message = str(error.value.code)
    assert message.startswith("pqvae tokenize-dataset: pushing to someone/tokens failed (")
    assert "Nothing is lost: the tokens are saved in outputs/tokens/someone__tokens" in message
    assert len(load_from_disk(str(tmp_path / "outputs" / "tokens" / "someone__tokens"))) == 6
    assert "saved to outputs/tokens/someone__tokens first" in capsys.readouterr().err


def test_a_cache_hit_is_reported_as_one_not_as_throughput(dataset, checkpoint):
    _, path = checkpoint
    data = dataset.select(range(5))
    _, first = tokenize_dataset(data, path, batch_size=2, load_from_cache_file=False, return_summary=True)
    _, again = tokenize_dataset(data, path, batch_size=2, return_summary=True)
    assert first["cache_hit"] is False and first["tokens_per_second"] > 0
    assert again["cache_hit"] is True and again["tokens_per_second"] is None
    assert again["audio_seconds_per_second"] is None and again["tokens"] == first["tokens"]


def test_an_existing_output_column_is_refused_or_prefixed(audiofolder, checkpoint):
    _, path = checkpoint
    data = load_audio_dataset(dataset_dir=str(audiofolder), split="test", split_column="split")
    with pytest.raises(ValueError) as error:
        tokenize_dataset(data, path)
    assert str(error.value) == (
        "The dataset already has column(s) ['duration_s'], which tokenization would overwrite: pass"
        " column_prefix='pqvae_' (CLI: --column_prefix pqvae_) to write pqvae_audio_codes, pqvae_composite_ids,"
        " pqvae_num_frames, pqvae_duration_s instead, or drop yours first (dataset.remove_columns(['duration_s'])).")
    tokens = tokenize_dataset(data, path, column_prefix="pqvae_", load_from_cache_file=False)
    assert tokens["duration_s"] == data["duration_s"]  # untouched
    assert {"pqvae_audio_codes", "pqvae_duration_s", "pqvae_num_frames"} <= set(tokens.column_names)


def test_a_folder_of_parquet_files_loads_with_its_splits(audiofolder, checkpoint, tmp_path):
    _, path = checkpoint
    source = load_audio_dataset(dataset_dir=str(audiofolder), split="test", split_column="split")
    embedded = Dataset.from_dict({"audio": [{"bytes": open(cell["path"], "rb").read(), "path": cell["path"]}
                                            for cell in source["audio"]]}).cast_column("audio", Audio())
    (tmp_path / "hub" / "data").mkdir(parents=True)
    embedded.to_parquet(tmp_path / "hub" / "data" / "test-00000-of-00001.parquet")
    loaded = load_audio_dataset(dataset_dir=str(tmp_path / "hub"), split="test")
    assert len(loaded) == 6 and loaded.features["audio"].decode is False
    from_parquet = tokenize_dataset(loaded, path, load_from_cache_file=False)
    from_files = tokenize_dataset(source.remove_columns(["duration_s"]), path, load_from_cache_file=False)
    assert _rows(from_parquet) == _rows(from_files)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="For a dataset on the Hub pass --dataset_name ORG/NAME instead"):
        load_audio_dataset(dataset_dir=str(tmp_path / "empty"), split="test")


def test_the_summary_says_what_decoding_did(dataset, checkpoint, caplog):
    _, path = checkpoint
    with caplog.at_level("INFO", logger="pqvae_hf.dataset_tokenization"):
        _, summary = tokenize_dataset(dataset, path, batch_size=4, num_proc=2, load_from_cache_file=False,
                                      return_summary=True)
    # The generated corpus: every third clip at 11025 Hz, every fourth in stereo (24 train clips).
    assert summary["decoding"] == "resampled 8 clips from 11025 Hz; downmixed 6 multichannel clips to mono"
    assert "Decoding: resampled 8 clips from 11025 Hz" in caplog.text
