# Copyright 2026 The pqvae-hf authors. Apache-2.0.
"""Neural vocoder: output length, batch invariance, gradient flow, buffer re-creation and a short training run."""

import math

import pytest
import torch

from pqvae_hf.modeling.configuration_pqvae import PQVAEConfig
from pqvae_hf.modeling.modeling_pqvae import LogMelSpectrogram
from pqvae_hf.modeling.vocoder_pqvae import PQVAEVocoder
from pqvae_hf.vocoder_training import MultiResolutionSTFTLoss, VocoderLoss


def small_config(**kwargs) -> PQVAEConfig:
    defaults = dict(vocoder_hidden_size=32, vocoder_intermediate_size=64, vocoder_num_layers=2)
    defaults.update(kwargs)
    return PQVAEConfig(**defaults)


def sine_sweeps(num_samples: int, sampling_rate: int = 16_000, batch: int = 1) -> torch.Tensor:
    """Sum of two exponential sweeps plus a steady tone, (batch, num_samples), peak below 1."""
    t = torch.arange(num_samples, dtype=torch.float64) / sampling_rate
    duration = num_samples / sampling_rate
    signals = []
    for b in range(batch):
        wave = torch.zeros_like(t)
        for f0, f1, amp in ((100.0 + 20 * b, 2000.0, 0.3), (3000.0, 400.0, 0.2)):
            k = math.log(f1 / f0) / duration
            wave += amp * torch.sin(2 * math.pi * f0 * (torch.exp(k * t) - 1) / k)
        wave += 0.1 * torch.sin(2 * math.pi * 440.0 * t)
        signals.append(wave)
    return torch.stack(signals).float()


@pytest.mark.parametrize("num_frames", [2, 3, 17, 64, 101])
def test_output_length_is_frames_minus_one_hops(num_frames):
    config = small_config()
    vocoder = PQVAEVocoder(config).eval()
    with torch.no_grad():
        audio = vocoder(torch.randn(2, config.num_mel_bins, num_frames) - 4.0)
    assert audio.shape == (2, (num_frames - 1) * config.hop_length)
    assert audio.dtype == torch.float32
    assert torch.isfinite(audio).all()


def test_round_trip_length_matches_front_end():
    """waveform -> log-mel -> vocoder gives T // hop * hop samples, the same as the Griffin-Lim vocoder."""
    config = small_config()
    front_end = LogMelSpectrogram(config)
    vocoder = PQVAEVocoder(config).eval()
    for num_samples in (4000, 4096, 16_000, 16_001):
        log_mel = front_end(sine_sweeps(num_samples))
        assert log_mel.shape[-1] == config.num_frames(num_samples)
        with torch.no_grad():
            audio = vocoder(log_mel)
        assert audio.shape[-1] == (num_samples // config.hop_length) * config.hop_length


def test_single_frame_gives_empty_waveform():
    config = small_config()
    audio = PQVAEVocoder(config)(torch.zeros(3, config.num_mel_bins, 1))
    assert audio.shape == (3, 0)


def test_rejects_wrong_rank():
    config = small_config()
    with pytest.raises(ValueError, match="num_mel_bins"):
        PQVAEVocoder(config)(torch.zeros(config.num_mel_bins, 10))


def test_batch_matches_items_alone():
    torch.manual_seed(0)
    config = PQVAEConfig()  # the default (shipped) size
    vocoder = PQVAEVocoder(config).eval()
    log_mel = torch.randn(2, config.num_mel_bins, 40) - 3.0
    with torch.no_grad():
        batched = vocoder(log_mel)
        alone = torch.cat([vocoder(log_mel[i : i + 1]) for i in range(2)])
    assert batched.abs().max() > 1e-3  # a non-trivial output, so the comparison means something
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_default_size_is_a_few_million_parameters():
    num_params = sum(p.numel() for p in PQVAEVocoder(PQVAEConfig()).parameters())
    assert 2_000_000 <= num_params <= 4_000_000


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    config = small_config()
    vocoder = PQVAEVocoder(config)
    front_end = LogMelSpectrogram(config)
    target = sine_sweeps(4096, batch=2)
    log_mel = front_end(target)
    loss = VocoderLoss(config)(vocoder(log_mel), log_mel, target[:, : (log_mel.shape[-1] - 1) * config.hop_length])
    loss["loss"].backward()
    for name, param in vocoder.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_window_is_not_saved_and_reset_buffers_restores_it():
    config = small_config()
    vocoder = PQVAEVocoder(config)
    assert "window" not in vocoder.state_dict()
    expected = torch.hann_window(config.win_length)
    vocoder.window.zero_()
    vocoder.reset_buffers()
    torch.testing.assert_close(vocoder.window, expected, atol=0, rtol=0)


def test_reset_buffers_after_meta_device_materialisation():
    """What transformers does on load: build on meta, allocate empty storage, then re-create buffers."""
    config = small_config()
    with torch.device("meta"):
        vocoder = PQVAEVocoder(config)
    vocoder.to_empty(device="cpu")
    vocoder.reset_buffers()
    torch.testing.assert_close(vocoder.window, torch.hann_window(config.win_length), atol=0, rtol=0)
    # Loading a state dict then gives exactly the output of the module the weights came from.
    source = PQVAEVocoder(config).eval()
    vocoder.load_state_dict(source.state_dict())
    log_mel = torch.randn(1, config.num_mel_bins, 12) - 3.0
    with torch.no_grad():
        torch.testing.assert_close(vocoder.eval()(log_mel), source(log_mel), atol=1e-6, rtol=0)


def test_reset_buffers_on_meta_module_gives_a_real_window():
    config = small_config()
    with torch.device("meta"):
        vocoder = PQVAEVocoder(config)
    vocoder.reset_buffers()
    assert not vocoder.window.is_meta
    assert "window" not in vocoder.state_dict()
    torch.testing.assert_close(vocoder.window, torch.hann_window(config.win_length), atol=0, rtol=0)


def test_stft_loss_is_zero_for_identical_signals_and_positive_otherwise():
    loss = MultiResolutionSTFTLoss()
    signal = sine_sweeps(8000)
    convergence, log_l1 = loss(signal, signal)
    assert float(convergence) == pytest.approx(0.0, abs=1e-6)
    assert float(log_l1) == pytest.approx(0.0, abs=1e-6)
    convergence, log_l1 = loss(0.5 * signal, signal)
    assert float(convergence) == pytest.approx(0.5, abs=1e-3)  # ||S - S/2|| / ||S||
    assert float(log_l1) > 0.1


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    config = small_config()
    vocoder = PQVAEVocoder(config)
    criterion = VocoderLoss(config)
    target = sine_sweeps(8192, batch=2)  # 33 frames, a multiple of the hop: nothing is cut
    with torch.no_grad():
        log_mel = criterion.front_end(target)
    optimizer = torch.optim.AdamW(vocoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss = criterion(vocoder(log_mel), log_mel, target)
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
        losses.append({k: float(v) for k, v in loss.items()})
    first, last = losses[0], losses[-1]
    # Measured: the total and the mel L1 fall by ~38 % in 120 steps, the multi-resolution STFT loss by ~37 %.
    assert last["loss"] < 0.7 * first["loss"]
    assert last["mel_l1"] < 0.7 * first["mel_l1"]
    assert last["mr_stft"] < 0.8 * first["mr_stft"]
    assert all(math.isfinite(entry["loss"]) for entry in losses)
