import json

import pytest
import torch
from conftest import chirp, tiny_config, warm_up

from pqvae_hf import PQVAEModel
from pqvae_hf.evaluation import main as evaluate


def test_evaluation_script_on_generated_split(audiofolder, tmp_path):
    torch.manual_seed(0)
    warm_up(PQVAEModel(tiny_config(griffin_lim_iters=2))).save_pretrained(tmp_path / "tiny")
    results = evaluate(["--model", str(tmp_path / "tiny"), "--dataset_dir", str(audiofolder), "--split", "test",
                        "--split_column", "split", "--waveform_clips", "2", "--min_waveform_seconds", "0.5",
                        "--output", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == results
    tokens = results["tokens"]
    assert tokens["clips"] == 6 and tokens["frames"] == tokens["num_frames"] > 0
    assert 0 < tokens["log_mel_l1"] < 10 and tokens["bits_per_second"] == 1000
    assert all(1 <= u <= 16 for u in tokens["codebook_usage"])
    assert "resampled" in results["decoding"] and "downmixed" in results["decoding"]
    scores = results["waveforms"]["griffin_lim"]
    assert scores["clips_scored"]["log_mel_l1"] == 2
    assert scores["stoi"] is None or -1 <= scores["stoi"] <= 1


def test_long_clips_are_chunked_with_context_and_match_whole_clip_evaluation(audiofolder):
    from pqvae_hf.data import load_audio_dataset
    from pqvae_hf.evaluation import DatasetClips, accumulate_reconstruction

    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config()))
    data = load_audio_dataset(dataset_dir=str(audiofolder), split="train", split_column="split")
    whole = accumulate_reconstruction(model, DatasetClips(data, 8000), batch_size=4, chunk_seconds=60.0,
                                      progress=False)
    # 0.3 s chunks: every clip longer than that is streamed from its file and evaluated in pieces with context.
    chunked = accumulate_reconstruction(model, DatasetClips(data, 8000), batch_size=3, chunk_seconds=0.3,
                                        progress=False)
    assert chunked.frames == whole.frames
    assert chunked.means()["mel_l1"] == pytest.approx(whole.means()["mel_l1"], rel=1e-5)
    assert chunked.means()["mel_l2"] == pytest.approx(whole.means()["mel_l2"], rel=1e-5)
    assert chunked.stats.compute()["codebook_usage"] == whole.stats.compute()["codebook_usage"]
    assert chunked.stats.compute()["codebook_perplexity"] == pytest.approx(
        whole.stats.compute()["codebook_perplexity"], rel=1e-3)  # only float near-ties may flip a code


def test_memory_is_bounded_by_the_chunk_not_the_clip(tmp_path, monkeypatch):
    """A 5-minute clip: no forward sees more than batch x chunk (+ context), and the file is streamed, never held."""
    import tracemalloc

    import numpy as np
    import soundfile as sf
    from datasets import Audio, Dataset

    from pqvae_hf.evaluation import DatasetClips, accumulate_reconstruction

    torch.manual_seed(0)
    model = warm_up(PQVAEModel(tiny_config()))
    minutes = 5
    long_clip = np.tile(chirp(10.0, 8000, 4), 6 * minutes)
    sf.write(tmp_path / "long.wav", long_clip, 8000, subtype="PCM_16")
    sf.write(tmp_path / "short.wav", chirp(1.0, 8000, 5), 8000, subtype="PCM_16")
    del long_clip
    data = Dataset.from_dict({"audio": [str(tmp_path / "long.wav"), str(tmp_path / "short.wav")]}).cast_column(
        "audio", Audio(decode=False))
    seen = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda values, mask: seen.append(values.numel()) or forward(values, mask))
    tracemalloc.start()
    totals = accumulate_reconstruction(model, DatasetClips(data, 8000), batch_size=2, chunk_seconds=2.0,
                                       progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert totals.frames == (minutes * 60 * 8000) // 64 + 1 + 8000 // 64 + 1  # every frame of both clips counted
    assert max(seen) <= 2 * (2.0 * 8000 + 2 * 64 * 16)  # two chunks with their context, whatever the clip length
    assert peak < 4 * 2**20, peak  # the whole clip as float32 would be 9.6 MB
