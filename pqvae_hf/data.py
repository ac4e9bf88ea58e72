"""Audio data for training and tokenizing: dataset loading, decoding without torchcodec, cropping and collation.

Audio is always decoded by our own code (soundfile + soxr) from `Audio(decode=False)` columns, so everything here
works whether or not torchcodec/FFmpeg are installed, and resampling/downmixing are explicit and logged.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import soxr
import torch

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au")


# --------------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------------


class AudioDecodeNotes:
    """Counts what decoding had to do (resampling per source rate, downmixing), for one summary log line."""

    def __init__(self):
        self.resampled = Counter()
        self.downmixed = 0

    def summary(self) -> str:
        parts = [f"resampled {n} clips from {rate} Hz" for rate, n in sorted(self.resampled.items())]
        if self.downmixed:
            parts.append(f"downmixed {self.downmixed} multichannel clips to mono")
        return "; ".join(parts) if parts else "no resampling or downmixing needed"


def read_audio_file(source) -> tuple[np.ndarray, int]:
    """Path, bytes or file object -> (float32 array (samples,) or (samples, channels), sampling rate)."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=False)
    except Exception as error:  # soundfile raises several types; name the file in one clear message
        name = source if isinstance(source, (str, os.PathLike)) else "<bytes>"
        raise ValueError(f"Could not decode audio {name}: {error}. Supported: wav/flac/ogg/opus/mp3 (libsndfile).")
    return data, rate


def to_model_audio(audio: np.ndarray, rate: int, target_rate: int, notes: AudioDecodeNotes | None = None,
                   channels_last: bool = True) -> np.ndarray:
    """Downmix to mono (mean of channels) and resample to `target_rate` (soxr, high quality) -> float32 (samples,)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1 if channels_last else 0)
        if notes is not None:
            notes.downmixed += 1
    elif audio.ndim != 1:
        raise ValueError(f"Expected audio of shape (samples,) or (samples, channels), got {audio.shape}.")
    if rate != target_rate:
        audio = soxr.resample(audio, rate, target_rate, quality="HQ").astype(np.float32)
        if notes is not None:
            notes.resampled[rate] += 1
    return audio


def decode_audio(value, target_rate: int, notes: AudioDecodeNotes | None = None) -> np.ndarray:
    """Any audio cell datasets may hand us -> mono float32 at `target_rate`.

    Accepts `Audio(decode=False)` dicts (`{"bytes", "path"}`), decoded dicts (`{"array", "sampling_rate"}`),
    torchcodec `AudioDecoder` objects (datasets >= 4 with decoding on), and plain paths.
    """
    if isinstance(value, (str, os.PathLike)):
        return to_model_audio(*read_audio_file(value), target_rate, notes)
    if isinstance(value, dict):
        if value.get("array") is not None:
            if value.get("sampling_rate") is None:
                raise ValueError("An audio dict with 'array' needs 'sampling_rate'.")
            return to_model_audio(np.asarray(value["array"]), int(value["sampling_rate"]), target_rate, notes,
                                  channels_last=False)
        if value.get("bytes") is not None:
            return to_model_audio(*read_audio_file(value["bytes"]), target_rate, notes)
        if value.get("path"):
            return to_model_audio(*read_audio_file(value["path"]), target_rate, notes)
        raise ValueError(f"Audio cell has neither 'array', 'bytes' nor 'path': keys {sorted(value)}.")
    if hasattr(value, "get_all_samples"):  # torchcodec AudioDecoder
        samples = value.get_all_samples()
        return to_model_audio(samples.data.numpy(), int(samples.sample_rate), target_rate, notes,
                              channels_last=False)
    raise TypeError(f"Cannot decode audio of type {type(value).__name__}.")


# --------------------------------------------------------------------------------------------------------------------
# Loading datasets
# --------------------------------------------------------------------------------------------------------------------


def _local_audio_dataset(directory: str):
    """An audiofolder-style directory -> Dataset with an `audio` column of paths (Audio(decode=False)).

    Reads `metadata.csv` / `metadata.jsonl` (`file_name` column, relative paths) when present, else lists audio
    files. Built without datasets' audiofolder builder so it needs no torchcodec.
    """
    from datasets import Audio, Dataset, load_dataset

    for name, builder in (("metadata.csv", "csv"), ("metadata.jsonl", "json")):
        metadata = os.path.join(directory, name)
        if os.path.isfile(metadata):
            table = load_dataset(builder, data_files=metadata, split="train")
            if "file_name" not in table.column_names:
                raise ValueError(f"{metadata} has no 'file_name' column (audiofolder layout).")
            table = table.map(lambda f: {"audio": os.path.join(directory, f)}, input_columns="file_name",
                              desc="Resolving audio paths")
            return table.cast_column("audio", Audio(decode=False))
    paths = sorted(
        os.path.join(root, f) for root, _, files in os.walk(directory) for f in files
        if f.lower().endswith(AUDIO_EXTENSIONS)
    )
    if not paths:
        raise ValueError(f"No metadata.csv/metadata.jsonl and no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {directory}.")
    return Dataset.from_dict({"audio": paths}).cast_column("audio", Audio(decode=False))


def load_audio_dataset(dataset_name: str | None = None, dataset_dir: str | None = None,
                       dataset_config_name: str | None = None, split: str = "train", split_column: str | None = None,
                       audio_column: str = "audio", max_samples: int | None = None, cache_dir: str | None = None):
    """Load one split of a Hub dataset (`dataset_name`) or a local folder (`dataset_dir`: audiofolder layout or a
    `save_to_disk` folder), with its audio column cast to `Audio(decode=False)`.

    `split_column`: select rows whose `split_column` equals `split` (e.g. the corpus's `split` column) instead of a
    named split.
    """
    from datasets import Audio, DatasetDict, load_dataset, load_from_disk

    if (dataset_name is None) == (dataset_dir is None):
        raise ValueError("Give exactly one of dataset_name (Hub id) and dataset_dir (local folder).")
    if dataset_dir is not None:
        if not os.path.isdir(dataset_dir):
            raise ValueError(f"dataset_dir {dataset_dir} is not a directory.")
        if os.path.isfile(os.path.join(dataset_dir, "dataset_dict.json")) or os.path.isfile(
            os.path.join(dataset_dir, "state.json")
        ):
            data = load_from_disk(dataset_dir)
        else:
            data = _local_audio_dataset(dataset_dir)
    else:
        data = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)

    if isinstance(data, DatasetDict):
        wanted = "train" if split_column else split
        if wanted not in data:
            raise ValueError(f"Split {wanted!r} not found; available: {list(data)}.")
        data = data[wanted]
    if split_column:
        if split_column not in data.column_names:
            raise ValueError(f"split_column {split_column!r} not in columns {data.column_names}.")
        data = data.filter(lambda value: value == split, input_columns=split_column, desc=f"Selecting {split}")
        if len(data) == 0:
            raise ValueError(f"No rows with {split_column} == {split!r}.")
    if audio_column not in data.column_names:
        raise ValueError(f"Audio column {audio_column!r} not found; columns are {data.column_names}.")
    if isinstance(data.features[audio_column], Audio):
        data = data.cast_column(audio_column, Audio(decode=False))
    if max_samples is not None and max_samples < len(data):
        data = data.select(range(max_samples))
    return data


# --------------------------------------------------------------------------------------------------------------------
# Collation
# --------------------------------------------------------------------------------------------------------------------


def pad_batch(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono clips -> right-padded `input_values` (B, 1, T) float32 and `padding_mask` (B, T) long."""
    length = max(clip.shape[0] for clip in clips)
    input_values = torch.zeros(len(clips), 1, length)
    padding_mask = torch.zeros(len(clips), length, dtype=torch.long)
    for row, clip in enumerate(clips):
        input_values[row, 0, : clip.shape[0]] = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32))
        padding_mask[row, : clip.shape[0]] = 1
    return input_values, padding_mask


