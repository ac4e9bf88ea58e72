import numpy as np
import pytest
import torch
from conftest import chirp, tiny_config, warm_up

from pqvae_hf import PQVAEModel

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnx onnxruntime)")
from pqvae_hf.conversion.export_onnx import AUDIO_TOLERANCE, MEL_TOLERANCE, export, verify  # noqa: E402


def test_export_and_onnxruntime_parity_with_dynamic_axes(tmp_path):
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(vocoder="neural", vocoder_hidden_size=32, vocoder_intermediate_size=64,
                                           vocoder_num_layers=2)))
    paths = export(model, str(tmp_path))
    result = verify(model, paths)
    assert result["codes_identical"], result
    assert result["max_mel_difference"] < MEL_TOLERANCE and result["max_audio_difference"] < AUDIO_TOLERANCE

    # Other batch size and lengths than at export time.
    audios = [chirp(0.9, 8000, 1), chirp(0.4, 8000, 2), chirp(0.65, 8000, 3)]
    length = max(len(a) for a in audios)
    values = np.zeros((3, 1, length), dtype=np.float32)
    mask = np.zeros((3, length), dtype=np.int64)
    for row, audio in enumerate(audios):
        values[row, 0, : len(audio)] = audio
        mask[row, : len(audio)] = 1
    session = ort.InferenceSession(paths["encoder"], providers=["CPUExecutionProvider"])
    onnx_codes = session.run(None, {"input_values": values, "padding_mask": mask})[0]
    with torch.no_grad():
        torch_codes = model.encode(torch.from_numpy(values), torch.from_numpy(mask)).audio_codes.numpy()
    assert onnx_codes.shape == (3, 2, length // 64 + 1)
    assert np.array_equal(onnx_codes, torch_codes)
    decoder = ort.InferenceSession(paths["decoder"], providers=["CPUExecutionProvider"])
    mel, audio = decoder.run(None, {"audio_codes": torch_codes})
    assert mel.shape == (3, 20, length // 64 + 1) and audio.shape == (3, (length // 64) * 64)


def test_export_parity_with_the_vocoder_magnitude_prior_and_the_mel_postfilter(tmp_path):
    """The prior (mel pseudo-inverse magnitude + a learnt correction) is plain matmul / log / exp and the decoded
    mel's post-filter a masked mean: both export and match torch; the correction rows are made non-zero so the test
    sees both terms."""
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(vocoder="neural", vocoder_hidden_size=32, vocoder_intermediate_size=64,
                                           vocoder_num_layers=2, vocoder_magnitude_prior="mel_pseudo_inverse",
                                           decoded_mel_contrast=1.2)))
    with torch.no_grad():
        model.vocoder.proj_out.weight[: model.vocoder.num_freq_bins].normal_(std=0.02)
    result = verify(model, export(model, str(tmp_path)))
    assert result["codes_identical"], result
    assert result["max_mel_difference"] < MEL_TOLERANCE and result["max_audio_difference"] < AUDIO_TOLERANCE


def test_export_parity_with_the_vocoder_phase_refinement(tmp_path):
    """The refinement's projections are unrolled into the graph with the convolutional STFT / inverse STFT; the
    exported audio matches torch's and differs from the network's unrefined output (so the loop was exported).
    Compared on the codes of a clip, not on `verify`'s half-padded example: on codes of padding an untrained network's
    spectrum is far from any waveform's, and Griffin-Lim's projections there amplify float rounding (torch.stft
    against the convolutional STFT, both in torch, already differ by 0.08)."""
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(vocoder="neural", vocoder_hidden_size=32, vocoder_intermediate_size=64,
                                           vocoder_num_layers=2, vocoder_phase_refinement_iters=3)))
    paths = export(model, str(tmp_path))
    audio = torch.from_numpy(chirp(1.5, 8000, 0))[None, None]
    with torch.no_grad():
        codes = model.encode(audio, torch.ones(1, audio.shape[-1], dtype=torch.long)).audio_codes
        refined_torch = model.decode(codes).audio_values[:, 0].numpy()
        model.vocoder.phase_refinement_iters = 0
        unrefined = model.decode(codes).audio_values[:, 0].numpy()
    decoder = ort.InferenceSession(paths["decoder"], providers=["CPUExecutionProvider"])
    refined_onnx = decoder.run(None, {"audio_codes": codes.numpy()})[1]
    assert np.abs(refined_onnx - refined_torch).max() < AUDIO_TOLERANCE
    assert np.abs(refined_onnx - unrefined).max() > 10 * AUDIO_TOLERANCE


