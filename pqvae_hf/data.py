"""Audio data for training and tokenizing: dataset loading, decoding without torchcodec, cropping and collation.

Audio is always decoded by our own code (soundfile + soxr) from `Audio(decode=False)` columns, so everything here
works whether or not torchcodec/FFmpeg are installed, and resampling/downmixing are explicit and logged.
"""

from __future__ import annotations

import io
import json
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


SKIP_HINT = "; or skip bad files with --skip_bad_audio (Python: skip_bad_audio=True)"


class BadAudioError(ValueError):
    """An audio file or dataset cell that cannot be used. The message names it (path, or dataset row and split)
    and says what to do; `name` and `problem` are kept for reports of skipped files."""

    def __init__(self, name: str, problem: str, fix: str):
        self.name, self.problem = name, problem
        super().__init__(f"{name} {problem}. {fix}.")


def describe_audio(value, row: int | None = None, split: str | None = None) -> str:
    """How messages name an audio source: its path when known, plus its dataset row and split when known."""
    path = value if isinstance(value, (str, os.PathLike)) else value.get("path") if isinstance(value, dict) else None
    embedded = isinstance(value, dict) and value.get("bytes") is not None
    row_text = None if row is None else f"row {row}" + (f" of split {split!r}" if split else "")
    if path:
        where = ", ".join(part for part in ("embedded bytes" if embedded else None, row_text) if part)
        return os.fspath(path) + (f" ({where})" if where else "")
    return row_text or ("audio bytes" if embedded else "audio array")


def require_audio_file(path, name: str | None = None, fix: str = "") -> None:
    """Raises BadAudioError unless `path` is an existing file (checked before anything slow, e.g. loading a model)."""
    if not os.path.isfile(path):
        raise BadAudioError(name or os.fspath(path), "does not exist", f"Check the path{fix}")


def _wav_data_sizes(source) -> tuple[int, int, int] | None:
    """(declared data bytes, bytes actually present, block align) of a RIFF/WAVE file, else None.

    libsndfile reads a truncated wav without complaint (its frame count is what is present); the header's data
    chunk size says how much there should be.
    """
    try:
        if isinstance(source, io.BytesIO):
            position = source.tell()
            source.seek(0)
            head, total = source.read(1 << 16), len(source.getbuffer())
            source.seek(position)
        else:
            with open(source, "rb") as handle:
                head = handle.read(1 << 16)
            total = os.path.getsize(source)
    except (OSError, TypeError):
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, block_align = 12, 0
    while offset + 8 <= len(head):
        chunk, size = head[offset : offset + 4], int.from_bytes(head[offset + 4 : offset + 8], "little")
        if chunk == b"fmt " and offset + 22 <= len(head):
            block_align = int.from_bytes(head[offset + 20 : offset + 22], "little")
        if chunk == b"data":
            return size, total - offset - 8, block_align
        offset += 8 + size + (size & 1)
    return None


def _open_audio(source, name: str, fix: str) -> sf.SoundFile:
    """The one place audio files are opened: missing, undecodable, empty and truncated files raise BadAudioError."""
    if isinstance(source, (str, os.PathLike)):
        require_audio_file(source, name, fix)
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        handle = sf.SoundFile(source)
    except Exception as error:  # soundfile raises several types; one clear message
        raise BadAudioError(name, f"could not be decoded ({_reason(error)})",
                            "Supported: wav/flac/ogg/opus/mp3 (libsndfile); convert it, e.g. ffmpeg -i FILE out.wav"
                            + fix) from None
    sizes = _wav_data_sizes(source)
    if sizes is not None:
        declared, present, block_align = sizes
        # 0 and 0xFFFFFFFF mean "length unknown" (streamed writers); anything else larger than the file is a cut.
        if block_align and declared not in (0, 0xFFFFFFFF) and declared > present:
            handle.close()
            rate = handle.samplerate
            raise BadAudioError(name, f"is truncated: its header declares {declared // block_align / rate:.2f} s of"
                                f" audio but the file holds {present // block_align / rate:.2f} s",
                                f"Re-copy or re-export the file{fix}")
    if handle.frames == 0:
        handle.close()
        raise BadAudioError(name, "holds no audio samples (header only)", f"Re-export the file or remove it{fix}")
    return handle


