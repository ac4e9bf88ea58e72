import math

import numpy as np
import pytest
import torch
from conftest import chirp, tiny_config, warm_up
from transformers import AutoModel

from pqvae_hf import PQVAEFeatureExtractor, PQVAEModel


def _features(model, seconds, seed=0):
    fe = PQVAEFeatureExtractor(sampling_rate=model.config.sampling_rate)
    audio = [chirp(s, model.config.sampling_rate, seed + i) for i, s in enumerate(seconds)]
    return audio, fe(audio, sampling_rate=model.config.sampling_rate, return_tensors="pt")


@pytest.mark.parametrize("num_samples", [1, 63, 64, 65, 1000, 8000])
def test_encode_shapes_and_frame_counts(tiny_model, num_samples):
    hop = tiny_model.config.hop_length
    out = tiny_model.eval().encode(torch.randn(2, 1, num_samples) * 0.1)
    assert out.audio_codes.shape == (2, 2, num_samples // hop + 1)
    assert out.audio_codes.dtype == torch.int64
    assert out.frame_mask.shape == (2, num_samples // hop + 1) and bool(out.frame_mask.all())
    assert int(out.audio_codes.min()) >= 0 and int(out.audio_codes.max()) < tiny_model.config.codebook_size


def test_padded_batch_gives_each_example_its_own_codes(tiny_model):
    model = warm_up(tiny_model)
    audio, batch = _features(model, [1.0, 0.37, 0.61, 0.05], seed=7)
    out = model.encode(**batch)
    hop = model.config.hop_length
    for index, example in enumerate(audio):
        valid = len(example) // hop + 1
        assert int(out.frame_mask[index].sum()) == valid
        alone = model.encode(torch.from_numpy(example)[None, None])
        assert alone.audio_codes.shape[-1] == valid
        assert torch.equal(alone.audio_codes[0], out.audio_codes[index, :, :valid])
    # Garbage in the padded region is ignored: padding_mask decides, not the caller's padding values.
    noisy = batch["input_values"] + (1 - batch["padding_mask"][:, None]) * torch.randn_like(batch["input_values"])
    assert torch.equal(model.encode(noisy, batch["padding_mask"]).audio_codes, out.audio_codes)


def test_decode_returns_mel_and_audio_matching_the_input_length(tiny_model):
    model = warm_up(tiny_model)
    _, batch = _features(model, [0.5, 0.3])
    codes = model.encode(**batch).audio_codes
    decoded = model.decode(codes, batch["padding_mask"])
    assert decoded.mel.shape == (2, model.config.num_mel_bins, codes.shape[-1])
    assert decoded.audio_values.shape == batch["input_values"].shape
    length = int(batch["padding_mask"][1].sum())
    assert float(decoded.audio_values[1, 0, length:].abs().max()) == 0.0
    assert float(decoded.audio_values[1, 0, :length].abs().max()) > 0.0
    unpadded = model.decode(codes)
    assert unpadded.audio_values.shape[-1] == (codes.shape[-1] - 1) * model.config.hop_length
    assert model.decode(codes, return_waveform=False).audio_values is None
    # codes -> composite -> codes is exact and decoding is deterministic
    assert torch.equal(model.composite_to_codes(model.codes_to_composite(codes)), codes)
    assert torch.equal(model.decode(codes, batch["padding_mask"], return_waveform=False).mel, decoded.mel)


def test_forward_losses_use_valid_frames_only(tiny_model):
    model = warm_up(tiny_model)
    _, batch = _features(model, [0.5, 0.2])
    model.eval()  # no EMA/restart side effects between the two passes
    out = model(**batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    expected = (out.reconstruction_loss + model.config.dual_decoding_weight * out.dual_reconstruction_loss
                + model.config.commitment_weight * out.commitment_loss)
    assert torch.allclose(out.loss, expected)
    # Batch statistics are training-only: in eval mode no output depends on the rest of the batch.
    assert out.codebook_usage is None and out.codebook_perplexity is None
    noisy = batch["input_values"] + (1 - batch["padding_mask"][:, None]) * torch.randn_like(batch["input_values"])
    again = model(noisy, batch["padding_mask"])
    assert torch.allclose(again.loss, out.loss)
    # A shorter example alone has the same per-frame loss sum as inside the batch.
    short = model(batch["input_values"][1:, :, : int(batch["padding_mask"][1].sum())])
    frames_short = int(out.frame_mask[1].sum())
    per_frame = (out.mel[1, :, :frames_short] - out.target_mel[1, :, :frames_short]).abs().mean()
    assert torch.allclose(short.reconstruction_loss, per_frame, atol=1e-5)


def test_training_forward_reports_batch_codebook_statistics():
    model = warm_up(PQVAEModel(tiny_config(dual_decoding_weight=1.0)))
    _, batch = _features(model, [0.5, 0.2])
    model.train()
    out = model(**batch)
    codes = out.audio_codes[0, :, : int(out.frame_mask[0].sum())].tolist() + out.audio_codes[1, :, : int(
        out.frame_mask[1].sum())].tolist()
    for index in range(2):  # recomputed from the returned codes of the valid frames
        valid = codes[index] + codes[2 + index]
        counts = np.bincount(valid, minlength=16)
        probs = counts[counts > 0] / counts.sum()
        assert float(out.codebook_usage[index]) == pytest.approx((counts > 0).mean())
        assert float(out.codebook_perplexity[index]) == pytest.approx(math.exp(-(probs * np.log(probs)).sum()), rel=1e-5)


def test_hidden_states_are_per_frame_and_carry_gradients():
    model = warm_up(PQVAEModel(tiny_config(num_encoder_layers=2, num_decoder_layers=3)))
    _, batch = _features(model, [0.5, 0.2])
    out = model(**batch, output_hidden_states=True)
    frames = out.frame_mask.shape[1]
    assert len(out.encoder_hidden_states) == 3 and len(out.decoder_hidden_states) == 4
    for hidden in out.encoder_hidden_states + out.decoder_hidden_states:
        assert hidden.shape == (2, frames, model.config.hidden_size)
    # The last decoder hidden state is what the decoder's output head maps to the returned mel (the z_q half).
    head = model.decoder.proj_out(model.decoder.norm_out(out.decoder_hidden_states[-1]))
    torch.testing.assert_close(head.transpose(1, 2), out.mel)
    out.encoder_hidden_states[0].retain_grad()
    out.loss.backward()
    assert float(out.encoder_hidden_states[0].grad.abs().sum()) > 0
    assert model(**batch).encoder_hidden_states is None  # off by default (config.output_hidden_states)


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(dual_decoding_weight=0.0, commitment_weight=0.0)))
    _, batch = _features(model, [0.5, 0.4])
    model.eval()
    out = model(**batch)
    assert float(out.dual_reconstruction_loss) == 0.0
    out.loss.backward()  # only the reconstruction from z_q: the encoder learns through the straight-through path
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert float(sum(g.abs().sum() for g in grads)) > 0


def test_dual_decoding_changes_the_gradient_and_vanishes_at_weight_zero():
    torch.manual_seed(0)
    base = warm_up(PQVAEModel(tiny_config(dual_decoding_weight=0.0)))
    _, batch = _features(base, [0.5, 0.4])
    gradients = {}
    for weight in (0.0, 1.0):
        model = PQVAEModel(tiny_config(dual_decoding_weight=weight))
        model.load_state_dict(base.state_dict())
        model.eval()
        out = model(**batch)
        out.loss.backward()
        gradients[weight] = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
        if weight == 0.0:
            assert float(out.dual_reconstruction_loss) == 0.0
            loss_without = out.loss.detach()
        else:
            assert float(out.dual_reconstruction_loss) > 0.0
            assert torch.allclose(out.loss.detach() - out.dual_reconstruction_loss, loss_without, atol=1e-5)
    assert not torch.allclose(gradients[0.0], gradients[1.0])


@pytest.mark.parametrize("quantizer", [dict(quantizer_type="vq", num_codebooks=1, codebook_size=64),
                                       dict(quantizer_type="rvq", num_codebooks=3, codebook_size=8),
                                       dict(use_cosine_codebook=True), dict(use_ema=False, kmeans_init=False),
                                       dict(entropy_loss_weight=0.2, subspace_rotation="opq"),
                                       dict(quantizer_type="rvq", num_codebooks=2, entropy_loss_weight=0.2)])
def test_quantizer_variants_train_and_round_trip(quantizer):
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(**quantizer)))
    _, batch = _features(model, [0.3, 0.2])
    out = model.train()(**batch)
    out.loss.backward()
    model.eval()
    codes = model.encode(**batch).audio_codes
    assert codes.shape[1] == model.config.num_codebooks
    assert model.decode(codes, return_waveform=False).mel.shape[-1] == codes.shape[-1]