def test_the_mel_vocoder_exports_as_its_own_graph(tmp_path):
    """A model with a mel vocoder (magnitude prior + 3 projections, correction rows non-zero) also gets
    mel_vocoder.onnx, log_mel -> audio_values, matching `vocode_mel` on a real log-mel at another batch size and
    length than at export time; the token decoder still renders with the token vocoder."""
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(vocoder="neural", vocoder_hidden_size=32, vocoder_intermediate_size=64,
                                           vocoder_num_layers=2, mel_vocoder="neural",
                                           mel_vocoder_magnitude_prior="mel_pseudo_inverse",
                                           mel_vocoder_phase_refinement_iters=3)))
    with torch.no_grad():
        model.mel_vocoder.proj_out.weight[: model.mel_vocoder.num_freq_bins].normal_(std=0.02)
    paths = export(model, str(tmp_path))
    result = verify(model, paths)
    assert result["max_audio_difference"] < AUDIO_TOLERANCE
    assert result["max_mel_vocoder_audio_difference"] < AUDIO_TOLERANCE
    log_mel = model.front_end(torch.from_numpy(np.stack([chirp(1.1, 8000, 0), chirp(1.1, 8000, 4)])))
    with torch.no_grad():
        expected = model.vocode_mel(log_mel).numpy()
    session = ort.InferenceSession(paths["mel_vocoder"], providers=["CPUExecutionProvider"])
    rendered = session.run(None, {"log_mel": log_mel.numpy()})[0]
    assert rendered.shape == expected.shape == (2, (log_mel.shape[-1] - 1) * 64)
    assert np.abs(rendered - expected).max() < AUDIO_TOLERANCE < np.abs(expected).max()


def test_code_agreement_on_clips_is_measured_with_tie_gaps(tmp_path):
    from pqvae_hf.conversion.export_onnx import measure_codes_agreement

    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(codebook_size=64)))
    paths = export(model, str(tmp_path))
    clips = [chirp(0.7, 8000, 21), chirp(1.1, 8000, 22)]
    result = measure_codes_agreement(model, paths["encoder"], clips)
    assert result["clips"] == 2 and result["codes"] == 2 * ((5600 // 64 + 1) + (8800 // 64 + 1))
    assert result["codes_agreement"] == 1 - result["codes_differing"] / result["codes"] >= 0.99
    # Export, then give PyTorch's codebook a near-copy of its most used codeword in place of an unused one: the
    # frames closer to the copy now differ from ONNX (which has no copy), each one a near-tie by construction.
    with torch.no_grad():
        used = torch.cat([model.encode(torch.from_numpy(c)[None, None]).audio_codes[0, 0] for c in clips])
        counts = torch.bincount(used, minlength=64)
        popular, spare = int(counts.argmax()), int((counts == 0).nonzero()[0])
        codebook = model.quantizer.codebooks.codebook
        codebook[0, spare] = codebook[0, popular] + 1e-6 * torch.randn(codebook.shape[-1])
    tied = measure_codes_agreement(model, paths["encoder"], clips)
    assert tied["codes_differing"] > 0 and tied["differing_distance_gap_percent"]["max"] < 1.0, tied
    assert tied["codes_agreement"] < result["codes_agreement"]
