# Copyright 2026 The pqvae-hf authors. Apache-2.0.
"""Train the neural vocoder (`PQVAEVocoder`) on real speech, then compare it with Griffin-Lim on the test split.

    python -m pqvae_hf.vocoder_training --corpus_dir /work/corpus --output_dir checkpoints/vocoder-run \
        --max_steps 12000 --batch_size 16 --segment_seconds 1.0 --num_threads 1 --seed 0

The input features are the tokenizer's own log-mel front-end (`LogMelSpectrogram`), computed from ground-truth audio.
Losses: multi-resolution STFT (spectral convergence + log-magnitude L1) plus a weighted L1 between the log-mel of
the output and the input log-mel. No adversarial loss: it would be too slow on CPU.

Writes to `output_dir`: `vocoder.safetensors` (state dict of `PQVAEVocoder`, also saved periodically during training)
and `vocoder_metrics.json` (settings, loss history, and test-split metrics of the vocoder vs Griffin-Lim).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pqvae_hf.data import decode_audio
from pqvae_hf.modeling.configuration_pqvae import PQVAEConfig
from pqvae_hf.modeling.modeling_pqvae import GriffinLim, LogMelSpectrogram
from pqvae_hf.modeling.vocoder_pqvae import PQVAEVocoder

logger = logging.getLogger("pqvae_hf.vocoder_training")

# (n_fft, hop, win) at 16 kHz: from ~15 ms windows (onsets, pitch pulses) to ~75 ms (harmonic resolution), so no
# single time-frequency trade-off is all the phase has to satisfy.
STFT_RESOLUTIONS = ((512, 50, 240), (1024, 120, 600), (2048, 240, 1200))


# --------------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------------


class MultiResolutionSTFTLoss(torch.nn.Module):
    """Mean over resolutions of spectral convergence + L1 of log magnitudes. waveforms (B, T) -> scalar(s)."""

    def __init__(self, resolutions=STFT_RESOLUTIONS, eps: float = 1e-5):
        super().__init__()
        self.resolutions = tuple(resolutions)
        self.eps = eps
        for i, (_, _, win) in enumerate(self.resolutions):
            self.register_buffer(f"window_{i}", torch.hann_window(win), persistent=False)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (spectral_convergence, log_magnitude_l1), each averaged over the resolutions."""
        convergence, log_l1 = 0.0, 0.0
        for i, (n_fft, hop, win) in enumerate(self.resolutions):
            window = getattr(self, f"window_{i}")
            pred = torch.stft(prediction, n_fft, hop, win, window, return_complex=True).abs()
            true = torch.stft(target, n_fft, hop, win, window, return_complex=True).abs()
            convergence = convergence + torch.linalg.norm(true - pred) / torch.linalg.norm(true).clamp_min(self.eps)
            log_l1 = log_l1 + (torch.log(pred.clamp_min(self.eps)) - torch.log(true.clamp_min(self.eps))).abs().mean()
        n = len(self.resolutions)
        return convergence / n, log_l1 / n