def test_entropy_loss_enters_the_total_loss_with_its_weight_and_only_in_training():
    torch.manual_seed(0)
    base = warm_up(PQVAEModel(tiny_config()))
    _, batch = _features(base, [0.5, 0.4])
    model = PQVAEModel(tiny_config(entropy_loss_weight=0.5))
    model.load_state_dict(base.state_dict())
    model.quantizer.codebooks.frozen = True  # same codebooks for both passes
    out = model.train()(**batch)
    assert -1.0 <= float(out.entropy_loss) <= 1.0 and float(out.entropy_loss) != 0.0
    parts = out.reconstruction_loss + out.dual_reconstruction_loss + 0.25 * out.commitment_loss
    assert torch.allclose(out.loss.detach(), parts + 0.5 * out.entropy_loss, atol=1e-5)
    base.quantizer.codebooks.frozen = True
    assert float(base.train()(**batch).entropy_loss) == 0.0  # weight 0: not computed
    assert float(model.eval()(**batch).entropy_loss) == 0.0  # evaluation: not computed


def test_opq_rotation_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(subspace_rotation="opq", rotation_update_interval=1)))
    assert bool(model.quantizer.rotation_initialized)
    assert not torch.allclose(model.quantizer.rotation, torch.eye(model.config.codebook_dim))
    _, batch = _features(model, [0.4, 0.25])
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.quantizer.rotation, model.quantizer.rotation)
    assert torch.equal(loaded.encode(**batch).audio_codes, model.encode(**batch).audio_codes)


