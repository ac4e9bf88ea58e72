"""Convert a raw PyTorch / PyTorch Lightning PQ-VAE checkpoint into a Hugging Face folder.

    python -m pqvae_hf.conversion.convert_checkpoint --checkpoint model.ckpt --config config.json --output out/

Expected key layout (that of `PQVAEModel.state_dict()`; prefixes such as `model.`, `module.`, `pqvae.`,
`_orig_mod.` and Lightning's `state_dict` wrapper are removed first):

    encoder.conv_in.{weight,bias}, encoder.norm_in.*, encoder.blocks.{i}.{depthwise,norm,pointwise_in,
        pointwise_out}.*, encoder.blocks.{i}.layer_scale, encoder.norm_out.*, encoder.proj_out.*
    quantizer.codebooks.{codebook, ema_cluster_size, ema_embed_sum, usage_ema, initialized, steps}     (pq / vq)
    quantizer.stages.{m}.{...same...}                                                                  (rvq)
    decoder.* (same layout as encoder)
    vocoder.{embed, norm_in, blocks.{i}.*, norm_out, proj_out}.*                        (vocoder="neural" only)

The mel filterbank and windows are rebuilt from the config, never read. The key check is strict: every missing
and unexpected key is listed. The folder is then reloaded and checked numerically against the in-memory model on a
fixed input (codes identical, log-mel within 1e-5).

Untrusted files: `.pt` / `.pth` / `.ckpt` are pickles, and unpickling can run arbitrary code. They are read with
`torch.load(weights_only=True)`, which only rebuilds tensors, containers and plain values, plus the few classes
Lightning checkpoints carry besides weights (its `AttributeDict` of hyper-parameters, `argparse.Namespace`), allowed
by name as plain dicts / namespaces. A file holding anything else is refused with the names of the objects it
holds. `--allow-unsafe-pickle` (`allow_unsafe_pickle=True`) unpickles anything: only for files you trust, since a
malicious checkpoint then runs its code on this machine. `.safetensors` files hold tensors only and need neither.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle

import torch

PREFIXES = ("model.", "module.", "pqvae.", "_orig_mod.")


class _LightningAttributeDict:
    """Lightning's `AttributeDict` of hyper-parameters (a dict subclass) is rebuilt as a plain dict: unpickling
    calls `__new__` and then fills the result, which the weights-only unpickler only does for exact dicts."""

    def __new__(cls, *args, **kwargs):
        return {}


# Non-tensor classes that Lightning checkpoints hold next to the weights, allowed by their pickled names. They are
# rebuilt as plain containers: nothing of Lightning is imported or run.
LIGHTNING_SAFE_GLOBALS = [
    (_LightningAttributeDict, "lightning.fabric.utilities.data.AttributeDict"),
    (_LightningAttributeDict, "lightning_fabric.utilities.data.AttributeDict"),
    (_LightningAttributeDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    argparse.Namespace,
]


def load_pickled_checkpoint(path: str, allow_unsafe_pickle: bool = False):
    """`torch.load` a .pt / .pth / .ckpt file safely (`weights_only=True` with the Lightning allow-list).

    Raises a ValueError naming the objects a file holds beyond that, unless `allow_unsafe_pickle`, which unpickles
    anything and so runs whatever code a malicious file carries.
    """
    if allow_unsafe_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(LIGHTNING_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        try:
            refused = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception:  # noqa: BLE001 - only for the message
            refused = "see below"
        raise ValueError(
            f"{path} holds Python objects beyond tensors, containers and plain values ({refused}); they were not"
            " unpickled, since unpickling can run arbitrary code. Export the state dict with torch.save(model"
            ".state_dict()) or safetensors, or, only if you trust this file, pass --allow-unsafe-pickle"
            " (allow_unsafe_pickle=True) to unpickle everything it holds.\n" + str(error).splitlines()[0]
        ) from error


def read_state_dict(path: str, allow_unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A .safetensors / .pt / .pth / .ckpt file -> flat tensor dict with known prefixes stripped.

    Pickled files are loaded with `weights_only=True` unless `allow_unsafe_pickle` (see `load_pickled_checkpoint`).
    """
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = load_pickled_checkpoint(path, allow_unsafe_pickle)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]  # PyTorch Lightning
        elif isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    cleaned = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            continue
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def check_keys(model, state: dict[str, torch.Tensor]) -> None:
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    mismatched = sorted(k for k in expected & set(state) if tuple(state[k].shape) != tuple(model.state_dict()[k].shape))
    if missing or unexpected or mismatched:
        lines = ["The checkpoint does not match the config's PQVAEModel:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {', '.join(unexpected[:20])}"
                         f"{' ...' if len(unexpected) > 20 else ''}")
        for key in mismatched[:20]:
            lines.append(f"  shape of {key}: checkpoint {tuple(state[key].shape)}, config"
                         f" {tuple(model.state_dict()[key].shape)}")
        lines.append("Check the config (sizes, num_codebooks, codebook_size, quantizer_type, vocoder) or the prefixes.")
        raise ValueError("\n".join(lines))