def _reason(error: Exception) -> str:
    return str(getattr(error, "error_string", None) or error).strip().rstrip(".").removeprefix("Error : ")


def read_audio_file(source, name: str | None = None, fix: str = "") -> tuple[np.ndarray, int]:
    """Path, bytes or file object -> (float32 array (samples,) or (samples, channels), sampling rate).

    Every problem raises `BadAudioError` naming `name` (default: the path) with a fix: missing file, undecodable or
    corrupt data, no samples, truncated file (fewer samples than the header declares), NaN/Inf samples.
    """
    name = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "audio bytes")
    with _open_audio(source, name, fix) as handle:
        try:
            data = handle.read(dtype="float32", always_2d=False)
        except Exception as error:
            raise BadAudioError(name, f"could not be decoded ({_reason(error)})",
                                f"The file is corrupt or cut off; re-copy or re-export it{fix}") from None
        expected, rate = handle.frames, handle.samplerate
    if data.shape[0] < expected:  # formats whose header knows the length (flac) and lost the rest
        raise BadAudioError(name, f"is truncated: its header declares {expected / rate:.2f} s of audio but only"
                            f" {data.shape[0] / rate:.2f} s could be decoded", f"Re-copy or re-export the file{fix}")
    return _checked(data, name, fix), rate


def _checked(audio: np.ndarray, name: str, fix: str) -> np.ndarray:
    if audio.size == 0:
        raise BadAudioError(name, "holds no audio samples", f"Re-export the file or remove it{fix}")
    if not np.isfinite(audio).all():
        raise BadAudioError(name, "contains NaN or Inf samples", f"Re-export the file{fix}")
    return audio