def test_save_and_load_give_identical_outputs(tmp_path, tiny_model):
    model = warm_up(tiny_model)
    _, batch = _features(model, [0.4, 0.25])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, PQVAEModel)
    codes = model.encode(**batch).audio_codes
    assert torch.equal(loaded.encode(**batch).audio_codes, codes)
    assert torch.equal(loaded.decode(codes).mel, model.decode(codes).mel)
    assert torch.equal(loaded.front_end.mel_filters, model.front_end.mel_filters)  # rebuilt, not saved
    assert bool(loaded.quantizer.codebooks.initialized)


def test_bad_audio_inputs_raise_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="mono"):
        tiny_model.encode(torch.zeros(1, 2, 100))
    with pytest.raises(ValueError, match="NaN or Inf"):
        tiny_model.encode(torch.tensor([[[0.0, float("nan")] * 50]]))
    with pytest.raises(ValueError, match="empty"):
        tiny_model.encode(torch.zeros(1, 1, 0))
    with pytest.raises(ValueError, match="float audio"):
        tiny_model.encode(torch.zeros(1, 1, 100, dtype=torch.int16))
    with pytest.raises(ValueError, match="padding_mask must have shape"):
        tiny_model.encode(torch.zeros(2, 1, 100), padding_mask=torch.ones(2, 99))


