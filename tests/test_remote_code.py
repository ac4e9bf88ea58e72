"""A folder written by save_pretrained loads with trust_remote_code in a process that cannot import pqvae_hf."""

import json

import numpy as np
import torch
from conftest import chirp, load_in_clean_process, tiny_config, warm_up

from pqvae_hf import PQVAEFeatureExtractor, PQVAEModel, PQVAEProcessor


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
    remote = load_in_clean_process(folder, audio, tmp_path)
    assert remote["module"].startswith("transformers_modules")
    assert remote["processor"] == "PQVAEProcessor"

    batch = processor(list(audio), sampling_rate=8000, return_tensors="pt")
    with torch.no_grad():
        codes = model.encode(**batch).audio_codes
        mel = model.decode(codes, batch["padding_mask"]).mel
    assert remote["codes"] == codes.tolist()
    assert abs(remote["mel_sum"] - float(mel.double().sum())) < 1e-3
    assert remote["tokens"] == processor.codes_to_lm_tokens(codes)[0][:5]
