import json

import pytest
import torch
from conftest import tiny_config, warm_up

from pqvae_hf import PQVAEModel
from pqvae_hf.conversion.convert_checkpoint import convert, parity_input


def _raw_checkpoint(tmp_path, wrap):
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config()))
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save(wrap(state), tmp_path / "raw.ckpt")
    return model


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": s, "epoch": 3, "optimizer_states": []}],
                         ids=["state_dict", "lightning"])
def test_round_trip_gives_identical_outputs(tmp_path, wrap):
    model = _raw_checkpoint(tmp_path, wrap)
    parity = convert(str(tmp_path / "raw.ckpt"), str(tmp_path / "config.json"), str(tmp_path / "hf"))
    assert parity == {"codes_identical": True, "max_mel_difference": 0.0}
    converted = PQVAEModel.from_pretrained(tmp_path / "hf").eval()
    audio = parity_input(8000, 2.0)
    with torch.no_grad():
        assert torch.equal(converted.encode(audio).audio_codes, model.eval().encode(audio).audio_codes)
    for name in ("model.safetensors", "modeling_pqvae.py", "processor_config.json", "README.md"):
        assert (tmp_path / "hf" / name).exists()


def test_strict_key_check_lists_missing_unexpected_and_shapes(tmp_path):
    model = _raw_checkpoint(tmp_path, lambda s: s)
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("decoder.proj_out")}
    state["module.extra.weight"] = torch.zeros(3)
    state["module.encoder.conv_in.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError) as error:
        convert(str(tmp_path / "broken.pt"), str(tmp_path / "config.json"), str(tmp_path / "out"))
    message = str(error.value)
    assert "missing (2): decoder.proj_out.bias, decoder.proj_out.weight" in message
    assert "unexpected (1): extra.weight" in message
    assert "shape of encoder.conv_in.bias: checkpoint (7,), config (32,)" in message