def test_bad_codes_raise_clear_errors(tiny_model):
    size = tiny_model.config.codebook_size
    with pytest.raises(ValueError, match=rf"\[0, {size}\).*\[{size}, {size}\]"):
        tiny_model.decode(torch.full((1, 2, 5), size))
    with pytest.raises(ValueError, match=r"\[-1, 0\]"):
        tiny_model.decode(torch.tensor([[[0, -1], [0, 0]]]))
    with pytest.raises(ValueError, match="num_codebooks=2"):
        tiny_model.decode(torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="composite_to_codes"):
        tiny_model.decode(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        tiny_model.decode(torch.zeros(1, 2, 5))
    with pytest.raises(ValueError, match="padding_mask"):
        tiny_model.decode(torch.zeros(1, 2, 5, dtype=torch.long), padding_mask=torch.ones(1, 1000))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tiny_model.composite_to_codes(torch.tensor([[256]]))
    assert np.array_equal(tiny_model.composite_to_codes(torch.tensor([[255]])).numpy(), [[[15], [15]]])


@pytest.mark.parametrize("vocoder, contrast", [("neural", 1.0), ("griffin_lim", 1.0), ("neural", 1.3)])
def test_batched_decode_equals_each_example_decoded_alone(vocoder, contrast):
    """Padding never leaks into a shorter example's mel or audio: vocoder convolutions and the inverse STFT's
    overlap-add see only its own frames, and the post-filter's band means only its own valid frames."""
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(vocoder=vocoder, vocoder_hidden_size=32, vocoder_intermediate_size=64,
                                           vocoder_num_layers=2, decoded_mel_contrast=contrast)))
    audio, batch = _features(model, [1.0, 0.37, 0.61, 0.05, 0.3], seed=3)
    codes = model.encode(**batch).audio_codes
    # Garbage codes in the padded frames must not matter either.
    frame_mask = model.encode(**batch).frame_mask
    noisy_codes = torch.where(frame_mask[:, None].bool(), codes, torch.randint_like(codes, model.config.codebook_size))
    with torch.no_grad():
        batched = model.decode(noisy_codes, batch["padding_mask"])
    hop = model.config.hop_length
    for index, example in enumerate(audio):
        length, valid = len(example), len(example) // hop + 1
        with torch.no_grad():
            alone = model.decode(codes[index : index + 1, :, :valid], torch.ones(1, length, dtype=torch.long))
        torch.testing.assert_close(batched.mel[index, :, :valid], alone.mel[0], atol=1e-5, rtol=0)
        assert alone.audio_values.shape == (1, 1, length)
        assert float(alone.audio_values.abs().max()) > 1e-4 or valid < 2
        torch.testing.assert_close(batched.audio_values[index, :, :length], alone.audio_values[0], atol=1e-5, rtol=0)
        assert float(batched.audio_values[index, :, length:].abs().sum()) == 0.0
        # Padded frames of the returned mel hold the log-mel of silence, what the front-end gives for padding.
        assert bool((batched.mel[index, :, valid:] == math.log(model.config.log_floor)).all())


def test_forward_refuses_unknown_keyword_arguments_but_takes_what_trainer_passes(tiny_model):
    _, batch = _features(tiny_model, [0.3, 0.2])
    tiny_model.eval()
    with pytest.raises(TypeError, match="paddingmask"):
        tiny_model(batch["input_values"], paddingmask=batch["padding_mask"])
    reference = tiny_model(**batch).loss
    assert torch.equal(tiny_model(**batch, num_items_in_batch=123).loss, reference)  # accepted and ignored
    assert PQVAEModel.accepts_loss_kwargs is False  # losses are means over valid frames: Trainer scales them
    assert PQVAEModel.input_modalities == "audio"


