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


class _Payload:
    """Unpickling this runs `Path.touch(marker)`: a stand-in for arbitrary code in a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return Path.touch, (Path(self.marker),)


def test_checkpoint_carrying_an_arbitrary_object_is_refused_without_running_it(tmp_path):
    model = _raw_checkpoint(tmp_path, lambda s: s)
    marker = tmp_path / "code_ran"
    state = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "extra": _Payload(str(marker))}
    torch.save(state, tmp_path / "malicious.ckpt")
    with pytest.raises(ValueError, match="allow_unsafe_pickle") as error:
        convert(str(tmp_path / "malicious.ckpt"), str(tmp_path / "config.json"), str(tmp_path / "out"))
    assert "pathlib" in str(error.value)  # names the object it refused
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # The command line refuses it the same way and names the flag that would accept the risk.
    from pqvae_hf.conversion.convert_checkpoint import main

    with pytest.raises(ValueError, match="--allow-unsafe-pickle"):
        main(["--checkpoint", str(tmp_path / "malicious.ckpt"), "--config", str(tmp_path / "config.json"),
              "--output", str(tmp_path / "out")])
    assert not marker.exists()


def test_lightning_checkpoint_with_hyper_parameters_loads_without_unsafe_unpickling(tmp_path, monkeypatch):
    """Lightning stores `hyper_parameters` as its AttributeDict (and older versions an argparse.Namespace) next to
    the state dict; both are allow-listed, so such files convert with `weights_only=True`."""
    import argparse
    import sys
    import types

    class AttributeDict(dict):
        pass

    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    for name in names:  # pickle needs the class importable at save time; lightning itself is not installed here
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    AttributeDict.__module__, AttributeDict.__qualname__ = "lightning.fabric.utilities.data", "AttributeDict"
    sys.modules["lightning.fabric.utilities.data"].AttributeDict = AttributeDict
    model = _raw_checkpoint(tmp_path, lambda s: {
        "state_dict": s, "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
        "hyper_parameters": AttributeDict(lr=1e-3, codebook_size=16), "hparams_namespace": argparse.Namespace(a=1),
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-3}]}],
        "lr_schedulers": [{"last_epoch": 3, "_last_lr": [1e-3]}], "loops": {"fit_loop": {"epoch_progress": {}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "/tmp/x"}}})
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    parity = convert(str(tmp_path / "raw.ckpt"), str(tmp_path / "config.json"), str(tmp_path / "hf"))
    assert parity == {"codes_identical": True, "max_mel_difference": 0.0}
    del model
