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


def test_complex_stft_loss_values_and_polarity_invariance():
    from pqvae_hf.vocoder_training import ComplexSTFTLoss

    config = small_config()
    signal = sine_sweeps(8192, batch=2)
    loss = ComplexSTFTLoss(config)
    complex_l1, time_l1 = loss(signal, signal)
    assert float(complex_l1) == pytest.approx(0.0, abs=1e-6)
    assert float(time_l1) == pytest.approx(0.0, abs=1e-6)
    # Half the target: every STFT value and sample is off by half of the target's -> exactly 0.5 (linear, relative).
    complex_l1, time_l1 = loss(0.5 * signal, signal)
    assert float(complex_l1) == pytest.approx(0.5, abs=1e-4)
    assert float(time_l1) == pytest.approx(0.5, abs=1e-4)
    # The same at 10x the level: the losses are relative.
    assert float(loss(5.0 * signal, 10.0 * signal)[0]) == pytest.approx(0.5, abs=1e-4)
    # Silence vs target -> 1; polarity flip -> 0 when invariant, 2 when not.
    assert float(loss(torch.zeros_like(signal), signal)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(loss(-signal, signal)[0]) == pytest.approx(0.0, abs=1e-6)
    strict = ComplexSTFTLoss(config, polarity_invariant=False)
    complex_l1, time_l1 = strict(-signal, signal)
    assert float(complex_l1) == pytest.approx(2.0, abs=1e-4)
    assert float(time_l1) == pytest.approx(2.0, abs=1e-4)
    # Phase matters: a 90-degree-shifted sine has nearly the same magnitudes (only the signal edges differ), so the
    # magnitude-only spectral convergence stays small, but the complex L1 is ~2 (measured 1.99; 0.17 for the SC).
    t = torch.arange(8192) / config.sampling_rate
    sine, cosine = torch.sin(2 * math.pi * 500 * t)[None], torch.cos(2 * math.pi * 500 * t)[None]
    assert float(loss(cosine, sine)[0]) > 1.8
    assert float(MultiResolutionSTFTLoss()(cosine, sine)[0]) < 0.2
    # Batch-level normalisation: an all-silent example next to a loud one does not blow the loss up.
    batch = torch.stack([signal[0], torch.zeros_like(signal[0])])
    noisy = batch + 1e-3 * torch.randn_like(batch)
    assert float(loss(noisy, batch)[0]) < 0.1


def test_vocoder_loss_adds_phase_terms_only_when_weighted():
    torch.manual_seed(0)
    config = small_config()
    vocoder = PQVAEVocoder(config)
    target = sine_sweeps(4096, batch=2)
    plain = VocoderLoss(config)
    log_mel = plain.front_end(target)
    prediction = vocoder(log_mel)
    base = plain(prediction, log_mel, target)
    assert "complex_stft_l1" not in base
    weighted = VocoderLoss(config, complex_stft_weight=3.0, time_weight=2.0)(prediction, log_mel, target)
    expected = base["loss"] + 3.0 * weighted["complex_stft_l1"] + 2.0 * weighted["time_l1"]
    torch.testing.assert_close(weighted["loss"], expected)
    assert 0.5 < float(weighted["complex_stft_l1"]) < 2.5  # an untrained vocoder's phase is unrelated to the target
    weighted["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vocoder.parameters())


def test_synthesize_matches_forward_and_returns_the_phase():
    torch.manual_seed(0)
    config = small_config()
    vocoder = PQVAEVocoder(config).eval()
    log_mel = torch.randn(2, config.num_mel_bins, 20) - 3.0
    with torch.no_grad():
        waveform, magnitude, phase = vocoder.synthesize(log_mel)
        torch.testing.assert_close(waveform, vocoder(log_mel), atol=0, rtol=0)
        torch.testing.assert_close(magnitude, vocoder.magnitude_and_phase(log_mel)[0], atol=0, rtol=0)
        torch.testing.assert_close(phase, vocoder.magnitude_and_phase(log_mel)[1], atol=0, rtol=0)
    assert phase.shape == (2, config.n_fft // 2 + 1, 20)


def test_phase_derivative_loss_is_zero_for_the_true_phase_and_polarity_invariant():
    from pqvae_hf.vocoder_training import PhaseDerivativeLoss, anti_wrap

    assert float(anti_wrap(torch.tensor(2 * math.pi + 0.25))) == pytest.approx(0.25, abs=1e-6)
    assert float(anti_wrap(torch.tensor(-0.5))) == pytest.approx(0.5, abs=1e-6)
    config = small_config()
    loss = PhaseDerivativeLoss(config)
    target = sine_sweeps(8192, batch=2)
    spec = torch.stft(target, config.n_fft, config.hop_length, config.win_length, torch.hann_window(config.win_length),
                      center=True, pad_mode="constant", return_complex=True)
    true_phase = spec.angle()
    for phase in (true_phase, true_phase + math.pi, true_phase - 7.0):  # any constant offset: same derivatives
        frequency, delay = loss(phase, target)
        assert float(frequency) == pytest.approx(0.0, abs=1e-4)
        assert float(delay) == pytest.approx(0.0, abs=1e-4)
    # Random phases: errors near pi / 2 (the mean of |U(-pi, pi)|).
    torch.manual_seed(0)
    frequency, delay = loss(torch.rand_like(true_phase) * 2 * math.pi, target)
    assert 1.3 < float(frequency) < 1.85
    assert 1.3 < float(delay) < 1.85
    # With the loss weighted in, VocoderLoss adds exactly phase_weight * (frequency + delay).
    vocoder = PQVAEVocoder(config)
    plain = VocoderLoss(config)
    log_mel = plain.front_end(target)
    prediction, magnitude, phase = vocoder.synthesize(log_mel)
    weighted = VocoderLoss(config, phase_weight=2.0)(prediction, log_mel, target, phase)
    base = plain(prediction, log_mel, target)
    expected = base["loss"] + 2.0 * (weighted["inst_freq_error"] + weighted["group_delay_error"])
    torch.testing.assert_close(weighted["loss"], expected)
    with pytest.raises(ValueError, match="phase"):
        VocoderLoss(config, phase_weight=1.0)(prediction, log_mel, target)


def test_output_phase_errors_are_polarity_and_level_invariant_and_trainable():
    """`output_errors` scores the phase of a waveform's own STFT: 0 for the target at any sign and level, ~1 for
    unrelated noise, and its gradient is finite even for a silent output (no angle() at zero magnitude)."""
    from pqvae_hf.vocoder_training import PhaseDerivativeLoss

    config = small_config()
    loss = PhaseDerivativeLoss(config)
    target = sine_sweeps(8192, batch=2)
    for prediction in (target, -target, 3.0 * target):
        frequency, delay = loss.output_errors(prediction, target)
        assert float(frequency) < 1e-3 and float(delay) < 1e-3
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(0)) * 0.1
    frequency, delay = loss.output_errors(noise, target)
    assert 0.7 < float(frequency) < 1.5 and 0.7 < float(delay) < 1.5  # chord distances lie in [0, 2]
    silent = torch.zeros_like(target, requires_grad=True)
    sum(loss.output_errors(silent, target)).backward()
    assert torch.isfinite(silent.grad).all()
    # A delayed copy (2.5 ms) has nearly the right instantaneous frequency (the sweeps move a little) but the wrong
    # group delay.
    delayed = torch.roll(target, 40, dims=-1)
    frequency, delay = loss.output_errors(delayed, target)
    assert float(delay) > 1.5 * float(frequency) and float(delay) > 0.15


# --------------------------------------------------------------------------------------------------------------------
# Magnitude prior: the network corrects the mel's pseudo-inverse magnitude instead of predicting it whole
# --------------------------------------------------------------------------------------------------------------------


def test_magnitude_prior_with_zero_correction_is_griffin_lims_magnitude():
    from pqvae_hf.modeling.modeling_pqvae import GriffinLim

    config = small_config(vocoder_magnitude_prior="mel_pseudo_inverse")
    front_end = LogMelSpectrogram(config)
    vocoder = PQVAEVocoder(config).eval()
    log_mel = front_end(sine_sweeps(8000, batch=2))
    with torch.no_grad():
        magnitude, _ = vocoder.magnitude_and_phase(log_mel)
    expected = GriffinLim(config, front_end).magnitude(log_mel).clamp_min(config.log_floor)
    torch.testing.assert_close(magnitude, expected, atol=1e-5, rtol=1e-4)
    # bf16 autocast (Trainer --bf16) leaves the prior in float32: the same numbers, not a bf16 rounding of them.
    from pqvae_hf.modeling.vocoder_pqvae import mel_pseudo_inverse_magnitude

    plain = mel_pseudo_inverse_magnitude(log_mel, vocoder.mel_inverse)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = mel_pseudo_inverse_magnitude(log_mel, vocoder.mel_inverse)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, plain, atol=0, rtol=0)
    # The pseudo-inverse is a real estimate: its mel is close to the input mel where the signal has energy.
    voiced = log_mel > log_mel.amax() - 6.0
    remelled = torch.log((front_end.mel_filters @ magnitude).clamp_min(config.log_floor))
    assert (remelled - log_mel)[voiced].abs().mean() < 0.05
    # A trained correction moves it: one gradient step changes the magnitude, not only the phase.
    vocoder.train()
    loss = vocoder.magnitude_and_phase(log_mel)[0].log().mean()
    loss.backward()
    assert vocoder.proj_out.weight.grad[: vocoder.num_freq_bins].abs().sum() > 0


def test_reset_magnitude_correction_converts_a_plain_vocoder_and_refuses_without_prior():
    config = small_config()
    plain = PQVAEVocoder(config)
    with pytest.raises(ValueError, match="vocoder_magnitude_prior"):
        plain.reset_magnitude_correction()
    with_prior = PQVAEVocoder(small_config(vocoder_magnitude_prior="mel_pseudo_inverse"))
    with_prior.load_state_dict(plain.state_dict())  # same weights and shapes: the prior adds no parameter
    assert "mel_inverse" not in with_prior.state_dict()
    with_prior.reset_magnitude_correction()
    log_mel = torch.randn(1, config.num_mel_bins, 9) - 3.0
    with torch.no_grad():
        _, plain_phase = plain.eval().magnitude_and_phase(log_mel)
        _, kept_phase = with_prior.eval().magnitude_and_phase(log_mel)
    torch.testing.assert_close(kept_phase, plain_phase)  # the phase head is kept


def test_magnitude_prior_survives_save_load_meta_device_and_half_precision(tmp_path):
    from pqvae_hf.modeling.modeling_pqvae import PQVAEModel

    config = PQVAEConfig(vocoder="neural", vocoder_magnitude_prior="mel_pseudo_inverse", vocoder_hidden_size=32,
                         vocoder_intermediate_size=64, vocoder_num_layers=2, num_encoder_layers=1, num_decoder_layers=1)
    model = PQVAEModel(config).eval()
    rows = model.vocoder.num_freq_bins
    # A fresh model starts from the prior exactly (post_init must not re-draw the magnitude rows) ...
    assert model.vocoder.proj_out.weight[:rows].abs().sum() == 0
    with torch.no_grad():  # ... and a trained one keeps its correction through save / load.
        model.vocoder.proj_out.weight[:rows].normal_(std=0.01)
    model.save_pretrained(tmp_path)
    loaded = PQVAEModel.from_pretrained(tmp_path).eval()
    assert loaded.config.vocoder_magnitude_prior == "mel_pseudo_inverse"
    torch.testing.assert_close(loaded.vocoder.mel_inverse, model.vocoder.mel_inverse, atol=0, rtol=0)
    log_mel = model.front_end(sine_sweeps(4000))
    with torch.no_grad():
        torch.testing.assert_close(loaded.vocoder(log_mel), model.vocoder(log_mel), atol=1e-6, rtol=0)
        half = loaded.to(torch.bfloat16)
        assert half.vocoder.mel_inverse.dtype == torch.float32
        assert torch.isfinite(half.vocoder(log_mel)).all()
    with torch.device("meta"):
        meta = PQVAEVocoder(config)
    meta.reset_buffers()
    torch.testing.assert_close(meta.mel_inverse, model.vocoder.mel_inverse, atol=0, rtol=0)


def _inconsistency(vocoder: PQVAEVocoder, log_mel: torch.Tensor) -> float:
    """Relative distance between the network's predicted magnitude and the magnitude of the waveform it yields."""
    with torch.no_grad():
        waveform, magnitude, _ = vocoder.synthesize(log_mel)
        return float((vocoder.stft(waveform).abs() - magnitude).norm() / magnitude.norm())


def test_phase_refinement_makes_the_output_consistent_with_the_predicted_magnitude():
    """An untrained network's magnitude and phase are not the STFT of any waveform; each Griffin-Lim projection moves
    the output's magnitude towards the predicted one."""
    torch.manual_seed(0)
    config = small_config()
    vocoder = PQVAEVocoder(config).eval()
    log_mel = LogMelSpectrogram(config)(sine_sweeps(8192, batch=2))
    errors = {}
    for iters in (0, 4, 16):
        vocoder.phase_refinement_iters = iters
        errors[iters] = _inconsistency(vocoder, log_mel)
    assert errors[0] > 0.3, errors  # far from consistent before refinement
    assert errors[16] < errors[4] < 0.8 * errors[0], errors


def test_phase_refinement_keeps_padded_examples_as_alone_and_passes_gradients():
    torch.manual_seed(0)
    config = small_config(vocoder_phase_refinement_iters=4)
    vocoder = PQVAEVocoder(config).eval()
    log_mel = torch.randn(2, config.num_mel_bins, 40) - 3.0
    frame_mask = torch.ones(2, 40)
    frame_mask[1, 25:] = 0
    with torch.no_grad():
        batched = vocoder(log_mel, frame_mask)
        alone = vocoder(log_mel[1:, :, :25])
    valid = 24 * config.hop_length
    assert alone.abs().max() > 1e-3
    torch.testing.assert_close(batched[1, :valid], alone[0], atol=1e-5, rtol=1e-4)
    assert batched[1, valid:].abs().max() == 0
    vocoder.train()
    vocoder(log_mel, frame_mask).pow(2).mean().backward()
    for name, param in vocoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_config_rejects_negative_phase_refinement():
    with pytest.raises(ValueError, match="vocoder_phase_refinement_iters"):
        small_config(vocoder_phase_refinement_iters=-1)


def _mel_vocoder_model(**kwargs):
    from pqvae_hf.modeling.modeling_pqvae import PQVAEModel

    fields = dict(vocoder="neural", mel_vocoder="neural", mel_vocoder_magnitude_prior="mel_pseudo_inverse",
                  mel_vocoder_phase_refinement_iters=4, vocoder_hidden_size=32, vocoder_intermediate_size=64,
                  vocoder_num_layers=2, num_encoder_layers=1, num_decoder_layers=1)
    fields.update(kwargs)
    return PQVAEModel(PQVAEConfig(**fields)).eval()


def test_mel_vocoder_renders_true_mels_and_decode_keeps_the_token_vocoder(tmp_path):
    from pqvae_hf.modeling.modeling_pqvae import PQVAEModel

    model = _mel_vocoder_model()
    # Its own settings, not the token vocoder's; a fresh one starts from the prior exactly.
    assert (model.mel_vocoder.magnitude_prior, model.mel_vocoder.phase_refinement_iters) == ("mel_pseudo_inverse", 4)
    assert (model.vocoder.magnitude_prior, model.vocoder.phase_refinement_iters) == ("none", 0)
    assert model.mel_vocoder.proj_out.weight[: model.mel_vocoder.num_freq_bins].abs().sum() == 0
    assert model.true_mel_vocoder is model.mel_vocoder
    audio = sine_sweeps(4000, batch=2)
    log_mel = model.front_end(audio)
    with torch.no_grad():
        rendered = model.vocode_mel(log_mel)
        torch.testing.assert_close(rendered, model.mel_vocoder(log_mel))
        assert float((rendered - model.vocoder(log_mel)).abs().max()) > 1e-3  # a different vocoder
        codes = model.encode(audio[:, None]).audio_codes
        decoded = model.decode(codes).audio_values[:, 0]
        torch.testing.assert_close(decoded, model.vocoder(model.postfilter_mel(model.decode(codes).mel)))
        # Padded true mels give what they give alone.
        mask = torch.ones(2, log_mel.shape[-1], dtype=torch.long)
        mask[1, 9:] = 0
        padded = model.vocode_mel(log_mel, mask)
        torch.testing.assert_close(padded[1, : 8 * model.config.hop_length],
                                   model.vocode_mel(log_mel[1:, :, :9])[0], atol=1e-5, rtol=0)
    # Both vocoders' weights survive save / load, and the parameter count grows by one vocoder.
    with torch.no_grad():
        model.mel_vocoder.proj_out.weight.normal_(std=0.01)
    model.save_pretrained(tmp_path)
    loaded = PQVAEModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.vocode_mel(log_mel), model.vocode_mel(log_mel), atol=1e-6, rtol=0)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.mel_vocoder) == count(model.vocoder)
    assert count(model) == count(_mel_vocoder_model(mel_vocoder="none")) + count(model.vocoder)


def test_without_mel_vocoder_true_mels_use_the_vocoder_and_bad_input_is_refused():
    model = _mel_vocoder_model(mel_vocoder="none")
    assert model.mel_vocoder is None and model.true_mel_vocoder is model.vocoder
    log_mel = model.front_end(sine_sweeps(2000))
    with torch.no_grad():
        torch.testing.assert_close(model.vocode_mel(log_mel), model.vocoder(log_mel))
    with pytest.raises(ValueError, match="num_mel_bins=80"):
        model.vocode_mel(log_mel[:, :40])
    with pytest.raises(ValueError, match="no vocoder"):
        _mel_vocoder_model(mel_vocoder="none", vocoder="none").vocode_mel(log_mel)
    with pytest.raises(ValueError, match="`mel_vocoder` must be one of"):
        PQVAEConfig(mel_vocoder="griffin_lim")
    with pytest.raises(ValueError, match="mel_vocoder_phase_refinement_iters"):
        PQVAEConfig(mel_vocoder_phase_refinement_iters=-1)
    with pytest.raises(ValueError, match="mel_vocoder_magnitude_prior"):
        PQVAEConfig(mel_vocoder_magnitude_prior="mel")