def test_griffin_lim_decodes_a_single_frame_to_empty_audio(tiny_model):
    codes = torch.zeros(2, 2, 1, dtype=torch.long)
    assert tiny_model.decode(codes).audio_values.shape == (2, 1, 0)
    out = tiny_model.decode(codes, torch.ones(2, 40, dtype=torch.long))  # 40 samples -> one frame
    assert out.audio_values.shape == (2, 1, 40) and float(out.audio_values.abs().sum()) == 0.0
    mask = torch.ones(2, 200, dtype=torch.long)
    mask[1, 30:] = 0  # the second example has one frame, inside a batch
    out = tiny_model.decode(torch.zeros(2, 2, 4, dtype=torch.long), mask)
    assert out.audio_values.shape == (2, 1, 200) and float(out.audio_values[1].abs().sum()) == 0.0


@pytest.mark.parametrize("overrides", [dict(vocoder="neural", vocoder_hidden_size=32, vocoder_intermediate_size=64,
                                            vocoder_num_layers=2, subspace_rotation="opq"),
                                       dict(quantizer_type="rvq", num_codebooks=3, kmeans_init=False)])
def test_init_weights_gives_every_buffer_its_registered_value(overrides):
    """transformers' `test_init_weights_can_init_buffers`: a model built on the meta device and initialised by
    `init_weights()` has exactly the buffers of a model built directly (what `from_pretrained` relies on for
    buffers a checkpoint lacks)."""
    import copy

    from transformers.initialization import no_init_weights

    config = tiny_config(**overrides)
    with no_init_weights():
        from_init = PQVAEModel(copy.deepcopy(config))
    with torch.device("meta"):
        from_meta = PQVAEModel(copy.deepcopy(config))
    from_meta.to_empty(device="cpu")
    from_meta.init_weights()
    buffers, meta_buffers = dict(from_init.named_buffers()), dict(from_meta.named_buffers())
    assert sorted(buffers) == sorted(meta_buffers)
    different = sorted(name for name, value in buffers.items() if not bool((value == meta_buffers[name]).all()))
    assert different == []


def test_codebook_statistics_are_seeded_at_the_first_training_step_without_kmeans():
    torch.manual_seed(0)
    model = PQVAEModel(tiny_config(kmeans_init=False))
    group = model.quantizer.codebooks
    assert not bool(group.initialized) and float(group.ema_cluster_size.abs().sum()) == 0.0
    codebook = group.codebook.detach().clone()
    warm_up(model)
    assert bool(group.initialized) and int(group.steps) == 1
    # Seeded from the codebook itself (cluster size 1 each), then one EMA step: unused codewords stay where they were.
    unused = group.usage_ema < 0.99 + 1e-6  # seeded at 1.0, then one decay step with no assignment
    assert bool(unused.any())
    torch.testing.assert_close(group.codebook[unused], codebook[unused], rtol=1e-4, atol=1e-6)