class ComplexSTFTLoss(torch.nn.Module):
    """Phase-aware losses at the vocoder's own synthesis resolution, relative to the target's level.

    complex: sum |Re(S_pred - S_true)| + |Im(S_pred - S_true)| / sum |Re(S_true)| + |Im(S_true)|, sums over the batch,
    with the centred, zero-padded STFT of the front-end (n_fft, hop, win of the config). time: sum |y - x| / sum |x|.
    Both are 0 for identical signals, ~1 for silence vs the target, and do not depend on the overall level (the
    training data are gain-augmented). A magnitude-only loss leaves the phase free; these do not.

    A log-mel does not determine the waveform's polarity (x and -x have the same mel), so with `polarity_invariant`
    each example is compared with whichever of +target / -target its complex loss is closer to.

    forward(prediction (B, T), target (B, T)) -> (complex_l1, time_l1), two scalars.
    """

    def __init__(self, config: PQVAEConfig, polarity_invariant: bool = True, eps: float = 1e-7):
        super().__init__()
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.win_length = config.win_length
        self.polarity_invariant = polarity_invariant
        self.eps = eps
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)

    def _stft(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(waveform.float(), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=True, pad_mode="constant", return_complex=True)
        return torch.view_as_real(spec)  # (B, K, F, 2)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred, true = self._stft(prediction), self._stft(target)
        # Normalised over the whole batch (as spectral convergence is), not per example: a near-silent crop would
        # otherwise divide by ~0 and blow the loss up.
        complex_err = (pred - true).abs().sum(dim=(1, 2, 3))
        time_err = (prediction - target).abs().sum(dim=-1)
        if self.polarity_invariant:
            flipped = (pred + true).abs().sum(dim=(1, 2, 3))
            flip = (flipped < complex_err).detach()
            complex_err = torch.where(flip, flipped, complex_err)
            time_err = torch.where(flip, (prediction + target).abs().sum(dim=-1), time_err)
        complex_l1 = complex_err.sum() / true.abs().sum().clamp_min(self.eps)
        time_l1 = time_err.sum() / target.abs().sum().clamp_min(self.eps)
        return complex_l1, time_l1


def anti_wrap(x: torch.Tensor) -> torch.Tensor:
    """|x - 2 pi round(x / 2 pi)|: the distance of an angle difference to the nearest multiple of 2 pi, in [0, pi]."""
    return (x - 2 * math.pi * torch.round(x / (2 * math.pi))).abs()


class PhaseDerivativeLoss(torch.nn.Module):
    """Anti-wrapped instantaneous-frequency (time difference) and group-delay (frequency difference) errors of the
    vocoder's predicted phase against the target's STFT phase at the synthesis resolution (as in APNet, Ai & Ling
    2023), weighted by the target magnitude so that only bins with energy count.

    Unlike the absolute phase, these are predictable from a log-mel and unchanged by the target's polarity (a constant
    pi offset cancels in the differences). Each is in [0, pi] (~pi / 2 for random phases).
    forward(phase (B, K, F) predicted, target waveform (B, (F - 1) * hop)) -> (instantaneous_frequency, group_delay).
    """

    def __init__(self, config: PQVAEConfig, eps: float = 1e-7):
        super().__init__()
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.win_length = config.win_length
        self.eps = eps
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)

    def stft(self, waveform: torch.Tensor) -> torch.Tensor:
        """The complex STFT (B, K, F) the target's phase is read from (also to score a waveform's own phase)."""
        return torch.stft(waveform.float(), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=True, pad_mode="constant", return_complex=True)

    def _weighted_mean(self, error: torch.Tensor, magnitude: torch.Tensor, dim: int) -> torch.Tensor:
        """Mean of an error between neighbours along `dim` (B, K, F) -> (one fewer along `dim`), each pair weighted by
        the geometric mean of the target's two magnitudes, so that only bins with energy count."""
        weight = torch.sqrt(magnitude.narrow(dim, 1, magnitude.shape[dim] - 1)
                            * magnitude.narrow(dim, 0, magnitude.shape[dim] - 1))
        return (weight * error).sum() / weight.sum().clamp_min(self.eps)

    def forward(self, phase: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.stft(target)
        magnitude, true_phase = spec.abs(), spec.angle()
        frequency, delay = (
            self._weighted_mean(anti_wrap(phase.diff(dim=dim) - true_phase.diff(dim=dim)), magnitude, dim)
            for dim in (-1, 1))
        return frequency, delay

    def output_errors(self, prediction: torch.Tensor, target: torch.Tensor,
                      relative_floor: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
        """The same two errors on the phase of the output waveform's own STFT (what is heard: the inverse STFT's
        overlap-add makes the predicted phase consistent, and changes it), as chord distances |e^{i a} - e^{i b}| =
        2 sin(|a - b| / 2) in [0, 2] between unit phase-difference vectors. Differentiable everywhere: a unit vector
        is z / (|z| + floor), the floor a fraction of the target's mean magnitude, where `angle()`'s gradient would
        blow up at quiet bins. forward(prediction (B, T), target (B, T)) -> (instantaneous_frequency, group_delay)."""
        predicted, true = self.stft(prediction), self.stft(target)
        magnitude = true.abs()
        floor = relative_floor * magnitude.mean().detach() + self.eps

        def unit(z: torch.Tensor) -> torch.Tensor:
            return z / (z.abs() + floor)

        predicted, true = unit(predicted), unit(true)

        def step(z: torch.Tensor, dim: int) -> torch.Tensor:  # unit phase difference between neighbours along dim
            count = z.shape[dim] - 1
            return z.narrow(dim, 1, count) * z.narrow(dim, 0, count).conj()

        frequency, delay = (
            self._weighted_mean((step(predicted, dim) - step(true, dim)).abs(), magnitude, dim) for dim in (-1, 1))
        return frequency, delay


class VocoderLoss(torch.nn.Module):
    """`mel_weight * L1(log-mel(output), input log-mel) + stft_weight * (SC + log-mag L1)
    + complex_stft_weight * relative complex-STFT L1 + time_weight * relative waveform L1
    + phase_weight * (instantaneous-frequency + group-delay errors) + magnitude_weight * predicted log-magnitude L1`.

    The last four (see `ComplexSTFTLoss`, `PhaseDerivativeLoss`) are off by default: the original magnitude-only loss.
    forward(waveform (B, T), log_mel (B, M, F), target (B, (F - 1) * hop)) -> dict of scalars with key "loss".
    """

    def __init__(self, config: PQVAEConfig, mel_weight: float = 45.0, stft_weight: float = 5.0,
                 complex_stft_weight: float = 0.0, time_weight: float = 0.0, polarity_invariant: bool = True,
                 phase_weight: float = 0.0, magnitude_weight: float = 0.0):
        super().__init__()
        self.front_end = LogMelSpectrogram(config)
        self.stft_loss = MultiResolutionSTFTLoss()
        self.phase_loss = ComplexSTFTLoss(config, polarity_invariant=polarity_invariant)
        self.mel_weight = mel_weight
        self.stft_weight = stft_weight
        self.complex_stft_weight = complex_stft_weight
        self.time_weight = time_weight
        self.phase_weight = phase_weight
        self.magnitude_weight = magnitude_weight
        self.phase_derivative_loss = PhaseDerivativeLoss(config)

    def forward(self, prediction: torch.Tensor, log_mel: torch.Tensor, target: torch.Tensor,
                phase: torch.Tensor | None = None, magnitude: torch.Tensor | None = None) -> dict:
        """`phase`, `magnitude`: the predicted STFT (`PQVAEVocoder.synthesize`), needed when `phase_weight` /
        `magnitude_weight` > 0. The magnitude term is the L1 between the predicted log-magnitude (before the inverse
        STFT) and the target's at the synthesis resolution, both floored at the front-end's `log_floor`."""
        mel_l1 = (self.front_end(prediction) - log_mel).abs().mean()
        convergence, log_l1 = self.stft_loss(prediction, target)
        loss = self.mel_weight * mel_l1 + self.stft_weight * (convergence + log_l1)
        out = {"mel_l1": mel_l1, "spectral_convergence": convergence, "log_stft_l1": log_l1,
               "mr_stft": convergence + log_l1}
        if self.complex_stft_weight > 0 or self.time_weight > 0:
            complex_l1, time_l1 = self.phase_loss(prediction, target)
            loss = loss + self.complex_stft_weight * complex_l1 + self.time_weight * time_l1
            out.update(complex_stft_l1=complex_l1, time_l1=time_l1)
        if self.phase_weight > 0:
            if phase is None:
                raise ValueError("`phase_weight` > 0 needs the predicted `phase` (see `PQVAEVocoder.synthesize`).")
            frequency, delay = self.phase_derivative_loss(phase, target)
            loss = loss + self.phase_weight * (frequency + delay)
            out.update(inst_freq_error=frequency, group_delay_error=delay)
        if self.magnitude_weight > 0:
            if magnitude is None:
                raise ValueError("`magnitude_weight` > 0 needs the predicted `magnitude` (see"
                                 " `PQVAEVocoder.synthesize`).")
            true = self.front_end.magnitude(target)
            floor = self.front_end.log_floor
            magnitude_l1 = (torch.log(magnitude.clamp_min(floor)) - torch.log(true.clamp_min(floor))).abs().mean()
            loss = loss + self.magnitude_weight * magnitude_l1
            out.update(magnitude_l1=magnitude_l1)
        return {"loss": loss, **out}


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def read_metadata(corpus_dir: str) -> list[dict]:
    with open(os.path.join(corpus_dir, "metadata.csv"), newline="") as f:
        return list(csv.DictReader(f))


def load_audio(path: str, sampling_rate: int) -> np.ndarray:
    """Any soundfile-readable file -> mono float32 at `sampling_rate`, shape (T,), through the package's one decoding
    path (`data.decode_audio`: bad files raise BadAudioError naming them)."""
    return decode_audio(path, sampling_rate)


def select_train_files(rows: list[dict], minutes: float, seed: int) -> list[dict]:
    """A seeded shuffle of the (sorted) train split, cut after `minutes` of audio: every source is represented."""
    train = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["file_name"])
    random.Random(seed).shuffle(train)
    if minutes <= 0:
        return train
    chosen, total = [], 0.0
    for row in train:
        if total >= minutes * 60:
            break
        chosen.append(row)
        total += float(row["duration_s"])
    return chosen


def select_test_files(rows: list[dict], count: int) -> list[dict]:
    """`count` test files evenly spaced over the sorted test split (deterministic, spans all sources)."""
    test = sorted((r for r in rows if r["split"] == "test"), key=lambda r: r["file_name"])
    if count >= len(test):
        return test
    return [test[int(i * len(test) / count)] for i in range(count)]


@dataclass
class SegmentSampler:
    """Random fixed-length crops from in-memory clips, clip chosen with probability proportional to its length."""

    clips: list[np.ndarray]
    segment_samples: int
    rng: np.random.Generator
    gain_db_range: tuple[float, float] = (-12.0, 3.0)

    def __post_init__(self):
        lengths = np.array([max(len(c), self.segment_samples) for c in self.clips], dtype=np.float64)
        self.probs = lengths / lengths.sum()

    def batch(self, batch_size: int) -> torch.Tensor:
        out = np.zeros((batch_size, self.segment_samples), dtype=np.float32)
        for b, index in enumerate(self.rng.choice(len(self.clips), size=batch_size, p=self.probs)):
            clip = self.clips[index]
            if len(clip) > self.segment_samples:
                start = self.rng.integers(0, len(clip) - self.segment_samples + 1)
                out[b] = clip[start:start + self.segment_samples]
            else:
                out[b, : len(clip)] = clip  # short clips were kept, zero-padded at the end
            # Random level, so the vocoder follows the input's loudness rather than the corpus' typical level.
            gain = 10 ** (self.rng.uniform(*self.gain_db_range) / 20)
            peak = np.abs(out[b]).max()
            if peak * gain > 0.99:
                gain = 0.99 / max(peak, 1e-8)
            out[b] *= gain
        return torch.from_numpy(out)


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


def _mean(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


@torch.no_grad()
def evaluate(vocoder: PQVAEVocoder, config: PQVAEConfig, rows: list[dict], corpus_dir: str) -> dict:
    """Neural vocoder vs Griffin-Lim on full-length test files, both from the ground-truth log-mel."""
    try:
        from pesq import pesq
        from pystoi import stoi
    except ImportError:  # metrics that need them are reported as None
        pesq = stoi = None
        logger.warning("pesq / pystoi not installed: PESQ and STOI are skipped (pip install pesq pystoi).")
    front_end = LogMelSpectrogram(config)
    griffin_lim = GriffinLim(config, front_end)
    stft_loss = MultiResolutionSTFTLoss()
    vocoder.eval()
    results = {name: {"mel_l1": [], "mr_stft": [], "stoi": [], "pesq_wb": []} for name in ("neural", "griffin_lim")}
    failures = {"pesq": 0, "stoi": 0}
    total_seconds, neural_seconds = 0.0, 0.0
    for row in tqdm(rows, desc="eval", mininterval=10):
        audio = torch.from_numpy(load_audio(os.path.join(corpus_dir, row["file_name"]), config.sampling_rate))[None]
        log_mel = front_end(audio)
        length = (log_mel.shape[-1] - 1) * config.hop_length
        reference = audio[:, :length]
        start = time.perf_counter()
        neural = vocoder(log_mel)
        neural_seconds += time.perf_counter() - start
        total_seconds += length / config.sampling_rate
        outputs = {"neural": neural, "griffin_lim": griffin_lim(log_mel)}
        for name, wave in outputs.items():
            metric = results[name]
            metric["mel_l1"].append(float((front_end(wave) - log_mel).abs().mean()))
            convergence, log_l1 = stft_loss(wave, reference)
            metric["mr_stft"].append(float(convergence + log_l1))
            ref_np, deg_np = reference[0].numpy().astype(np.float64), wave[0].numpy().astype(np.float64)
            if stoi is not None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        metric["stoi"].append(float(stoi(ref_np, deg_np, config.sampling_rate, extended=False)))
                except Exception:  # noqa: BLE001 - a too-short or silent file is skipped, not fatal
                    failures["stoi"] += 1
            if pesq is not None:
                try:
                    metric["pesq_wb"].append(float(pesq(config.sampling_rate, ref_np, deg_np, "wb")))
                except Exception:  # noqa: BLE001
                    failures["pesq"] += 1
    summary = {name: {key: _mean(values) for key, values in metric.items()} for name, metric in results.items()}
    for name, metric in results.items():
        summary[name]["num_scored"] = {key: len(values) for key, values in metric.items()}
    summary["num_files"] = len(rows)
    summary["audio_seconds"] = total_seconds
    summary["metric_failures_per_system"] = {k: v // 2 for k, v in failures.items()}
    summary["neural_real_time_factor"] = neural_seconds / max(total_seconds, 1e-9)
    summary["files"] = [r["file_name"] for r in rows]
    return summary


@torch.no_grad()
def validate(vocoder: PQVAEVocoder, config: PQVAEConfig, clips: list[np.ndarray]) -> dict:
    """Quick held-out check: mean mel L1 and PESQ-wb of the vocoder from ground-truth log-mel."""
    try:
        from pesq import pesq
    except ImportError:
        pesq = None
    front_end = LogMelSpectrogram(config)
    vocoder.eval()
    mel, scores = [], []
    for clip in clips:
        audio = torch.from_numpy(clip)[None]
        log_mel = front_end(audio)
        wave = vocoder(log_mel)
        mel.append(float((front_end(wave) - log_mel).abs().mean()))
        if pesq is not None:
            try:
                scores.append(float(pesq(config.sampling_rate, audio[0, : wave.shape[-1]].double().numpy(),
                                         wave[0].double().numpy(), "wb")))
            except Exception:  # noqa: BLE001
                pass
    return {"mel_l1": _mean(mel), "pesq_wb": _mean(scores)}


@torch.no_grad()
def real_time_factor(vocoder: PQVAEVocoder, config: PQVAEConfig, seconds: float = 10.0, repeats: int = 3) -> float:
    """Compute time / audio time of the vocoder on one `seconds`-long input, at the current thread count."""
    frames = int(seconds * config.frame_rate) + 1
    log_mel = torch.randn(1, config.num_mel_bins, frames) - 5.0
    vocoder.eval()
    vocoder(log_mel)
    start = time.perf_counter()
    for _ in range(repeats):
        vocoder(log_mel)
    return (time.perf_counter() - start) / repeats / seconds


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=10_000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--segment_seconds", type=float, default=1.0)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--min_lr_ratio", type=float, default=0.05, help="cosine decay ends at lr * this")
    parser.add_argument("--warmup_steps", type=int, default=200)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--grad_clip", type=float, default=10.0)
    parser.add_argument("--mel_weight", type=float, default=45.0)
    parser.add_argument("--stft_weight", type=float, default=5.0,
                        help="weight of the multi-resolution STFT loss; above 1 so phase coherence at fine time "
                        "resolutions is not drowned by the mel term")
    parser.add_argument("--train_minutes", type=float, default=120.0,
                        help="audio of the train split to preload (seeded shuffle, then the first N minutes); 0 = all")
    parser.add_argument("--num_test_files", type=int, default=40)
    parser.add_argument("--log_every", type=int, default=100)
    parser.add_argument("--save_every", type=int, default=1000)
    parser.add_argument("--skip_eval", action="store_true")
    parser.add_argument("--init_from", default=None,
                        help="safetensors state dict of a `PQVAEVocoder` to fine-tune from (default: random init)")
    parser.add_argument("--complex_stft_weight", type=float, default=0.0,
                        help="weight of the relative complex-STFT L1 at the synthesis resolution (phase-aware)")
    parser.add_argument("--time_weight", type=float, default=0.0, help="weight of the relative waveform L1")
    parser.add_argument("--phase_weight", type=float, default=0.0,
                        help="weight of the magnitude-weighted instantaneous-frequency + group-delay phase errors")
    parser.add_argument("--magnitude_weight", type=float, default=0.0,
                        help="weight of the L1 between the predicted STFT log-magnitude (before the inverse STFT) and "
                        "the target's, at the synthesis resolution")
    parser.add_argument("--no_polarity_invariance", action="store_true",
                        help="compare with +target only in the phase-aware terms (default: best of +/- target)")
    parser.add_argument("--max_train_minutes", type=float, default=0.0,
                        help="wall-clock cap on training (0 = none); the LR schedule follows whichever of steps / "
                        "time runs out first, then the run saves and evaluates as usual")
    parser.add_argument("--val_files", type=int, default=0,
                        help="held-out train-split files (>= 1 s, excluded from training) scored every --val_every "
                        "steps; the best by PESQ-wb is kept as vocoder.safetensors (0 = off: keep the last)")
    parser.add_argument("--val_every", type=int, default=250)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    config = PQVAEConfig()

    rows = read_metadata(args.corpus_dir)
    train_rows = select_train_files(rows, args.train_minutes, args.seed)
    val_rows = []
    if args.val_files > 0:
        # Taken from the end of the seeded shuffle (the files a time-limited selection reaches last), then excluded.
        candidates = [r for r in select_train_files(rows, 0, args.seed) if float(r["duration_s"]) >= 1.0]
        val_rows = candidates[-args.val_files:]
        val_names = {r["file_name"] for r in val_rows}
        train_rows = [r for r in train_rows if r["file_name"] not in val_names]
    segment_samples = max(1, round(args.segment_seconds * config.sampling_rate / config.hop_length)) * config.hop_length
    start = time.time()
    clips, failed = [], []
    for row in tqdm(train_rows, desc="decode", mininterval=10):
        try:
            clips.append(load_audio(os.path.join(args.corpus_dir, row["file_name"]), config.sampling_rate))
        except Exception as error:  # noqa: BLE001 - one unreadable file must not stop the run
            failed.append(row["file_name"])
            logger.warning("skipping %s: %s", row["file_name"], error)
    num_short = sum(len(c) < segment_samples for c in clips)
    train_seconds = sum(len(c) for c in clips) / config.sampling_rate
    logger.info("preloaded %d train files (%.1f min) in %.0f s; %d unreadable; %d shorter than the %d-sample segment "
                "(zero-padded)", len(clips), train_seconds / 60, time.time() - start, len(failed), num_short,
                segment_samples)

    sampler = SegmentSampler(clips, segment_samples, np.random.default_rng(args.seed))
    vocoder = PQVAEVocoder(config)
    if args.init_from:
        vocoder.load_state_dict(load_file(args.init_from))
        logger.info("initialised from %s", args.init_from)
    num_params = sum(p.numel() for p in vocoder.parameters())
    logger.info("vocoder parameters: %d", num_params)
    criterion = VocoderLoss(config, mel_weight=args.mel_weight, stft_weight=args.stft_weight,
                            complex_stft_weight=args.complex_stft_weight, time_weight=args.time_weight,
                            polarity_invariant=not args.no_polarity_invariance, phase_weight=args.phase_weight,
                            magnitude_weight=args.magnitude_weight)
    # No weight decay on norms, biases and layer scales: shrinking them only fights the normalisation.
    decay = [p for n, p in vocoder.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in vocoder.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.learning_rate,
                                  betas=(0.8, 0.99))

    def lr_factor(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
        if args.max_train_minutes > 0 and step > 0:
            progress = max(progress, (time.time() - train_start) / (args.max_train_minutes * 60))
        return args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    weights_path = os.path.join(args.output_dir, "vocoder.safetensors")
    last_path = os.path.join(args.output_dir, "vocoder_last.safetensors") if val_rows else weights_path
    val_clips = [load_audio(os.path.join(args.corpus_dir, r["file_name"]), config.sampling_rate) for r in val_rows]
    validation, best = [], None

    def save(path):
        save_file({k: v.contiguous() for k, v in vocoder.state_dict().items()}, path)

    def run_validation(step):
        nonlocal best
        entry = {"step": step, **validate(vocoder, config, val_clips)}
        validation.append(entry)
        logger.info("validation %s", entry)
        if best is None or (entry["pesq_wb"] or -1) > (best["pesq_wb"] or -1):
            best = entry
            save(weights_path)
        vocoder.train()

    history, running = [], {}
    train_start = time.time()
    if val_rows:
        run_validation(0)
    vocoder.train()
    steps_done = 0
    progress = tqdm(range(args.max_steps), desc="train", mininterval=30)
    for step in progress:
        if args.max_train_minutes > 0 and time.time() - train_start > args.max_train_minutes * 60:
            logger.info("wall-clock cap of %.1f min reached after %d steps", args.max_train_minutes, step)
            break
        steps_done = step + 1
        target = sampler.batch(args.batch_size)
        with torch.no_grad():
            log_mel = criterion.front_end(target)
        prediction, magnitude, phase = vocoder.synthesize(log_mel)
        losses = criterion(prediction, log_mel, target, phase, magnitude)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(vocoder.parameters(), args.grad_clip)
        optimizer.step()
        scheduler.step()
        for key, value in losses.items():
            running[key] = running.get(key, 0.0) + value.item()
        running["grad_norm"] = running.get("grad_norm", 0.0) + float(grad_norm)
        if (step + 1) % args.log_every == 0 or step + 1 == args.max_steps:
            count = (step % args.log_every) + 1
            entry = {"step": step + 1, "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - train_start, 1)}
            entry.update({k: round(v / count, 5) for k, v in running.items()})
            history.append(entry)
            running = {}
            progress.set_postfix(loss=entry["loss"], mel=entry["mel_l1"])
            logger.info("step %d | loss %.4f | mel_l1 %.4f | sc %.4f | log_stft %.4f | complex %.4f | time %.4f | "
                        "if %.3f | gd %.3f | mag %.3f | grad %.1f | lr %.2e | %.2f s/step", entry["step"], entry["loss"], entry["mel_l1"],
                        entry["spectral_convergence"], entry["log_stft_l1"], entry.get("complex_stft_l1", float("nan")),
                        entry.get("time_l1", float("nan")), entry.get("inst_freq_error", float("nan")),
                        entry.get("group_delay_error", float("nan")), entry.get("magnitude_l1", float("nan")),
                        entry["grad_norm"], entry["lr"],
                        entry["elapsed_s"] / entry["step"])
        if (step + 1) % args.save_every == 0:
            save(last_path)
        if val_rows and (step + 1) % args.val_every == 0:
            run_validation(step + 1)
    if running:  # a wall-clock stop between log points
        count = steps_done % args.log_every or args.log_every
        entry = {"step": steps_done, "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - train_start, 1)}
        entry.update({k: round(v / count, 5) for k, v in running.items()})
        history.append(entry)
    wall_time = time.time() - train_start
    save(last_path)
    if val_rows and (not validation or validation[-1]["step"] != steps_done):
        run_validation(steps_done)
    if val_rows:
        vocoder.load_state_dict(load_file(weights_path))
        logger.info("best held-out PESQ at step %d: %s; evaluating those weights", best["step"], best)
    logger.info("trained %d steps in %.0f s; weights -> %s", steps_done, wall_time, weights_path)

    metrics = {
        "command": "python -m pqvae_hf.vocoder_training " + " ".join(sys.argv[1:] if argv is None else argv),
        "steps": steps_done,
        "train_wall_time_s": round(wall_time, 1),
        "seconds_per_step": round(wall_time / max(steps_done, 1), 4),
        "num_parameters": num_params,
        "num_threads": args.num_threads,
        "real_time_factor_10s_input": real_time_factor(vocoder, config),
        "train_data": {
            "selection": f"split=='train', sorted by file_name, shuffled with seed {args.seed}, first "
                         f"{args.train_minutes} minutes (0 = all)",
            "num_files": len(clips),
            "minutes": round(train_seconds / 60, 2),
            "unreadable_files": failed,
            "files_shorter_than_segment_zero_padded": num_short,
            "segment_samples": segment_samples,
            "gain_augmentation_db": list(sampler.gain_db_range),
        },
        "hyperparameters": {k: v for k, v in vars(args).items() if k not in ("corpus_dir", "output_dir")},
        "stft_loss_resolutions": [list(r) for r in STFT_RESOLUTIONS],
        "history": history,
    }
    if val_rows:
        metrics["validation"] = {"files": [r["file_name"] for r in val_rows], "history": validation, "best": best,
                                 "kept": "vocoder.safetensors = best held-out PESQ-wb; vocoder_last.safetensors = "
                                         "last step"}
    if not args.skip_eval:
        test_rows = select_test_files(rows, args.num_test_files)
        metrics["test"] = evaluate(vocoder, config, test_rows, args.corpus_dir)
        metrics["test"]["selection"] = (f"split=='test', sorted by file_name, {len(test_rows)} evenly spaced files, "
                                        "full length; both systems from the ground-truth log-mel")
        for name in ("neural", "griffin_lim"):
            logger.info("test %s: %s", name, {k: v for k, v in metrics["test"][name].items() if k != "num_scored"})
    with open(os.path.join(args.output_dir, "vocoder_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


if __name__ == "__main__":
    main()