def to_model_audio(audio: np.ndarray, rate: int, target_rate: int | None, notes: AudioDecodeNotes | None = None,
                   channels_last: bool = True) -> np.ndarray:
    """Downmix to mono (mean of channels) and resample to `target_rate` (soxr, high quality) -> float32 (samples,).
    `target_rate=None` keeps the file's rate (used to check files without paying for resampling)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1 if channels_last else 0)
        if notes is not None:
            notes.downmixed += 1
    elif audio.ndim != 1:
        raise ValueError(f"Expected audio of shape (samples,) or (samples, channels), got {audio.shape}.")
    if target_rate is not None and rate != target_rate:
        audio = soxr.resample(audio, rate, target_rate, quality="HQ").astype(np.float32)
        if notes is not None:
            notes.resampled[rate] += 1
    return audio


def decode_audio(value, target_rate: int | None, notes: AudioDecodeNotes | None = None, row: int | None = None,
                 split: str | None = None) -> np.ndarray:
    """Any audio cell datasets may hand us -> mono float32 at `target_rate`.

    Accepts `Audio(decode=False)` dicts (`{"bytes", "path"}`), decoded dicts (`{"array", "sampling_rate"}`),
    torchcodec `AudioDecoder` objects (datasets >= 4 with decoding on), and plain paths. A bad cell raises
    `BadAudioError` naming its path and, when given, its dataset `row` and `split`.
    """
    name = describe_audio(value, row, split)
    fix = SKIP_HINT if row is not None else ""
    if isinstance(value, (str, os.PathLike)):
        return to_model_audio(*read_audio_file(value, name, fix), target_rate, notes)
    if isinstance(value, dict):
        if value.get("array") is not None:
            if value.get("sampling_rate") is None:
                raise ValueError(f"{name}: an audio dict with 'array' needs 'sampling_rate'.")
            audio = _checked(np.asarray(value["array"]), name, fix)
            return to_model_audio(audio, int(value["sampling_rate"]), target_rate, notes, channels_last=False)
        if value.get("bytes") is not None:
            return to_model_audio(*read_audio_file(value["bytes"], name, fix), target_rate, notes)
        if value.get("path"):
            return to_model_audio(*read_audio_file(value["path"], name, fix), target_rate, notes)
        raise BadAudioError(name, f"has neither 'array', 'bytes' nor 'path' (keys {sorted(value)})",
                            f"Check the dataset's audio column{fix}")
    if hasattr(value, "get_all_samples"):  # torchcodec AudioDecoder
        samples = value.get_all_samples()
        audio = _checked(samples.data.numpy(), name, fix)
        return to_model_audio(audio, int(samples.sample_rate), target_rate, notes, channels_last=False)
    raise TypeError(f"Cannot decode audio of type {type(value).__name__}.")


def resampled_length(num_samples: int, rate: int, target_rate: int) -> int:
    """How many samples soxr makes of `num_samples` at `rate` (one-shot and streamed alike)."""
    return num_samples if rate == target_rate else int(num_samples * target_rate / rate + 0.5)


def audio_num_samples(value, target_rate: int, row: int | None = None, split: str | None = None) -> int:
    """Length at `target_rate` from the file header, without decoding (to sort clips by length)."""
    name, fix = describe_audio(value, row, split), SKIP_HINT if row is not None else ""
    source = value if isinstance(value, (str, os.PathLike)) else None
    if isinstance(value, dict):
        if value.get("array") is not None:
            return resampled_length(np.asarray(value["array"]).shape[-1], int(value["sampling_rate"]), target_rate)
        source = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if source is None:
        return decode_audio(value, target_rate, row=row, split=split).shape[0]
    with _open_audio(source, name, fix) as handle:
        return resampled_length(handle.frames, handle.samplerate, target_rate)


def iter_audio_blocks(value, target_rate: int, block_seconds: float = 10.0, notes: AudioDecodeNotes | None = None,
                      row: int | None = None, split: str | None = None):
    """Mono float32 blocks at `target_rate`, streamed: memory does not grow with the file's length.

    Concatenated, the blocks equal `decode_audio(value, target_rate)` exactly (same reader, checks, downmix; soxr's
    streaming resampler gives the same samples as its one-shot call).
    """
    name, fix = describe_audio(value, row, split), SKIP_HINT if row is not None else ""
    source = value if isinstance(value, (str, os.PathLike)) else None
    if isinstance(value, dict) and value.get("array") is None:
        source = value["bytes"] if value.get("bytes") is not None else value.get("path")
    if source is None:  # already decoded in memory (arrays, torchcodec): nothing to stream
        audio = decode_audio(value, target_rate, notes, row, split)
        step = max(1, int(block_seconds * target_rate))
        yield from (audio[start : start + step] for start in range(0, audio.shape[0], step))
        return
    with _open_audio(source, name, fix) as handle:
        rate, channels, expected = handle.samplerate, handle.channels, handle.frames
        if notes is not None and channels > 1:
            notes.downmixed += 1
        if notes is not None and rate != target_rate:
            notes.resampled[rate] += 1
        stream = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ") if rate != target_rate \
            else None
        read = 0
        try:
            for block in handle.blocks(blocksize=max(1, int(block_seconds * rate)), dtype="float32", always_2d=True):
                read += block.shape[0]
                block = _checked(block, name, fix)
                mono = block.mean(axis=1) if channels > 1 else np.ascontiguousarray(block[:, 0])
                yield stream.resample_chunk(mono) if stream is not None else mono
        except BadAudioError:
            raise
        except Exception as error:
            raise BadAudioError(name, f"could not be decoded ({_reason(error)})",
                                f"The file is corrupt or cut off; re-copy or re-export it{fix}") from None
        if read < expected:
            raise BadAudioError(name, f"is truncated: its header declares {expected / rate:.2f} s of audio but only"
                                f" {read / rate:.2f} s could be decoded", f"Re-copy or re-export the file{fix}")
        if stream is not None:
            yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


class BadAudioReport:
    """Files skipped with `skip_bad_audio`: logged one by one as found, counted, and written as JSON."""

    def __init__(self):
        self.files: list[dict] = []
        self.checked = 0

    def summary(self) -> str:
        splits = Counter(entry["split"] for entry in self.files)
        per_split = ", ".join(f"{n} in split {split!r}" for split, n in splits.items())
        return f"skipped {len(self.files)} bad audio files of {self.checked}" + (f" ({per_split})" if per_split else "")

    def write(self, path: str) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as handle:
            json.dump({"skipped": len(self.files), "checked": self.checked, "files": self.files}, handle, indent=2)
        return path


def drop_bad_audio(dataset, audio_column: str = "audio", split: str | None = None,
                   report: BadAudioReport | None = None, num_proc: int | None = None):
    """The dataset without the rows whose audio cannot be used (missing, undecodable, empty, truncated, NaN/Inf).

    Every file is read once with the same checks as decoding (not resampled), so no bad file is left for training
    or tokenization to trip over; each skipped file is logged with its row and reason and added to `report`.
    Row numbers are positions in `dataset` (the split as loaded).
    """

    def check(cells: list, indices: list[int]) -> dict[str, list]:
        problems = []
        for cell, index in zip(cells, indices):
            try:
                decode_audio(cell, None, row=index, split=split)
                problems.append("")
            except BadAudioError as error:
                path = cell if isinstance(cell, str) else cell.get("path") if isinstance(cell, dict) else None
                problems.append(json.dumps({"split": split, "row": index, "path": path, "problem": error.problem}))
        return {"bad_audio": problems}

    found = dataset.map(check, batched=True, with_indices=True, input_columns=[audio_column],
                        remove_columns=dataset.column_names, num_proc=num_proc, keep_in_memory=True,
                        load_from_cache_file=False, desc=f"Checking audio{f' ({split})' if split else ''}")
    problems = found["bad_audio"]
    bad = [json.loads(problem) for problem in problems if problem]
    for entry in bad:
        name = entry["path"] or f"row {entry['row']}"
        logger.warning(f"Skipping bad audio {name} (row {entry['row']} of split {split!r}): {entry['problem']}")
    if report is not None:
        report.files.extend(bad)
        report.checked += len(dataset)
    if bad:
        logger.warning(f"Skipped {len(bad)} of {len(dataset)} files of split {split!r} with bad audio")
        dataset = dataset.select([i for i, problem in enumerate(problems) if not problem])
    return dataset


# --------------------------------------------------------------------------------------------------------------------
# Loading datasets
# --------------------------------------------------------------------------------------------------------------------


def _local_audio_dataset(directory: str):
    """A local folder -> Dataset (or DatasetDict) with an audio column.

    An audiofolder layout: `metadata.csv` / `metadata.jsonl` (`file_name` column, relative paths) when present, else
    every audio file below it, as an `audio` column of paths (built without datasets' audiofolder builder, so it
    needs no torchcodec). A folder of parquet files (e.g. a downloaded Hub dataset) loads with its splits.
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
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(directory) for f in names)
    paths = [f for f in files if f.lower().endswith(AUDIO_EXTENSIONS)]
    if paths:
        return Dataset.from_dict({"audio": paths}).cast_column("audio", Audio(decode=False))
    if any(f.endswith(".parquet") for f in files):
        # A Hub-style folder of parquet files (audio embedded as bytes); splits come from the file names
        # (train-*.parquet, data/test-*.parquet, ...), everything else is "train".
        return load_dataset("parquet", data_dir=directory)
    raise ValueError(f"No metadata.csv/metadata.jsonl, audio files ({', '.join(AUDIO_EXTENSIONS)}) or parquet files"
                     f" in {directory}. For a dataset on the Hub pass --dataset_name ORG/NAME instead.")


