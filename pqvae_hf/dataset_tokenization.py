"""Tokenize whole corpora with `datasets.Dataset.map`: exact per-example lengths, long audio, many processes/nodes.

    from pqvae_hf import tokenize_dataset
    tokens = tokenize_dataset(dataset, "checkpoints/pqvae-speech-small", batch_size=16, num_proc=2)

Output columns: `audio_codes` (M lists of ints), `composite_ids`, `num_frames`, `duration_s` (and `lm_tokens` with
`lm_token_offset`). Each example gets exactly `len(audio) // hop_length + 1` tokens, computed from its own samples:
padding inside a batch never leaks into another example's tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time

import numpy as np
import torch

from . import PQVAEModel
from .data import AudioDecodeNotes, BadAudioReport, decode_audio, drop_bad_audio, materialize, pad_batch
from .modeling.quantization_pqvae import codes_to_composite
from .inference import encode_long

logger = logging.getLogger(__name__)

# One model per (process, path, device): `num_proc` workers each load it once, not once per batch.
_MODEL_CACHE: dict[tuple[str, str], PQVAEModel] = {}
# datasets forks its workers. A forked child of a process whose torch already ran its thread pool deadlocks on its
# first torch op (seen here with num_proc=2) unless it sets its thread count first, once per process.
_THREADS_SET_IN_PID: int | None = None
# Per-row decoding notes, summed into the summary and then removed from the output.
RESAMPLED_COLUMN, DOWNMIXED_COLUMN = "__pqvae_resampled_from__", "__pqvae_downmixed__"


def model_fingerprint(path: str) -> str:
    """Hash of a checkpoint folder's config and weights: datasets' cache is invalidated when the model changes."""
    digest = hashlib.sha256()
    names = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".json")))
    if not any(name.endswith(".safetensors") for name in names):
        raise ValueError(f"{path} holds no .safetensors weights.")
    for name in names:
        digest.update(name.encode())
        with open(os.path.join(path, name), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _materialize(model_or_path) -> str:
    """A model object is saved once to a cache folder named by its weights, so worker processes can load it."""
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            path = snapshot_download(path)  # Hub id: the real download path (cached, offline-aware)
        return path
    if not isinstance(model_or_path, PQVAEModel):
        raise TypeError(f"Expected a PQVAEModel or a path, got {type(model_or_path).__name__}.")
    state = model_or_path.state_dict()
    digest = hashlib.sha256(json.dumps(model_or_path.config.to_dict(), sort_keys=True, default=str).encode())
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    cache = os.path.join(os.environ.get("PQVAE_CACHE", os.path.join(tempfile.gettempdir(), "pqvae-hf-cache")),
                         "models", digest.hexdigest()[:16])
    if not os.path.isfile(os.path.join(cache, "model.safetensors")):
        model_or_path.save_pretrained(cache)
    return cache


class DatasetTokenizer:
    """The batched map function. Picklable and hashable by (model fingerprint, settings), never by live objects."""

    def __init__(self, model_path: str, audio_column: str = "audio", device: str = "cpu",
                 chunk_seconds: float = 60.0, lm_token_offset: int | None = None,
                 add_boundary_tokens: bool = False, torch_threads: int | None = None, split: str | None = None,
                 column_prefix: str = ""):
        self.model_path = model_path
        self.split = split  # only names bad files in error messages
        self.column_prefix = column_prefix
        self.fingerprint = model_fingerprint(model_path)
        self.audio_column = audio_column
        self.device = device
        self.chunk_seconds = chunk_seconds
        self.lm_token_offset = lm_token_offset
        self.add_boundary_tokens = add_boundary_tokens
        self.torch_threads = torch_threads

    def _model(self, rank: int | None) -> PQVAEModel:
        global _THREADS_SET_IN_PID
        if self.torch_threads and _THREADS_SET_IN_PID != os.getpid():
            torch.set_num_threads(self.torch_threads)
            _THREADS_SET_IN_PID = os.getpid()
        device = self.device
        if device == "cuda" and rank is not None and torch.cuda.device_count() > 1:
            device = f"cuda:{rank % torch.cuda.device_count()}"
        key = (self.model_path, device)
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = PQVAEModel.from_pretrained(self.model_path).to(device).eval()
        return _MODEL_CACHE[key]

    @torch.no_grad()
    def __call__(self, batch: dict[str, list], indices: list[int], rank: int | None = None) -> dict[str, list]:
        model = self._model(rank)
        config = model.config
        rate, hop = config.sampling_rate, config.hop_length
        audios, resampled_from, downmixed = [], [], []
        for value, index in zip(batch[self.audio_column], indices):
            notes = AudioDecodeNotes()  # per row, so the summary can count over workers and cache hits
            audios.append(decode_audio(value, rate, notes, row=index, split=self.split))
            resampled_from.append(next(iter(notes.resampled), 0))
            downmixed.append(notes.downmixed)
        codes: list[torch.Tensor | None] = [None] * len(audios)
        chunk_samples = int(self.chunk_seconds * rate)
        short = [i for i, audio in enumerate(audios) if audio.shape[0] <= chunk_samples]
        for i in set(range(len(audios))) - set(short):
            codes[i] = encode_long(model, audios[i], chunk_seconds=self.chunk_seconds)
        if short:
            values, mask = pad_batch([audios[i] for i in short])
            out = model.encode(values.to(model.device), mask.to(model.device))
            batch_codes = out.audio_codes.cpu()
            for row, i in enumerate(short):
                codes[i] = batch_codes[row, :, : audios[i].shape[0] // hop + 1]
        result = {"audio_codes": [], "composite_ids": [], "num_frames": [], "duration_s": []}
        if self.lm_token_offset is not None:
            result["lm_tokens"] = []
        result = {**{self.column_prefix + name: values for name, values in result.items()},
                  RESAMPLED_COLUMN: resampled_from, DOWNMIXED_COLUMN: downmixed}
        p = self.column_prefix
        composite_size = config.composite_codebook_size
        for audio, example_codes in zip(audios, codes):
            array = example_codes.numpy().astype(np.int64)
            composite = codes_to_composite(example_codes, config.codebook_size).numpy()
            result[p + "audio_codes"].append(array.tolist())
            result[p + "composite_ids"].append(composite.tolist())
            result[p + "num_frames"].append(int(array.shape[1]))
            result[p + "duration_s"].append(audio.shape[0] / rate)
            if self.lm_token_offset is not None:
                tokens = (composite + self.lm_token_offset).tolist()
                if self.add_boundary_tokens:
                    tokens = [self.lm_token_offset + composite_size, *tokens, self.lm_token_offset + composite_size + 1]
                result[p + "lm_tokens"].append(tokens)
        return result


def output_columns(lm_token_offset: int | None = None, column_prefix: str = "") -> list[str]:
    names = ["audio_codes", "composite_ids", "num_frames", "duration_s"]
    return [column_prefix + name for name in names + (["lm_tokens"] if lm_token_offset is not None else [])]


def tokenize_dataset(dataset, model_or_path, audio_column: str = "audio", batch_size: int = 16,
                     num_proc: int | None = None, device: str = "cpu", chunk_seconds: float = 60.0,
                     lm_token_offset: int | None = None, add_boundary_tokens: bool = False,
                     remove_audio: bool = True, load_from_cache_file: bool | None = None, log_summary: bool = True,
                     split: str | None = None, column_prefix: str = "", skip_bad_audio: bool = False,
                     bad_audio_report: str | None = None, return_summary: bool = False):
    """Tokenize a `datasets.Dataset` with `map(batched=True)`; see the module docstring for the output columns.

    `num_proc` > 1 runs that many worker processes, each loading the model once (1 torch thread each on CPU).
    Re-running with the same data, model and settings is a datasets cache hit (reported as such); a different model
    is a miss. `column_prefix` names the output columns (`pqvae_` -> `pqvae_audio_codes`, ...); a dataset that
    already has a column of an output's name is refused rather than overwritten. A bad audio file stops the run with
    its path, row and `split`; `skip_bad_audio=True` checks every file first and drops the bad ones instead (each
    logged, listed in `bad_audio_report` when given). `return_summary=True` returns `(dataset, summary dict)`.

    A stream (`datasets.IterableDataset`, e.g. `load_dataset(..., streaming=True)`) is tokenized lazily: the result is
    a stream whose rows are encoded as they are read, in one process (`num_proc` and `skip_bad_audio`, which need the
    whole dataset, are refused). With `return_summary=True` the stream is read to its end instead and its tokens (not
    its audio) are written to a local Arrow file: the result is then a `datasets.Dataset` and the summary has totals.
    """
    from datasets import Audio, IterableDataset

    streamed = isinstance(dataset, IterableDataset)
    if streamed:
        refused = [name for name, given in (("num_proc > 1", (num_proc or 1) > 1), ("skip_bad_audio", skip_bad_audio))
                   if given]
        if refused:
            raise ValueError(f"{' and '.join(refused)} need(s) the whole dataset up front, which a stream"
                             f" (IterableDataset) is not: drop them, or load the dataset without streaming=True.")
    columns = dataset.column_names
    if columns is None:  # a stream whose features are unknown: its first row names them
        columns = list(next(iter(dataset.take(1)), {}))
    if audio_column not in columns:
        raise ValueError(f"Audio column {audio_column!r} not found; columns are {columns}.")
    outputs = output_columns(lm_token_offset, column_prefix)
    kept = set(columns) - ({audio_column} if remove_audio else set())
    clash = [name for name in outputs if name in kept]
    if clash:
        instead = ("choose another column_prefix" if column_prefix else
                   f"pass column_prefix='pqvae_' (CLI: --column_prefix pqvae_) to write"
                   f" {', '.join(output_columns(lm_token_offset, 'pqvae_'))} instead")
        raise ValueError(f"The dataset already has column(s) {clash}, which tokenization would overwrite: {instead},"
                         f" or drop yours first (dataset.remove_columns({clash})).")
    features = dataset.features or {}
    if isinstance(features.get(audio_column), Audio) and features[audio_column].decode:
        # Decoding ourselves (soundfile) avoids needing torchcodec/FFmpeg and resamples explicitly.
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    report = None
    if skip_bad_audio:
        report = BadAudioReport()
        dataset = drop_bad_audio(dataset, audio_column, split, report, num_proc)
        if bad_audio_report:
            report.write(bad_audio_report)
    threads = 1 if (num_proc or 1) > 1 and device == "cpu" else None
    function = DatasetTokenizer(_materialize(model_or_path), audio_column, device, chunk_seconds, lm_token_offset,
                                add_boundary_tokens, torch_threads=threads, split=split, column_prefix=column_prefix)
    start = time.time()
    if streamed:
        tokenized = dataset.map(function, batched=True, batch_size=batch_size, with_indices=True,
                                remove_columns=[audio_column] if remove_audio else None)
        if not return_summary:
            return tokenized.remove_columns([RESAMPLED_COLUMN, DOWNMIXED_COLUMN])
        tokenized = materialize(tokenized, "Tokenizing a stream")
        cache_hit = False
    else:
        tokenized = dataset.map(
            function, batched=True, batch_size=batch_size, num_proc=num_proc, with_indices=True, with_rank=True,
            remove_columns=[audio_column] if remove_audio else None, load_from_cache_file=load_from_cache_file,
            desc="Tokenizing audio",
        )
        # A cache hit encodes nothing: its cache files are older than this call.
        cache_hit = bool(tokenized.cache_files) and all(
            os.path.getmtime(f["filename"]) < start for f in tokenized.cache_files if os.path.exists(f["filename"]))
    wall = time.time() - start
    notes = AudioDecodeNotes()
    notes.resampled.update(rate for rate in tokenized[RESAMPLED_COLUMN] if rate)
    notes.downmixed = int(np.sum(tokenized[DOWNMIXED_COLUMN])) if len(tokenized) else 0
    tokenized = tokenized.remove_columns([RESAMPLED_COLUMN, DOWNMIXED_COLUMN])
    audio_seconds = float(np.sum(tokenized[column_prefix + "duration_s"])) if len(tokenized) else 0.0
    tokens = int(np.sum(tokenized[column_prefix + "num_frames"])) if len(tokenized) else 0
    summary = {"files": len(tokenized), "audio_hours": round(audio_seconds / 3600, 4), "tokens": tokens,
               "wall_seconds": round(wall, 2), "cache_hit": cache_hit,
               # Throughput is only measured when something was encoded.
               "tokens_per_second": None if cache_hit else round(tokens / max(wall, 1e-9), 1),
               "audio_seconds_per_second": None if cache_hit else round(audio_seconds / max(wall, 1e-9), 2),
               "decoding": notes.summary()}
    if report is not None:
        summary["bad_audio"] = report.summary() + (f"; list in {bad_audio_report}" if bad_audio_report else "")
        summary["bad_audio_skipped"] = len(report.files)
    if log_summary:
        done = (f"loaded from the datasets cache in {wall:.1f} s (cache hit: nothing was encoded; pass"
                f" load_from_cache_file=False to re-run)" if cache_hit else
                f"in {wall:.1f} s ({summary['tokens_per_second']:,.0f} tokens/s,"
                f" {summary['audio_seconds_per_second']:,.1f} audio s/s)")
        logger.info(f"Tokenized {len(tokenized):,} files, {audio_seconds / 3600:.3f} h of audio -> {tokens:,} tokens"
                    f" {done}. Decoding: {summary['decoding']}."
                    + (f" Bad audio: {summary['bad_audio']}." if report is not None else ""))
    return (tokenized, summary) if return_summary else tokenized


def shard_for_this_process(dataset, rank: int | None = None, world_size: int | None = None):
    """The contiguous shard of `dataset` for this rank (defaults from torchrun/accelerate's RANK/WORLD_SIZE).
    Concatenating the shards' outputs in rank order reproduces the single-process result exactly. A stream
    (`datasets.IterableDataset`) is split by `datasets.distributed.split_dataset_by_node` instead: whole source files
    per rank where they divide evenly, else every `world_size`-th row."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}.")
    if not hasattr(dataset, "__len__"):
        from datasets.distributed import split_dataset_by_node

        return split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    return dataset.shard(num_shards=world_size, index=rank, contiguous=True)
