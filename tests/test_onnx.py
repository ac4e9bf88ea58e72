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
