# Copyright 2026 The pqvae-hf authors. Apache-2.0.
"""Discriminators and adversarial losses for training the neural vocoder and the tokenizer's decoder (training only;
not in the Hub payload).

- `MultiPeriodDiscriminator` (HiFi-GAN, Kong et al. 2020): the waveform folded into (T / p, p) for periods p, so each
  2-D conv stack sees every p-th sample: periodic (pitch) structure that spectral losses miss.
- `MultiResolutionDiscriminator` (UnivNet / Vocos): 2-D convs over log-magnitude spectrograms at several STFT
  resolutions: over-smoothed or noisy spectra in time and frequency.
- `MelDiscriminator`: the same 2-D conv stack on a log-mel, for the tokenizer's decoder (`packed_training tokenizer
  --mel_adversarial_weight`).
- Least-squares GAN losses and feature matching (L1 between the discriminators' hidden activations of real and
  generated audio), as in HiFi-GAN.

Every multi-discriminator returns `(scores, features)`: lists with one entry per sub-discriminator, `scores[i]` a
tensor of logits and `features[i]` the list of its hidden activations; a single one (`MelDiscriminator`) returns one
such entry, so the losses take it wrapped in one-element lists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

LEAKY_SLOPE = 0.1


class PeriodDiscriminator(nn.Module):
    """Waveform (B, T) -> folded (B, 1, T / p, p) -> 2-D conv stack with (kernel 5, stride 3) along time."""

    def __init__(self, period: int, channels: tuple[int, ...] = (32, 128, 256, 512)):
        super().__init__()
        self.period = period
        layers, previous = [], 1
        for i, width in enumerate(channels):
            stride = 3 if i < len(channels) - 1 else 1
            layers.append(weight_norm(nn.Conv2d(previous, width, (5, 1), (stride, 1), padding=(2, 0))))
            previous = width
        self.layers = nn.ModuleList(layers)
        self.proj_out = weight_norm(nn.Conv2d(previous, 1, (3, 1), padding=(1, 0)))

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, length = waveform.shape
        if length % self.period:
            waveform = F.pad(waveform, (0, self.period - length % self.period), mode="reflect")
        hidden = waveform.view(batch, 1, -1, self.period)
        features = []
        for layer in self.layers:
            hidden = F.leaky_relu(layer(hidden), LEAKY_SLOPE)
            features.append(hidden)
        score = self.proj_out(hidden)
        features.append(score)
        return score.flatten(1), features


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods: tuple[int, ...] = (2, 3, 5, 7, 11)):
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p) for p in periods)

    def forward(self, waveform: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        outputs = [d(waveform) for d in self.discriminators]
        return [o[0] for o in outputs], [o[1] for o in outputs]


class SpectrogramConvStack(nn.Module):
    """Image (B, 1, K, F) -> 2-D conv stack strided along its first (frequency) axis -> (scores, features)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.layers = nn.ModuleList([
            weight_norm(nn.Conv2d(1, channels, (7, 5), padding=(3, 2))),
            weight_norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
            weight_norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
            weight_norm(nn.Conv2d(channels, channels, (5, 3), (2, 1), padding=(2, 1))),
            weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
        ])
        self.proj_out = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def score_image(self, hidden: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = []
        for layer in self.layers:
            hidden = F.leaky_relu(layer(hidden), LEAKY_SLOPE)
            features.append(hidden)
        score = self.proj_out(hidden)
        features.append(score)
        return score.flatten(1), features


class SpectrogramDiscriminator(SpectrogramConvStack):
    """Waveform (B, T) -> log-magnitude STFT (B, 1, K, F) -> 2-D conv stack strided along frequency."""

    def __init__(self, n_fft: int, hop_length: int, channels: int = 32):
        super().__init__(channels)
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(waveform.float(), self.n_fft, self.hop_length, window=self.window, return_complex=True)
        return self.score_image(torch.log(spec.abs().clamp_min(1e-5))[:, None])


class MelDiscriminator(SpectrogramConvStack):
    """Log-mel (B, M, F) -> the same 2-D conv stack: judges the tokenizer's decoded mel against the true one.

    A decoder trained with an L1 loss predicts a flattened mel (the conditional median of what 16 bits per frame
    leave open); a discriminator on the mel itself penalises that flatness directly, as a GAN post-filter does in
    statistical speech synthesis. With a `frame_mask` (B, F), padded frames are set to the mel's floor in real and
    generated input alike, so padding tells the two apart in no way."""

    def __init__(self, floor: float, channels: int = 32):
        super().__init__(channels)
        self.floor = floor

    def forward(self, log_mel: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        log_mel = log_mel.float()
        if frame_mask is not None:
            log_mel = torch.where(frame_mask[:, None, :].bool(), log_mel, self.floor)
        return self.score_image(log_mel[:, None])


class MultiResolutionDiscriminator(nn.Module):
    def __init__(self, resolutions: tuple[tuple[int, int], ...] = ((512, 128), (1024, 256), (2048, 512))):
        super().__init__()
        self.discriminators = nn.ModuleList(SpectrogramDiscriminator(n, h) for n, h in resolutions)

    def forward(self, waveform: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        outputs = [d(waveform) for d in self.discriminators]
        return [o[0] for o in outputs], [o[1] for o in outputs]


def discriminator_loss(real_scores: list[torch.Tensor], fake_scores: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares GAN: real towards 1, generated towards 0, summed over sub-discriminators."""
    return sum(((1 - r) ** 2).mean() + (f**2).mean() for r, f in zip(real_scores, fake_scores))


def generator_adversarial_loss(fake_scores: list[torch.Tensor]) -> torch.Tensor:
    return sum(((1 - f) ** 2).mean() for f in fake_scores)


def feature_matching_loss(real_features: list[list[torch.Tensor]],
                          fake_features: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mean L1 between hidden activations of real (detached) and generated audio, summed over sub-discriminators."""
    total = 0.0
    for real_layers, fake_layers in zip(real_features, fake_features):
        total = total + sum((r.detach() - f).abs().mean() for r, f in zip(real_layers, fake_layers)) / len(real_layers)
    return total
