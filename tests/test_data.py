import numpy as np
import pytest
import soundfile as sf
import torch

from pqvae_hf.data import AudioCollator, AudioDecodeNotes, add_index_column, decode_audio, load_audio_dataset


def test_load_audiofolder_by_split_column_without_torchcodec_decoding(audiofolder):
    train = load_audio_dataset(dataset_dir=str(audiofolder), split="train", split_column="split")
    test = load_audio_dataset(dataset_dir=str(audiofolder), split="test", split_column="split")
    assert len(train) == 24 and len(test) == 6
    cell = train[0]["audio"]
    assert set(cell) == {"bytes", "path"} and cell["path"].endswith("clip_000.wav")
    with pytest.raises(ValueError, match="No rows with split == 'dev'"):
        load_audio_dataset(dataset_dir=str(audiofolder), split="dev", split_column="split")
    with pytest.raises(ValueError, match="Audio column 'speech' not found"):
        load_audio_dataset(dataset_dir=str(audiofolder), split="train", split_column="split", audio_column="speech")
    with pytest.raises(ValueError, match="exactly one"):
        load_audio_dataset(split="train")


def test_save_to_disk_folder_loads_too(audiofolder, tmp_path):
    train = load_audio_dataset(dataset_dir=str(audiofolder), split="train", split_column="split", max_samples=5)
    train.save_to_disk(tmp_path / "saved")
    again = load_audio_dataset(dataset_dir=str(tmp_path / "saved"), split="train")
    assert len(again) == 5
    cell = again[0]["audio"]
    assert cell["bytes"] is not None  # save_to_disk embeds the audio: the folder is self-contained
    assert np.array_equal(decode_audio(cell, 8000), decode_audio(train[0]["audio"], 8000))


def test_decode_resamples_and_downmixes_with_notes(tmp_path):
    t = np.arange(22050) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    sf.write(tmp_path / "a.wav", stereo, 22050)
    notes = AudioDecodeNotes()
    audio = decode_audio({"bytes": None, "path": str(tmp_path / "a.wav")}, 16000, notes)
    assert audio.dtype == np.float32 and abs(audio.shape[0] - 16000) <= 1
    assert abs(float(np.abs(audio[1000:-1000]).max()) - 0.5) < 0.01  # amplitude survives the resampler
    assert notes.resampled[22050] == 1 and notes.downmixed == 1
    assert "22050 Hz" in notes.summary()
    same = decode_audio({"bytes": (tmp_path / "a.wav").read_bytes(), "path": None}, 16000)
    assert np.array_equal(same, audio)
    from_array = decode_audio({"array": stereo.T, "sampling_rate": 22050}, 16000)  # datasets: (channels, samples)
    assert np.allclose(from_array, audio, atol=1e-4)  # the file went through 16-bit PCM
    with pytest.raises(ValueError, match="audio bytes could not be decoded"):
        decode_audio({"bytes": b"not audio", "path": None}, 16000)


def test_collator_crops_reproducibly_pads_short_clips_and_drops_nothing(audiofolder):
    data = add_index_column(load_audio_dataset(dataset_dir=str(audiofolder), split="train", split_column="split"))
    rows = [data[i] for i in range(8)]
    collator = AudioCollator(8000, crop_seconds=1.0, seed=3)
    batch = collator(rows)
    assert batch["input_values"].shape == (8, 1, 8000)
    lengths = batch["padding_mask"].sum(-1)
    assert int(lengths.max()) == 8000 and int(lengths.min()) < 8000  # short clips kept whole, padded
    assert collator.counts["padded_short_clips"] + collator.counts["cropped_long_clips"] == 8
    again = AudioCollator(8000, crop_seconds=1.0, seed=3)(rows)
    assert torch.equal(again["input_values"], batch["input_values"])  # same seed, epoch, rows -> same crops
    other_epoch = AudioCollator(8000, crop_seconds=1.0, seed=3, epoch=1)(rows)
    assert not torch.equal(other_epoch["input_values"], batch["input_values"])
    whole = AudioCollator(8000, crop_seconds=None)(rows)
    durations = [round(float(d) * 8000) for d in data.select(range(8))["duration_s"]]
    assert [int(x) for x in whole["padding_mask"].sum(-1)] == pytest.approx(durations, abs=2)