@dataclass
class AudioCollator:
    """Decodes a list of dataset rows into a padded batch `{"input_values": (B, 1, T), "padding_mask": (B, T)}`.

    - `crop_seconds`: clips longer than this are cropped to it; shorter clips are kept whole and zero-padded (the
      padding mask keeps padding out of losses and statistics). Nothing is concatenated, nothing is dropped.
    - Crops are random for training and reproducible: the offset depends only on (seed, epoch, row index), not on
      global RNG state, so resuming from a checkpoint sees the same crops as an uninterrupted run.
    - `crop_seconds=None` (evaluation) keeps whole clips.
    """

    sampling_rate: int
    audio_column: str = "audio"
    crop_seconds: float | None = 2.0
    random_crop: bool = True
    seed: int = 0
    epoch: int = 0
    index_column: str = "__index__"
    notes: AudioDecodeNotes = field(default_factory=AudioDecodeNotes)
    counts: Counter = field(default_factory=Counter)

    def _crop(self, audio: np.ndarray, row_index: int) -> np.ndarray:
        if self.crop_seconds is None:
            return audio
        length = int(round(self.crop_seconds * self.sampling_rate))
        if audio.shape[0] <= length:
            self.counts["padded_short_clips"] += 1
            return audio
        self.counts["cropped_long_clips"] += 1
        if not self.random_crop:
            return audio[:length]
        rng = np.random.default_rng([self.seed, self.epoch, row_index])
        start = int(rng.integers(0, audio.shape[0] - length + 1))
        return audio[start : start + length]

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        clips = []
        for position, row in enumerate(rows):
            audio = decode_audio(row[self.audio_column], self.sampling_rate, self.notes)
            if audio.shape[0] == 0:
                raise ValueError(f"Empty audio in row {row.get(self.index_column, position)}.")
            clips.append(self._crop(audio, int(row.get(self.index_column, position))))
        input_values, padding_mask = pad_batch(clips)
        return {"input_values": input_values, "padding_mask": padding_mask}


def add_index_column(dataset, name: str = "__index__"):
    """Adds each row's position, which makes random crops reproducible (see AudioCollator)."""
    if name in dataset.column_names:
        return dataset
    return dataset.add_column(name, list(range(len(dataset))))
