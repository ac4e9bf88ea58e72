import json

import torch
from conftest import tiny_config, warm_up

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