def parity_input(sampling_rate: int, seconds: float = 1.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    t = torch.arange(int(seconds * sampling_rate)) / sampling_rate
    tone = 0.3 * torch.sin(2 * torch.pi * (150 + 200 * t) * t)
    return (tone + 0.02 * torch.randn(t.shape, generator=generator))[None, None]


def convert(checkpoint: str, config_path: str, output: str, overrides: dict | None = None,
            allow_unsafe_pickle: bool = False) -> dict:
    from pqvae_hf import PQVAEConfig, PQVAEFeatureExtractor, PQVAEModel, PQVAEProcessor
    from pqvae_hf.model_card import write_model_card

    with open(config_path) as handle:
        config_dict = json.load(handle)
    config = PQVAEConfig.from_dict({**config_dict, **(overrides or {})})
    model = PQVAEModel(config).eval()
    state = read_state_dict(checkpoint, allow_unsafe_pickle=allow_unsafe_pickle)
    check_keys(model, state)
    model.load_state_dict(state, strict=True)

    model.save_pretrained(output)
    PQVAEProcessor(PQVAEFeatureExtractor(sampling_rate=config.sampling_rate), num_codebooks=config.num_codebooks,
                   codebook_size=config.codebook_size).save_pretrained(output)

    reloaded = PQVAEModel.from_pretrained(output).eval()
    audio = parity_input(config.sampling_rate)
    with torch.no_grad():
        codes, codes_reloaded = model.encode(audio).audio_codes, reloaded.encode(audio).audio_codes
        mel = model.decode(codes, return_waveform=False).mel
        mel_reloaded = reloaded.decode(codes, return_waveform=False).mel
    parity = {"codes_identical": bool(torch.equal(codes, codes_reloaded)),
              "max_mel_difference": float((mel - mel_reloaded).abs().max())}
    if not parity["codes_identical"] or parity["max_mel_difference"] > 1e-5:
        raise RuntimeError(f"Parity check failed after conversion: {parity}")
    write_model_card(output, config, model_name=os.path.basename(os.path.normpath(output)),
                     training={"converted from": os.path.basename(checkpoint), "parity check": parity})
    return parity


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help=".pt / .pth / .ckpt (Lightning) / .safetensors")
    parser.add_argument("--config", required=True, help="config.json with PQVAEConfig fields")
    parser.add_argument("--output", required=True, help="folder to write (safetensors, config, code, processor)")
    parser.add_argument("--allow-unsafe-pickle", action="store_true",
                        help="UNSAFE: unpickle any Python object in a .pt/.pth/.ckpt file (torch.load with"
                             " weights_only=False). A malicious checkpoint then runs arbitrary code on this machine;"
                             " use only for files you trust. Without it, files holding more than tensors and plain"
                             " values (plus Lightning's hyper-parameters) are refused.")
    args = parser.parse_args(argv)
    parity = convert(args.checkpoint, args.config, args.output, allow_unsafe_pickle=args.allow_unsafe_pickle)
    print(json.dumps({"output": args.output, **parity}))
    return parity


if __name__ == "__main__":
    main()
