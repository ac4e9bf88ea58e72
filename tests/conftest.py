import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pqvae_hf  # noqa: E402  (registers the Auto classes)

TINY = dict(hidden_size=32, intermediate_size=64, num_encoder_layers=1, num_decoder_layers=1, codebook_dim=16,
            num_codebooks=2, codebook_size=16, n_fft=256, win_length=256, hop_length=64, num_mel_bins=20,
            sampling_rate=8000, griffin_lim_iters=4)


def tiny_config(**overrides) -> pqvae_hf.PQVAEConfig:
    return pqvae_hf.PQVAEConfig(**{**TINY, **overrides})


def chirp(seconds: float, sampling_rate: int, seed: int = 0) -> np.ndarray:
    """A speech-like test signal: a few gliding harmonics with a syllable-rate envelope plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sampling_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)))
    return (0.3 * envelope * voiced / 2 + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


TINY_OVERRIDES = ",".join(f"{k}={v}" for k, v in TINY.items())


def make_audiofolder(directory, num_train: int = 24, num_validation: int = 6, num_test: int = 6,
                     sampling_rate: int = 8000):
    """Writes an audiofolder dataset of generated speech-like clips with a `split` column.

    Lengths vary from 0.15 s to 2.5 s; every third clip is stored at 11025 Hz and every fourth in stereo, so loading
    must resample and downmix.
    """
    import csv

    import soundfile as sf

    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    splits = ["train"] * num_train + ["validation"] * num_validation + ["test"] * num_test
    for index, split in enumerate(splits):
        rate = 11025 if index % 3 == 0 else sampling_rate
        seconds = 0.15 + (index * 0.37) % 2.35
        audio = chirp(seconds, rate, seed=index)
        if index % 4 == 0:
            audio = np.stack([audio, 0.5 * audio], axis=1)
        name = f"clip_{index:03d}.{'flac' if index % 2 else 'wav'}"
        sf.write(directory / name, audio, rate)
        rows.append({"file_name": name, "split": split, "duration_s": round(seconds, 3), "speaker": f"s{index % 5}"})
    with open(directory / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return directory


@pytest.fixture(scope="session")
def audiofolder(tmp_path_factory):
    return make_audiofolder(tmp_path_factory.mktemp("data") / "audiofolder")


SCRUBBED_LOADER = """
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


def load_in_clean_process(folder, audio: np.ndarray, workdir) -> dict:
    """Loads `folder` with trust_remote_code in a fresh interpreter that cannot import pqvae_hf; encodes `audio`."""
    import json
    import subprocess
    import sys
    import sysconfig

    np.save(workdir / "audio.npy", audio)
    script = SCRUBBED_LOADER.format(site=sysconfig.get_paths()["purelib"], folder=str(folder),
                                    audio=str(workdir / "audio.npy"))
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=workdir, capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(workdir / "modules"),
                                 "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return pqvae_hf.PQVAEModel(tiny_config())


def warm_up(model, seconds=(1.0, 0.8, 0.6, 1.2), seed=100):
    """One training forward so k-means fits the codebooks to real latents (a fresh codebook is all near-ties)."""
    fe = pqvae_hf.PQVAEFeatureExtractor(sampling_rate=model.config.sampling_rate)
    batch = fe([chirp(s, model.config.sampling_rate, seed + i) for i, s in enumerate(seconds)],
               sampling_rate=model.config.sampling_rate, return_tensors="pt")
    model.train()
    with torch.no_grad():
        model(**batch)
    model.eval()
    return model
