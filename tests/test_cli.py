"""The `pqvae` command line on a generated clip with a tiny model (the shipped checkpoint is tested separately)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import chirp, tiny_config, warm_up

from pqvae_hf import PQVAEModel
from pqvae_hf.cli import run as main
from pqvae_hf.inference import decode_long, encode_long


def _tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config()))
    model.save_pretrained(tmp_path / "tiny")
    return model, str(tmp_path / "tiny")


def test_info_tokenize_reconstruct(tmp_path, capsys):
    model, path = _tiny_checkpoint(tmp_path)
    stereo_22k = np.stack([chirp(1.3, 22050, 5), chirp(1.3, 22050, 6)], axis=1)
    sf.write(tmp_path / "clip.flac", stereo_22k, 22050)

    info = main(["info", path])
    assert info["composite_codebook_size (N^M)"] == 256 and info["bits_per_second"] == 8 * 8000 / 64

    summary = main(["tokenize", str(tmp_path / "clip.flac"), "--model", path, "--out", str(tmp_path / "codes.json")])
    err = capsys.readouterr().err
    assert "2 channels, averaging them to mono" in err and "resampling 22050 Hz -> 8000 Hz" in err
    saved = json.loads((tmp_path / "codes.json").read_text())
    expected_frames = round(1.3 * 8000) // 64 + 1
    assert summary["frames"] == expected_frames == len(saved["composite_ids"])
    assert np.array(saved["audio_codes"]).shape == (2, expected_frames)
    assert summary["tokens_per_second"] == round(expected_frames / 1.3, 2)
    main(["tokenize", str(tmp_path / "clip.flac"), "--model", path, "--out", str(tmp_path / "codes.npy")])
    assert np.array_equal(np.load(tmp_path / "codes.npy"), saved["audio_codes"])

    result = main(["reconstruct", str(tmp_path / "clip.flac"), "--model", path, "-o", str(tmp_path / "out.wav"),
                   "--plot", str(tmp_path / "cmp.png")])
    written, rate = sf.read(tmp_path / "out.wav")
    assert rate == 8000 and len(written) == round(1.3 * 8000)  # same length as the (resampled) input
    assert (tmp_path / "cmp.png").stat().st_size > 10_000
    assert result["tokens"] == expected_frames and result["waveform_mel_l1"] > 0 and result["decoded_mel_l1"] > 0
    assert result["stoi"] is None or -1 <= result["stoi"] <= 1


def test_cli_errors_are_clear(tmp_path):
    _, path = _tiny_checkpoint(tmp_path)
    (tmp_path / "bad.wav").write_bytes(b"RIFF but not audio")
    process = subprocess.run([sys.executable, "-m", "pqvae_hf.cli", "tokenize", str(tmp_path / "bad.wav"),
                              "--model", path], capture_output=True, text=True)
    assert process.returncode != 0 and "bad.wav could not be decoded (" in process.stderr
    process = subprocess.run([sys.executable, "-m", "pqvae_hf.cli", "info", "--model", str(tmp_path / "nothing/x")],
                             capture_output=True, text=True)
    assert process.returncode != 0 and "does not exist" in process.stderr


def test_chunked_long_audio_matches_whole_encoding(tmp_path):
    model, _ = _tiny_checkpoint(tmp_path)
    audio = chirp(20.0, 8000, 9)
    whole = model.encode(torch.from_numpy(audio)[None, None]).audio_codes[0]
    chunked = encode_long(model, audio, chunk_seconds=1.5)
    assert chunked.shape == whole.shape
    agreement = float((chunked == whole).float().mean())
    assert agreement >= 0.999, agreement  # stated tolerance: only float near-ties may flip
    mel_whole = model.decode(whole[None], return_waveform=False).mel[0]
    mel_chunked, audio_out = decode_long(model, whole, num_samples=len(audio), chunk_seconds=1.5)
    assert torch.allclose(mel_chunked, mel_whole, atol=1e-4)
    assert audio_out.shape == (len(audio),)


def test_metrics_that_cannot_be_computed_are_null_with_a_reason(tmp_path):
    pytest.importorskip("pystoi")
    _, path = _tiny_checkpoint(tmp_path)
    for seconds, samples in ((0.1, 800), ("under one hop", 50)):
        sf.write(tmp_path / "short.wav", chirp(1.0, 8000, 7)[:samples], 8000)
        result = main(["reconstruct", str(tmp_path / "short.wav"), "--model", path, "-o", str(tmp_path / "o.wav")])
        assert sf.info(str(tmp_path / "o.wav")).frames == samples, seconds
        assert result["stoi"] is None and result["stoi_unavailable"].startswith("clip too short for STOI"), result
        assert result["pesq_wb"] is None and "PESQ could not be computed" in result["pesq_unavailable"], result
        assert np.isfinite(result["decoded_mel_l1"]) and np.isfinite(result["waveform_mel_l1"])


def test_demo_names_its_two_mel_distances_apart_and_lists_every_output(tmp_path, capsys):
    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config(vocoder="neural", vocoder_hidden_size=32, vocoder_intermediate_size=64,
                                           vocoder_num_layers=2)))
    model.save_pretrained(tmp_path / "tiny")
    summary = main(["demo", "--model", str(tmp_path / "tiny"), "--out-dir", str(tmp_path / "demo")])
    err = capsys.readouterr().err
    listed = err.split(f"Demo outputs in {tmp_path / 'demo'}: ")[1].splitlines()[0].split(", ")
    assert sorted(listed) == sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert "reconstruction_griffin_lim.wav" in listed
    assert {"decoded_mel_l1", "waveform_mel_l1"} <= set(summary) and "waveform_mel_l1" in summary["griffin_lim"]
    assert not {"token_mel_l1", "log_mel_l1"} & set(summary)
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["decoded_mel_l1"] == summary["decoded_mel_l1"]