def load_audio_dataset(dataset_name: str | None = None, dataset_dir: str | None = None,
                       dataset_config_name: str | None = None, split: str = "train", split_column: str | None = None,
                       audio_column: str = "audio", max_samples: int | None = None, cache_dir: str | None = None,
                       streaming: bool = False):
    """Load one split of a Hub dataset (`dataset_name`) or a local folder (`dataset_dir`: audiofolder layout, a
    `save_to_disk` folder or a folder of parquet files), with its audio column cast to `Audio(decode=False)`.

    `split_column`: select rows whose `split_column` equals `split` (e.g. the corpus's `split` column) instead of a
    named split.
    `streaming`: return a `datasets.IterableDataset` that reads rows as they are iterated. A Hub dataset is then
    streamed (`load_dataset(..., streaming=True)`: nothing is downloaded up front, only the rows read); a local
    folder is loaded as usual and iterated in shards. `max_samples` takes the first N rows of the stream.
    """
    if (dataset_name is None) == (dataset_dir is None):
        raise ValueError("Give exactly one of dataset_name (Hub id) and dataset_dir (local folder).")
    if streaming and dataset_name is not None:
        return _streamed_audio_dataset(dataset_name, dataset_config_name, split, split_column, audio_column,
                                       max_samples, cache_dir)
    from datasets import Audio, DatasetDict, load_dataset, load_from_disk

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
    if streaming:  # a local folder: already on disk, iterated in shards (so a shuffle buffer mixes shards)
        data = data.to_iterable_dataset(num_shards=max(1, min(len(data), 64)))
    return data