def test_encode_and_decode_compile_as_single_graphs():
    """torch.compile(fullgraph=True): no data-dependent Python branch (input checks run on the device when
    compiling). aot_eager traces exactly what inductor gets, without spending a minute generating C++."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(vocoder="neural", vocoder_hidden_size=32, vocoder_intermediate_size=64,
                                           vocoder_num_layers=2)))
    _, batch = _features(model, [0.5, 0.3])
    encode = torch.compile(model.encode, fullgraph=True, backend="aot_eager")
    decode = torch.compile(model.decode, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        codes = model.encode(**batch).audio_codes
        assert torch.equal(encode(batch["input_values"], batch["padding_mask"]).audio_codes, codes)
        compiled, eager = decode(codes, batch["padding_mask"]), model.decode(codes, batch["padding_mask"])
    torch.testing.assert_close(compiled.mel, eager.mel, atol=1e-5, rtol=0)
    torch.testing.assert_close(compiled.audio_values, eager.audio_values, atol=1e-5, rtol=0)
    torch._dynamo.reset()


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    base = warm_up(PQVAEModel(tiny_config(num_encoder_layers=2, num_decoder_layers=2)))
    _, batch = _features(base, [0.5, 0.3])
    gradients = {}
    for checkpointing in (False, True):
        model = PQVAEModel(base.config)
        model.load_state_dict(base.state_dict())
        model.quantizer.codebooks.frozen = True  # same codebooks for both runs
        calls = []
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
            for block in [*model.encoder.blocks, *model.decoder.blocks]:
                checkpoint = block._gradient_checkpointing_func
                block._gradient_checkpointing_func = lambda *a, _f=checkpoint, **k: calls.append(1) or _f(*a, **k)
        model.train()(**batch).loss.backward()
        assert len(calls) == (4 if checkpointing else 0)  # every ConvNeXt block of encoder and decoder
        gradients[checkpointing] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert gradients[True].keys() == gradients[False].keys()
    for name in gradients[False]:
        torch.testing.assert_close(gradients[True][name], gradients[False][name], atol=1e-6, rtol=1e-5, msg=name)


def test_postfilter_mel_stretches_each_band_around_its_mean_over_valid_frames():
    model = PQVAEModel(tiny_config(decoded_mel_contrast=1.25))
    generator = torch.Generator().manual_seed(0)
    mel = torch.randn(2, model.config.num_mel_bins, 30, generator=generator) - 4.0
    frame_mask = torch.ones(2, 30, dtype=torch.long)
    frame_mask[1, 18:] = 0
    out = model.postfilter_mel(mel, frame_mask)
    for index, valid in ((0, 30), (1, 18)):
        before, after = mel[index, :, :valid], out[index, :, :valid]
        # Each band keeps its mean and its deviations grow by exactly the factor.
        torch.testing.assert_close(after.mean(-1), before.mean(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(after - after.mean(-1, keepdim=True),
                                   1.25 * (before - before.mean(-1, keepdim=True)), atol=1e-5, rtol=0)
        torch.testing.assert_close(after.std(-1) / before.std(-1), torch.full((mel.shape[1],), 1.25))
    assert torch.equal(out[1, :, 18:], mel[1, :, 18:])  # padded frames untouched
    # Alone (no mask) equals batched with its mask; the factor 1 returns the mel itself.
    torch.testing.assert_close(model.postfilter_mel(mel[1:, :, :18]), out[1:, :, :18], atol=1e-6, rtol=0)
    # Half-precision mels keep their dtype; the band means are taken in float32.
    half = model.postfilter_mel(mel.bfloat16(), frame_mask)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), out, atol=0.05, rtol=0.01)
    off = PQVAEModel(tiny_config())
    assert off.postfilter_mel(mel, frame_mask) is mel
    with pytest.raises(ValueError, match="decoded_mel_contrast"):
        tiny_config(decoded_mel_contrast=0.0)


def test_decode_vocodes_the_postfiltered_mel_and_returns_the_decoders_own():
    from pqvae_hf.inference import decode_long

    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(vocoder="neural", vocoder_hidden_size=32, vocoder_intermediate_size=64,
                                           vocoder_num_layers=2, decoded_mel_contrast=1.3)))
    audio = chirp(6.0, model.config.sampling_rate, 4)
    with torch.no_grad():
        codes = model.encode(torch.from_numpy(audio)[None, None]).audio_codes
        decoded = model.decode(codes)
        plain = model.decode(codes, return_waveform=False).mel
        torch.testing.assert_close(decoded.mel, plain)
        torch.testing.assert_close(decoded.audio_values[:, 0], model.vocoder(model.postfilter_mel(plain)))
        assert float((decoded.audio_values[:, 0] - model.vocoder(plain)).abs().max()) > 1e-3  # the filter acts
        # Decoded in 1.5 s chunks, the band means still span the whole clip: the same audio as in one piece.
        mel_long, audio_long = decode_long(model, codes[0], chunk_seconds=1.5)
    torch.testing.assert_close(mel_long, plain[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(audio_long, decoded.audio_values[0, 0], atol=1e-4, rtol=0)
