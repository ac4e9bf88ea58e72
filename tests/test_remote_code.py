"""A folder written by save_pretrained loads with trust_remote_code in a process that cannot import pqvae_hf."""

import json
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import torch
from conftest import chirp, tiny_config, warm_up

from pqvae_hf import PQVAEFeatureExtractor, PQVAEModel, PQVAEProcessor

SCRUBBED_LOADER = textwrap.dedent(
    """
    import importlib.util, json, sys
    sys.path.append({site!r})  # site-packages without .pth hooks: no editable install of pqvae_hf
    assert importlib.util.find_spec("pqvae_hf") is None, "pqvae_hf must not be importable here"
    assert importlib.util.find_spec("modeling") is None, "a top-level 'modeling' module must not exist"
    import numpy as np, torch
    from transformers import AutoModel, AutoProcessor
    model = AutoModel.from_pretrained({folder!r}, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained({folder!r}, trust_remote_code=True)
    audio = np.load({audio!r})
    batch = processor(list(audio), sampling_rate=model.config.sampling_rate, return_tensors="pt")
    with torch.no_grad():
        codes = model.encode(**batch).audio_codes
        mel = model.decode(codes, batch["padding_mask"]).mel
    print(json.dumps({{"module": type(model).__module__, "processor": type(processor).__name__,
                      "codes": codes.tolist(), "mel_sum": float(mel.double().sum()),
                      "tokens": processor.codes_to_lm_tokens(codes)[0][:5]}}))
    """
)


def test_remote_code_loads_in_a_clean_process(tmp_path):
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config()))
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor = PQVAEProcessor(PQVAEFeatureExtractor(sampling_rate=model.config.sampling_rate),
                               num_codebooks=2, codebook_size=16, audio_token_offset=7)
    processor.save_pretrained(folder)
    for name in ("modeling_pqvae.py", "configuration_pqvae.py", "quantization_pqvae.py",
                 "feature_extraction_pqvae.py", "processing_pqvae.py", "model.safetensors"):
        assert (folder / name).exists(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_pqvae.PQVAEConfig",
                                  "AutoModel": "modeling_pqvae.PQVAEModel"}

    audio = np.stack([chirp(0.5, 8000, 1), chirp(0.5, 8000, 2)])
    np.save(tmp_path / "audio.npy", audio)
    script = SCRUBBED_LOADER.format(site=sysconfig.get_paths()["purelib"], folder=str(folder),
                                    audio=str(tmp_path / "audio.npy"))
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
                                 "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["module"].startswith("transformers_modules")
    assert remote["processor"] == "PQVAEProcessor"

    batch = processor(list(audio), sampling_rate=8000, return_tensors="pt")
    with torch.no_grad():
        codes = model.encode(**batch).audio_codes
        mel = model.decode(codes, batch["padding_mask"]).mel
    assert remote["codes"] == codes.tolist()
    assert abs(remote["mel_sum"] - float(mel.double().sum())) < 1e-3
    assert remote["tokens"] == processor.codes_to_lm_tokens(codes)[0][:5]
