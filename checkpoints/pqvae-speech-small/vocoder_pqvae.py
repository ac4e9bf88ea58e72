# Copyright 2026 The pqvae-hf authors. Apache-2.0.
"""Neural vocoder of the PQ-VAE tokenizer: log-mel (B, num_mel_bins, F) -> waveform (B, (F - 1) * hop_length).

A Vocos-style design (Siuzdenko, arXiv 2306.00814): a ConvNeXt backbone runs at the frame rate and predicts one
complex STFT frame per mel frame, which an inverse STFT turns into samples. Nothing runs at the sample rate, so it is
cheap on CPU. Part of the Hub payload: imports only torch and its own relative modules.

Shapes: B batch, F frames, M mel bins, C hidden channels, K = n_fft // 2 + 1 frequency bins.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_pqvae import PQVAEConfig
from .quantization_pqvae import float32_region, keep_float32


def mel_filterbank(config: PQVAEConfig) -> torch.Tensor:
    """Triangular HTK-scale mel filters without area normalisation, (num_mel_bins, n_fft // 2 + 1).

    The front end's filterbank; it lives here because the vocoder inverts it too (modeling_pqvae imports it)."""
    fmax = config.mel_fmax if config.mel_fmax is not None else config.sampling_rate / 2
    num_bins = config.n_fft // 2 + 1
    freqs = torch.linspace(0, config.sampling_rate / 2, num_bins, dtype=torch.float64)

    def hz_to_mel(hz: float) -> float:
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    mel_points = torch.linspace(hz_to_mel(config.mel_fmin), hz_to_mel(fmax), config.num_mel_bins + 2,
                                dtype=torch.float64)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    lower, center, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (freqs[None] - lower) / (center - lower)
    falling = (upper - freqs[None]) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def mel_pseudo_inverse(mel_filters: torch.Tensor) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of a mel filterbank (M, K) -> (K, M) float32, solved in float64."""
    return torch.linalg.pinv(mel_filters.double()).float()


def mel_pseudo_inverse_magnitude(log_mel: torch.Tensor, pseudo_inverse: torch.Tensor) -> torch.Tensor:
    """log-mel (B, M, F) -> linear STFT magnitude estimate (B, K, F) float32, through the filterbank's Moore-Penrose
    pseudo-inverse (K, M): the least-squares magnitude whose mel is the input, negative values clipped to 0. Griffin-Lim
    starts from it, and so does the neural vocoder with `vocoder_magnitude_prior="mel_pseudo_inverse"`. Computed in
    float32 even under autocast (a half-precision matmul would round the small magnitudes of quiet bins)."""
    with float32_region(log_mel):
        return (pseudo_inverse.float() @ torch.exp(log_mel.float())).clamp_min(0.0)


# Fast Griffin-Lim's momentum (Perraud et al. 2013), for the Griffin-Lim vocoder and the neural vocoder's refinement.
GRIFFIN_LIM_MOMENTUM = 0.99


def griffin_lim_projections(magnitude: torch.Tensor, real: torch.Tensor, imag: torch.Tensor, num_iters: int,
                            momentum: float, to_waveform, to_spectrogram,
                            eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast Griffin-Lim (Perraud et al. 2013) from a starting STFT given as real and imaginary parts, each (B, K, F).

    Each iteration goes to the waveform and back (`to_waveform(real, imag) -> (B, T)`, `to_spectrogram(waveform) ->
    (real, imag)`: the caller's inverse and forward STFT), extrapolates the rebuilt spectrogram with `momentum`, and
    keeps its phase with the target `magnitude` (B, K, F). Real arithmetic only, so the same code runs in PyTorch and
    in the ONNX export (conversion/export_onnx.py); differentiable everywhere (the norm has `eps` inside the square
    root), so the neural vocoder can unroll it (`vocoder_phase_refinement_iters`). The weight-free Griffin-Lim
    vocoder runs it from random phases."""
    previous_real, previous_imag = torch.zeros_like(real), torch.zeros_like(imag)
    extrapolation = momentum / (1 + momentum)
    for _ in range(num_iters):
        rebuilt_real, rebuilt_imag = to_spectrogram(to_waveform(real, imag))
        real = rebuilt_real - extrapolation * previous_real
        imag = rebuilt_imag - extrapolation * previous_imag
        previous_real, previous_imag = rebuilt_real, rebuilt_imag
        scale = magnitude * torch.rsqrt(real**2 + imag**2 + eps**2)
        real, imag = real * scale, imag * scale
    return real, imag


class VocoderConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> pointwise MLP (GELU), residual with layer scale. (B, C, F) -> (B, C, F).

    With a frame mask (B, 1, F), the depthwise conv's input is zeroed on padded frames, so padding never leaks into
    valid frames (the zero padding of the conv then looks the same batched or alone).
    """

    def __init__(self, channels: int, intermediate_size: int, kernel_size: int, eps: float, num_layers: int):
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=eps)
        self.pointwise_in = nn.Linear(channels, intermediate_size)
        self.pointwise_out = nn.Linear(intermediate_size, channels)
        # Small residual branches at init keep the deep stack close to the identity, which trains stably without
        # warm-up; kept as an attribute so an outer `_init_weights` can restore it.
        self.layer_scale_init = 1.0 / max(num_layers, 1)
        self.layer_scale = nn.Parameter(torch.full((channels,), self.layer_scale_init))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden
        hidden = self.norm(self.depthwise(hidden if mask is None else hidden * mask).transpose(1, 2))  # (B, F, C)
        hidden = self.pointwise_out(F.gelu(self.pointwise_in(hidden)))
        return residual + (self.layer_scale * hidden).transpose(1, 2)


class PQVAEVocoder(nn.Module):
    """Log-mel -> complex STFT -> waveform.

    Args:
        config ([`PQVAEConfig`]): uses `n_fft`, `hop_length`, `win_length`, `num_mel_bins`, `kernel_size`,
            `layer_norm_eps`, `vocoder_hidden_size`, `vocoder_intermediate_size`, `vocoder_num_layers`,
            `vocoder_magnitude_prior` (with `"mel_pseudo_inverse"` also the mel settings and `log_floor`) and
            `vocoder_phase_refinement_iters`.
        magnitude_prior (`str`, *optional*) / phase_refinement_iters (`int`, *optional*): replace the config's
            `vocoder_magnitude_prior` / `vocoder_phase_refinement_iters` (the model's true-mel vocoder passes its
            `mel_vocoder_*` fields).

    With `vocoder_magnitude_prior="mel_pseudo_inverse"` the network's log-magnitude output is a correction added to the
    log of the mel's pseudo-inverse magnitude (what Griffin-Lim uses), instead of the whole log-magnitude: a network
    whose magnitude rows are zero (`reset_magnitude_correction`) outputs exactly that magnitude, so training starts
    from a magnitude that is already as close to the true one as the mel allows by least squares.

    The input is the natural-log mel magnitude of [`LogMelSpectrogram`] (centred STFT, F = T // hop + 1 frames); the
    output has `(F - 1) * hop_length` samples, the same length as the Griffin-Lim vocoder. Every layer acts per frame
    or as a zero-padded convolution over frames, so examples of equal length give the same output batched or alone.
    With a `frame_mask` (B, F) (1 = valid frame, right padding), a padded example gives the output it gives alone:
    convolutions see zeros instead of padded frames, padded frames add nothing to the inverse STFT's overlap-add,
    the window normalisation counts only valid frames, and samples past `(valid_frames - 1) * hop_length` are zero.
    """

    # exp() of an unbounded prediction can overflow early in training; 1e2 is far above the STFT magnitude of
    # full-scale speech harmonics with this window, so it never limits trained outputs in practice.
    max_log_magnitude = math.log(1e2)

    def __init__(self, config: PQVAEConfig, magnitude_prior: str | None = None,
                 phase_refinement_iters: int | None = None):
        super().__init__()
        self.n_fft = config.n_fft
        self.hop_length = config.hop_length
        self.win_length = config.win_length
        channels = config.vocoder_hidden_size
        self.num_freq_bins = config.n_fft // 2 + 1

        self.embed = nn.Conv1d(config.num_mel_bins, channels, config.kernel_size, padding=config.kernel_size // 2)
        self.norm_in = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(
            VocoderConvNeXtBlock(channels, config.vocoder_intermediate_size, config.kernel_size,
                                 config.layer_norm_eps, config.vocoder_num_layers)
            for _ in range(config.vocoder_num_layers)
        )
        self.norm_out = nn.LayerNorm(channels, eps=config.layer_norm_eps)
        # Per frame: K log-magnitudes (or, with a magnitude prior, K log-magnitude corrections) followed by K phases.
        self.proj_out = nn.Linear(channels, 2 * self.num_freq_bins)
        # The inverse STFT runs in float32 (its window stays float32 when the model is cast to half precision).
        self.register_buffer("window", torch.hann_window(config.win_length, dtype=torch.float32), persistent=False)
        self.magnitude_prior = config.vocoder_magnitude_prior if magnitude_prior is None else magnitude_prior
        self.phase_refinement_iters = (config.vocoder_phase_refinement_iters if phase_refinement_iters is None
                                       else phase_refinement_iters)
        self.log_floor = config.log_floor
        self._config = config  # rebuilds the filterbank's pseudo-inverse in `reset_buffers`
        if self.magnitude_prior == "mel_pseudo_inverse":
            # Non-persistent: recomputed from the config, so checkpoints do not carry it (K x M float32).
            self.register_buffer("mel_inverse", self._mel_inverse(), persistent=False)
            self.reset_magnitude_correction()
        else:
            self.mel_inverse = None

    def _mel_inverse(self) -> torch.Tensor:
        return mel_pseudo_inverse(mel_filterbank(self._config))

    def _apply(self, fn, recurse=True):
        buffers = (self.window,) if self.mel_inverse is None else (self.window, self.mel_inverse)
        return super()._apply(keep_float32(fn, only=buffers), recurse)

    @torch.no_grad()
    def reset_magnitude_correction(self) -> None:
        """Zero the magnitude rows of the output layer: with the mel pseudo-inverse prior, the predicted magnitude
        becomes exactly the prior (the phase rows are kept). Used to start a prior vocoder from one trained without."""
        if self.magnitude_prior == "none":
            raise ValueError("reset_magnitude_correction() needs vocoder_magnitude_prior='mel_pseudo_inverse': without"
                             " a prior, zero magnitude rows would give a flat magnitude of 1.")
        self.proj_out.weight[: self.num_freq_bins].zero_()
        self.proj_out.bias[: self.num_freq_bins].zero_()

    def reset_buffers(self) -> None:
        """Recompute the non-persistent buffers, the ISTFT window and the mel pseudo-inverse (called from
        `_init_weights` after meta-device loading)."""
        with torch.no_grad():
            if self.window.is_meta:  # no storage to fill yet: materialise on CPU, `.to()` moves it with the module
                self.window = torch.hann_window(self.win_length, dtype=torch.float32)
            else:
                self.window.copy_(torch.hann_window(self.win_length, dtype=self.window.dtype).to(self.window.device))
            if self.mel_inverse is None:
                return
            if self.mel_inverse.is_meta:
                self.mel_inverse = self._mel_inverse()
            else:
                self.mel_inverse.copy_(self._mel_inverse().to(self.mel_inverse.device))

    def magnitude_and_phase(self, log_mel: torch.Tensor,
                            frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel (B, M, F) -> STFT magnitude and phase, each (B, K, F) float32 (real tensors: ONNX-exportable).

        The backbone runs in the vocoder's parameter dtype (or autocast's); its output is cast to float32 before
        the exponential and the inverse STFT. `frame_mask` (B, F): convolutions ignore padded frames."""
        prior_input = log_mel  # the prior is computed in float32 from the mel as given, before any cast
        log_mel = log_mel.to(self.embed.weight.dtype)
        mask = None if frame_mask is None else frame_mask[:, None, :].to(log_mel.dtype)
        hidden = self.embed(log_mel if mask is None else log_mel * mask)
        hidden = self.norm_in(hidden.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            hidden = block(hidden, mask)
        out = self.proj_out(self.norm_out(hidden.transpose(1, 2))).transpose(1, 2).float()  # (B, 2K, F)
        log_magnitude, phase = out.chunk(2, dim=1)
        if self.mel_inverse is not None:
            prior = mel_pseudo_inverse_magnitude(prior_input, self.mel_inverse)
            log_magnitude = log_magnitude + torch.log(prior.clamp_min(self.log_floor))
        # Clamping before exp (not after) keeps the forward finite and the gradient defined everywhere.
        magnitude = torch.exp(log_magnitude.clamp(max=self.max_log_magnitude))
        return magnitude, phase

    def forward(self, log_mel: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """log_mel (B, num_mel_bins, F) -> waveform (B, (F - 1) * hop_length), float32.

        `frame_mask` (B, F), optional: 1 for valid frames, 0 for right padding; each example then gets exactly the
        waveform it gets alone, followed by zeros."""
        return self.synthesize(log_mel, frame_mask)[0]

    def synthesize(self, log_mel: torch.Tensor,
                   frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward`'s waveform (B, (F - 1) * hop_length) plus the network's magnitude and phase (B, K, F) it was made
        from (before any phase refinement), in one pass: training scores all three."""
        if log_mel.dim() != 3:
            raise ValueError(f"`log_mel` must be (batch, num_mel_bins, frames), got shape {tuple(log_mel.shape)}.")
        num_frames = log_mel.shape[-1]
        if num_frames < 2:
            # One frame spans no hop, so there are no samples to produce (as with Griffin-Lim); istft rejects length 0.
            empty = log_mel.new_zeros(log_mel.shape[0], 0, dtype=torch.float32)
            return empty, empty, empty
        magnitude, phase = self.magnitude_and_phase(log_mel, frame_mask)
        length = (num_frames - 1) * self.hop_length

        def to_spectrogram(waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            spec = self._masked(self.stft(waveform), frame_mask)  # padded frames stay empty
            return spec.real, spec.imag

        real, imag = self.output_spectrogram(
            magnitude, phase, lambda re, im: self.inverse_stft(torch.complex(re, im), length, frame_mask),
            to_spectrogram)
        return self.inverse_stft(torch.complex(real, imag), length, frame_mask), magnitude, phase

    def output_spectrogram(self, magnitude: torch.Tensor, phase: torch.Tensor, to_waveform,
                           to_spectrogram) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's magnitude and phase (B, K, F) -> the STFT the output is synthesised from, as (real, imag):
        the network's own, or after `phase_refinement_iters` Griffin-Lim projections run with the caller's inverse
        and forward STFT (`griffin_lim_projections`; torch's here, convolutions in the ONNX export)."""
        # cos/sin of an unconstrained angle: every value is a valid phase, with no wrap-around discontinuity to learn.
        real, imag = magnitude * torch.cos(phase), magnitude * torch.sin(phase)
        if self.phase_refinement_iters == 0:
            return real, imag
        return griffin_lim_projections(magnitude, real, imag, self.phase_refinement_iters, GRIFFIN_LIM_MOMENTUM,
                                       to_waveform, to_spectrogram)

    @staticmethod
    def _masked(spec: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        return spec if frame_mask is None else spec * frame_mask[:, None, :].to(spec.real.dtype)

    def stft(self, waveform: torch.Tensor) -> torch.Tensor:
        """Centred STFT with zero padding: (B, T) -> (B, K, T // hop_length + 1) complex64. Zero (not reflect) padding
        makes a right-padded example's valid frames the same as alone, where the padding zeros stand for silence."""
        return torch.stft(waveform.float(), self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window.float(), center=True, pad_mode="constant", return_complex=True)

    def inverse_stft(self, spec: torch.Tensor, length: int, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, F) complex -> (B, length) float32, like torch.istft(center=True). With a `frame_mask` (B, F), each
        example is synthesised from its own valid frames only, as alone, and zero past its last valid frame."""
        spec = self._masked(spec, frame_mask)  # padded frames add nothing to the overlap-add
        audio = torch.istft(spec, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                            window=self.window, center=True, length=length)
        if frame_mask is None:
            return audio
        # torch.istft divides by the squared-window overlap-add of all F frames; alone, an example divides by that of
        # its own frames only. Swap the one for the other, and zero what lies past its last valid frame.
        valid_samples = (frame_mask.long().sum(-1) - 1) * self.hop_length
        inside = torch.arange(length, device=audio.device)[None, :] < valid_samples[:, None]
        all_frames = self.window_envelope(torch.ones_like(frame_mask[:1]))
        own_frames = self.window_envelope(frame_mask)
        return torch.where(inside, audio * all_frames / torch.where(inside, own_frames, 1.0), 0.0)

    def window_envelope(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """Overlap-add of the squared synthesis window over the frames where `frame_mask` (B, F) is 1, on the
        centred output grid of torch.istft: (B, (F - 1) * hop_length) float32."""
        window = self.window.float()
        left = (self.n_fft - window.shape[0]) // 2  # torch.istft centres a shorter window inside n_fft samples
        window = F.pad(window, (left, self.n_fft - window.shape[0] - left))
        envelope = F.conv_transpose1d(frame_mask[:, None, :].float(), (window**2)[None, None, :],
                                      stride=self.hop_length)[:, 0]
        start = self.n_fft // 2
        return envelope[:, start : start + (frame_mask.shape[-1] - 1) * self.hop_length]


__all__ = ["GRIFFIN_LIM_MOMENTUM", "PQVAEVocoder", "griffin_lim_projections", "mel_filterbank", "mel_pseudo_inverse",
           "mel_pseudo_inverse_magnitude"]
