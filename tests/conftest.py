import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pqvae_hf  # noqa: E402  (registers the Auto classes)

TINY = dict(hidden_size=32, intermediate_size=64, num_encoder_layers=1, num_decoder_layers=1, codebook_dim=16,
            num_codebooks=2, codebook_size=16, n_fft=256, win_length=256, hop_length=64, num_mel_bins=20,
            sampling_rate=8000, griffin_lim_iters=4)


def tiny_config(**overrides) -> pqvae_hf.PQVAEConfig:
    return pqvae_hf.PQVAEConfig(**{**TINY, **overrides})


def chirp(seconds: float, sampling_rate: int, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a few gliding harmonics with a syllable-rate envelope plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sampling_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)))
    return (0.3 * envelope * voiced / 2 + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return pqvae_hf.PQVAEModel(tiny_config())


def warm_up(model, seconds=(1.0, 0.8, 0.6, 1.2), seed=100):
    """One training forward so k-means fits the codebooks to real latents (a fresh codebook is all near-ties)."""
    fe = pqvae_hf.PQVAEFeatureExtractor(sampling_rate=model.config.sampling_rate)
    batch = fe([chirp(s, model.config.sampling_rate, seed + i) for i, s in enumerate(seconds)],
               sampling_rate=model.config.sampling_rate, return_tensors="pt")
    model.train()
    with torch.no_grad():
        model(**batch)
    model.eval()
    return model