def _streamed_audio_dataset(dataset_name: str, dataset_config_name: str | None, split: str, split_column: str | None,
                            audio_column: str, max_samples: int | None, cache_dir: str | None):
    """`load_audio_dataset(..., streaming=True)` for a Hub dataset: the same checks, made lazily where they must be
    (a stream has no length; its columns may only be known from its first row)."""
    from datasets import Audio, IterableDatasetDict, load_dataset

    data = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, streaming=True)
    if isinstance(data, IterableDatasetDict):
        wanted = "train" if split_column else split
        if wanted not in data:
            raise ValueError(f"Split {wanted!r} not found; available: {list(data)}.")
        data = data[wanted]
    first = next(iter(data.take(1)), None)
    if first is None:
        raise ValueError(f"Split {'train' if split_column else split!r} of {dataset_name} is empty.")
    columns = data.column_names or list(first)
    if split_column:
        if split_column not in columns:
            raise ValueError(f"split_column {split_column!r} not in columns {columns}.")
        data = data.filter(lambda value: value == split, input_columns=split_column)
        if next(iter(data.take(1)), None) is None:
            raise ValueError(f"No rows with {split_column} == {split!r}.")
    if audio_column not in columns:
        raise ValueError(f"Audio column {audio_column!r} not found; columns are {columns}.")
    if data.features is not None and isinstance(data.features.get(audio_column), Audio):
        data = data.cast_column(audio_column, Audio(decode=False))
    if max_samples is not None:
        data = data.take(max_samples)
    return data


def materialize(stream, description: str = "Reading"):
    """A streamed split (`datasets.IterableDataset`) read into a `datasets.Dataset`, for evaluation, which sorts clips
    by length and so needs them all; memory stays bounded (rows go to an Arrow file in a fresh temporary folder)."""
    import tempfile

    from datasets import Dataset
    from tqdm.auto import tqdm

    def rows():
        yield from tqdm(stream, desc=description, unit=" rows")

    # A fresh cache folder: a generator's fingerprint cannot tell two streams' contents apart.
    return Dataset.from_generator(rows, features=stream.features, cache_dir=tempfile.mkdtemp(prefix="pqvae-stream-"))


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
    split: str | None = None
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
            index = row.get(self.index_column)
            audio = decode_audio(row[self.audio_column], self.sampling_rate, self.notes, row=index, split=self.split)
            clips.append(self._crop(audio, int(position if index is None else index)))
        input_values, padding_mask = pad_batch(clips)
        return {"input_values": input_values, "padding_mask": padding_mask}


def add_index_column(dataset, name: str = "__index__"):
    """Adds each row's position, which makes random crops reproducible (see AudioCollator). On a stream
    (`datasets.IterableDataset`) the position is counted as rows are read (before any shuffle buffer)."""
    if name in (dataset.column_names or ()):
        return dataset
    if not hasattr(dataset, "__len__"):
        return dataset.map(lambda row, index: {name: index}, with_indices=True)
    return dataset.add_column(name, list(range(len(dataset))))
