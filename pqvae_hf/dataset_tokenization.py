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
from .data import AudioDecodeNotes, decode_audio, pad_batch
from .modeling.quantization_pqvae import codes_to_composite
from .inference import encode_long

logger = logging.getLogger(__name__)

# One model per (process, path, device): `num_proc` workers each load it once, not once per batch.
_MODEL_CACHE: dict[tuple[str, str], PQVAEModel] = {}
# datasets forks its workers. A forked child of a process whose torch already ran its thread pool deadlocks on its
# first torch op (seen here with num_proc=2) unless it sets its thread count first, once per process.
_THREADS_SET_IN_PID: int | None = None


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
                 add_boundary_tokens: bool = False, torch_threads: int | None = None):
        self.model_path = model_path
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
    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, list]:
        model = self._model(rank)
        config = model.config
        rate, hop = config.sampling_rate, config.hop_length
        notes = AudioDecodeNotes()
        audios = [decode_audio(value, rate, notes) for value in batch[self.audio_column]]
        for index, audio in enumerate(audios):
            if audio.shape[0] == 0:
                raise ValueError(f"Example {index} of this batch has no samples.")
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
        composite_size = config.composite_codebook_size
        for audio, example_codes in zip(audios, codes):
            array = example_codes.numpy().astype(np.int64)
            composite = codes_to_composite(example_codes, config.codebook_size).numpy()
            result["audio_codes"].append(array.tolist())
            result["composite_ids"].append(composite.tolist())
            result["num_frames"].append(int(array.shape[1]))
            result["duration_s"].append(audio.shape[0] / rate)
            if self.lm_token_offset is not None:
                tokens = (composite + self.lm_token_offset).tolist()
                if self.add_boundary_tokens:
                    tokens = [self.lm_token_offset + composite_size, *tokens, self.lm_token_offset + composite_size + 1]
                result["lm_tokens"].append(tokens)
        return result


def tokenize_dataset(dataset, model_or_path, audio_column: str = "audio", batch_size: int = 16,
                     num_proc: int | None = None, device: str = "cpu", chunk_seconds: float = 60.0,
                     lm_token_offset: int | None = None, add_boundary_tokens: bool = False,
                     remove_audio: bool = True, load_from_cache_file: bool | None = None, log_summary: bool = True):
    """Tokenize a `datasets.Dataset` with `map(batched=True)`; see the module docstring for the output columns.

    `num_proc` > 1 runs that many worker processes, each loading the model once (1 torch thread each on CPU).
    Re-running with the same data, model and settings is a datasets cache hit; a different model is a miss.
    """
    from datasets import Audio

    if audio_column not in dataset.column_names:
        raise ValueError(f"Audio column {audio_column!r} not found; columns are {dataset.column_names}.")
    if isinstance(dataset.features[audio_column], Audio) and dataset.features[audio_column].decode:
        # Decoding ourselves (soundfile) avoids needing torchcodec/FFmpeg and resamples explicitly.
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    threads = 1 if (num_proc or 1) > 1 and device == "cpu" else None
    function = DatasetTokenizer(_materialize(model_or_path), audio_column, device, chunk_seconds, lm_token_offset,
                                add_boundary_tokens, torch_threads=threads)
    start = time.time()
    tokenized = dataset.map(
        function, batched=True, batch_size=batch_size, num_proc=num_proc, with_rank=True,
        remove_columns=[audio_column] if remove_audio else None, load_from_cache_file=load_from_cache_file,
        desc="Tokenizing audio",
    )
    wall = time.time() - start
    if log_summary:
        hours = float(np.sum(tokenized["duration_s"])) / 3600
        tokens = int(np.sum(tokenized["num_frames"]))
        logger.info(f"Tokenized {len(tokenized):,} files, {hours:.3f} h of audio -> {tokens:,} tokens in {wall:.1f} s"
                    f" ({tokens / max(wall, 1e-9):,.0f} tokens/s, {hours * 3600 / max(wall, 1e-9):,.1f} audio s/s)")
    return tokenized


def shard_for_this_process(dataset, rank: int | None = None, world_size: int | None = None):
    """The contiguous shard of `dataset` for this rank (defaults from torchrun/accelerate's RANK/WORLD_SIZE).
    Concatenating the shards' outputs in rank order reproduces the single-process result exactly."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}.")
    return dataset.shard(num_shards=world_size, index=rank, contiguous=True)
