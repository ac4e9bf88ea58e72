"""Inference helpers: default checkpoint, audio files in, bounded-memory encoding/decoding of long audio.

Long audio is cut into chunks that carry enough context frames on each side to cover the network's receptive
field; only each chunk's centre is kept, so chunked codes equal whole-file codes up to float rounding (a code can
flip only where two codewords are within ~1e-6 of a tie).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from tqdm.auto import tqdm

from . import PQVAEModel
from .data import read_audio_file, to_model_audio

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CHECKPOINT = os.path.join(REPO_ROOT, "checkpoints", "pqvae-speech-small")


def default_model_path() -> str:
    """`$PQVAE_MODEL`, else the checkpoint shipped in the repository."""
    path = os.environ.get("PQVAE_MODEL", DEFAULT_CHECKPOINT)
    if not os.path.isdir(path) and os.sep in path:
        raise FileNotFoundError(
            f"No checkpoint at {path}. Pass --model PATH_OR_HUB_ID (or set PQVAE_MODEL); the shipped checkpoint lives"
            " in checkpoints/pqvae-speech-small of a source checkout."
        )
    return path


def load_model(path: str | None = None, device: str | torch.device = "cpu") -> PQVAEModel:
    """A local folder or Hub id (default: the shipped checkpoint), on `device`, in eval mode."""
    path = path or default_model_path()
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(f"Model folder {path} does not exist.")
    return PQVAEModel.from_pretrained(os.path.expanduser(path) if looks_local else path).to(device).eval()


def load_audio(path: str, sampling_rate: int, log=print) -> np.ndarray:
    """Reads wav/flac/ogg/opus with soundfile; downmixes and resamples explicitly, saying so. A missing, empty,
    truncated, undecodable or non-finite file raises `BadAudioError` naming it (see `data.read_audio_file`)."""
    audio, rate = read_audio_file(path)
    if audio.ndim == 2 and audio.shape[1] > 1:
        log(f"{os.path.basename(path)}: {audio.shape[1]} channels, averaging them to mono")
    if rate != sampling_rate:
        log(f"{os.path.basename(path)}: resampling {rate} Hz -> {sampling_rate} Hz (soxr, high quality)")
    return to_model_audio(audio, rate, sampling_rate)


def encoder_context_frames(config) -> int:
    """Frames on each side that can influence a frame's code: STFT half-window plus every conv's half-kernel."""
    stft = math.ceil(config.n_fft / 2 / config.hop_length)
    return stft + (config.kernel_size // 2) * (1 + config.num_encoder_layers)


def decoder_context_frames(config) -> int:
    return (config.kernel_size // 2) * (1 + config.num_decoder_layers)


def _chunks(num_frames: int, chunk_frames: int):
    for start in range(0, num_frames, chunk_frames):
        yield start, min(start + chunk_frames, num_frames)


@torch.no_grad()
def encode_long(model: PQVAEModel, audio: np.ndarray | torch.Tensor, chunk_seconds: float = 60.0,
                progress: bool = False) -> torch.Tensor:
    """Mono audio (T,) -> codes (M, T // hop + 1), in chunks of `chunk_seconds` (memory does not grow with T)."""
    config = model.config
    hop = config.hop_length
    audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if audio.dim() != 1:
        raise ValueError(f"encode_long takes mono audio of shape (samples,), got {tuple(audio.shape)}.")
    num_frames = config.num_frames(audio.shape[0])
    chunk_frames = max(1, int(chunk_seconds * config.frame_rate))
    if num_frames <= chunk_frames:
        return model.encode(audio[None, None].to(model.device)).audio_codes[0].cpu()
    context = encoder_context_frames(config) + 1
    codes = []
    for start, end in tqdm(list(_chunks(num_frames, chunk_frames)), desc="Encoding", disable=not progress):
        first = max(0, start - context)
        last = min(num_frames, end + context)
        # Frame f is centred on sample f * hop; a chunk of frames [first, last) needs samples up to (last - 1) * hop.
        piece = audio[first * hop : (last - 1) * hop + 1] if last < num_frames else audio[first * hop :]
        chunk_codes = model.encode(piece[None, None].to(model.device)).audio_codes[0].cpu()
        codes.append(chunk_codes[:, start - first : start - first + (end - start)])
    return torch.cat(codes, dim=-1)


@torch.no_grad()
def decode_long(model: PQVAEModel, codes: torch.Tensor, num_samples: int | None = None, chunk_seconds: float = 60.0,
                progress: bool = False, return_waveform: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codes (M, F) -> (log-mel (n_mels, F), waveform (num_samples,) or None), decoded chunk by chunk."""
    config = model.config
    codes = torch.as_tensor(codes)
    num_frames = codes.shape[-1]
    chunk_frames = max(1, int(chunk_seconds * config.frame_rate))
    context = decoder_context_frames(config) + 1
    mels = []
    for start, end in tqdm(list(_chunks(num_frames, chunk_frames)), desc="Decoding", disable=not progress):
        first, last = max(0, start - context), min(num_frames, end + context)
        mel = model.decode(codes[None, :, first:last].to(model.device), return_waveform=False).mel[0].cpu()
        mels.append(mel[:, start - first : start - first + (end - start)])
    mel = torch.cat(mels, dim=-1)
    if not return_waveform or model.vocoder is None:
        return mel, None
    # The post-filter's band means span the whole clip, as when `decode` gets it in one piece.
    audio = vocode_long(model, model.postfilter_mel(mel[None])[0], chunk_frames=chunk_frames, progress=progress)
    if num_samples is not None:
        audio = torch.nn.functional.pad(audio, (0, max(0, num_samples - audio.shape[-1])))[:num_samples]
    return mel, audio


@torch.no_grad()
def vocode_long(model: PQVAEModel, mel: torch.Tensor, chunk_frames: int, progress: bool = False,
                true_mel: bool = False) -> torch.Tensor:
    """Log-mel (n_mels, F) -> waveform ((F - 1) * hop,). Chunks overlap by a context margin and are cut at frame
    boundaries, far from the edges that a chunk's own padding affects. `true_mel=True`: a mel computed from audio,
    rendered by `model.true_mel_vocoder` (the mel vocoder when the model has one); else a decoded mel, by
    `model.vocoder`. A vocoder with Griffin-Lim projections (`*_phase_refinement_iters`) spreads each frame's
    influence past the context margin, so there a chunked clip matches the clip vocoded whole only approximately
    near the seams (clips up to `chunk_frames` are vocoded whole)."""
    vocoder = model.true_mel_vocoder if true_mel else model.vocoder
    hop = model.config.hop_length
    num_frames = mel.shape[-1]
    if num_frames < 2:  # (F - 1) * hop = 0 samples: nothing to vocode (Griffin-Lim's istft cannot take it)
        return torch.zeros(0)
    if num_frames <= chunk_frames:
        return vocoder(mel[None].to(model.device))[0].cpu()
    context = max(16, 2 * math.ceil(model.config.n_fft / hop))
    pieces = []
    for start, end in tqdm(list(_chunks(num_frames - 1, chunk_frames)), desc="Vocoding", disable=not progress):
        first, last = max(0, start - context), min(num_frames, end + 1 + context)
        audio = vocoder(mel[None, :, first:last].to(model.device))[0].cpu()
        pieces.append(audio[(start - first) * hop : (end - first) * hop])
    return torch.cat(pieces)
