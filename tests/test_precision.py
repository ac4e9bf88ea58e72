"""Half precision and mixed precision: the mel front-end and the quantizer always compute in float32."""

from pathlib import Path

import pytest
import torch
from conftest import chirp, tiny_config, warm_up
from transformers import AutoModel

from pqvae_hf import PQVAEFeatureExtractor, PQVAEModel
from pqvae_hf.modeling.quantization_pqvae import ProductQuantizer

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "pqvae-speech-small"
DEMO_CLIP = Path(__file__).resolve().parent.parent / "assets" / "speech_orig_16k.flac"


def _batch(model, seconds=(0.6, 0.35), seed=0):
    fe = PQVAEFeatureExtractor(sampling_rate=model.config.sampling_rate)
    audio = [chirp(s, model.config.sampling_rate, seed + i) for i, s in enumerate(seconds)]
    return fe(audio, sampling_rate=model.config.sampling_rate, return_tensors="pt")


def _float32_parts_stay_float32(model):
    for name, tensor in [*model.front_end.named_buffers(), *model.quantizer.named_parameters(),
                         *model.quantizer.named_buffers()]:
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float32, name


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped checkpoint")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_load_encodes_and_decodes_a_real_clip(dtype):
    from pqvae_hf.inference import load_audio

    reference = AutoModel.from_pretrained(SHIPPED).eval()
    model = AutoModel.from_pretrained(SHIPPED, dtype=dtype).eval()
    assert model.encoder.conv_in.weight.dtype == dtype and model.vocoder.embed.weight.dtype == dtype
    _float32_parts_stay_float32(model)  # `_keep_in_fp32_modules_strict`
    audio = torch.from_numpy(load_audio(str(DEMO_CLIP), 16000))[None, None]  # 10.8 s of real speech, 676 frames
    with torch.no_grad():
        codes = model.encode(audio).audio_codes
        expected = reference.encode(audio).audio_codes
        decoded = model.decode(codes)
        decoded_fp32 = reference.decode(codes)
    # The encoder runs in half precision, so latents move by about the format's rounding and the few frames that lie
    # almost on a boundary between two codewords flip. Measured on this clip: 99.63 % (bfloat16) and 99.93 %
    # (float16) of the codes equal float32's. Stated tolerance: 98 % / 99.5 %.
    agreement = float((codes == expected).float().mean())
    assert agreement >= (0.98 if dtype == torch.bfloat16 else 0.995), agreement
    assert decoded.audio_values.dtype == torch.float32 and decoded.audio_values.shape == decoded_fp32.audio_values.shape
    assert torch.isfinite(decoded.audio_values).all()
    # Same codes decoded in half vs float32: mean |log-mel difference| measured 0.0039 (bf16), 0.00053 (fp16).
    mel_error = float((decoded.mel.float() - decoded_fp32.mel).abs().mean())
    assert mel_error < (0.02 if dtype == torch.bfloat16 else 0.005), mel_error


def test_casting_the_model_keeps_front_end_and_quantizer_in_float32():
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(vocoder="neural", vocoder_hidden_size=32, vocoder_intermediate_size=64,
                                           vocoder_num_layers=2)))
    codebook = model.quantizer.codebooks.codebook.detach().clone()
    batch = _batch(model)
    model.to(torch.bfloat16)
    assert model.encoder.conv_in.weight.dtype == torch.bfloat16
    _float32_parts_stay_float32(model)
    assert model.vocoder.window.dtype == torch.float32
    assert torch.equal(model.quantizer.codebooks.codebook, codebook)  # not rounded through bfloat16
    with torch.no_grad():
        codes = model.encode(**batch).audio_codes
        out = model.decode(codes, batch["padding_mask"])
    assert out.audio_values.shape == batch["input_values"].shape and torch.isfinite(out.audio_values).all()


@pytest.mark.parametrize("rotation", ["none", "opq"])
def test_quantizer_search_and_ema_run_in_float32_under_autocast(rotation):
    torch.manual_seed(0)
    # Latents with many near-ties, so a bfloat16 distance computation would flip codes.
    latents = torch.randn(4, 200, 16)
    mask = torch.ones(4, 200)
    mask[1, 150:] = 0
    states = []
    for autocast in (False, True):
        torch.manual_seed(1)
        quantizer = ProductQuantizer(2, 64, 16, kmeans_init=True, dead_code_threshold=1.0,
                                     dead_code_restart_interval=2, subspace_rotation=rotation,
                                     rotation_update_interval=2).train()
        outputs = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for _ in range(3):
                outputs.append(quantizer(latents, mask, with_entropy_loss=True))
            encoded = quantizer.eval().encode(latents)
        states.append((outputs, encoded, {k: v.clone() for k, v in quantizer.state_dict().items()}))
    (plain, plain_codes, plain_state), (mixed, mixed_codes, mixed_state) = states
    for a, b in zip(plain, mixed):
        assert torch.equal(a.codes, b.codes)
        assert b.quantized.dtype == torch.float32 and b.commitment_loss.dtype == torch.float32
        torch.testing.assert_close(a.entropy_loss, b.entropy_loss)
    assert torch.equal(plain_codes, mixed_codes)
    for key in plain_state:
        assert plain_state[key].dtype == mixed_state[key].dtype, key
        torch.testing.assert_close(plain_state[key], mixed_state[key], msg=key)


def test_bf16_autocast_training_step_runs_and_matches_float32_quantizer_statistics():
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(entropy_loss_weight=0.1)))
    batch = _batch(model, (0.8, 0.5, 0.3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    out.loss.backward()
    optimizer.step()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    _float32_parts_stay_float32(model)
    # The codes of an autocast forward are the float32 nearest codewords of the latents the encoder produced.
    captured = []
    hook = model.encoder.register_forward_hook(lambda module, args, output: captured.append(output))
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        again = model(**batch)
    hook.remove()
    with torch.no_grad():
        assert torch.equal(again.audio_codes, model.quantizer.encode(captured[0].float()))
