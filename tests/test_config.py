import json
from pathlib import Path

import pytest
from transformers import AutoConfig

from pqvae_hf import PQVAEConfig


def test_defaults_and_derived_properties():
    config = PQVAEConfig()
    assert config.frame_rate == 16000 / 256 == 62.5
    assert config.composite_codebook_size == 256**2 == 65536
    assert config.bits_per_frame == 16
    assert config.bits_per_second == 1000
    assert config.codebook_subdim == 32
    assert config.num_frames(16000) == 63 and config.num_frames(255) == 1 and config.num_frames(256) == 2
    rvq = PQVAEConfig(quantizer_type="rvq", num_codebooks=3, codebook_size=1024)
    assert rvq.codebook_subdim == 64 and rvq.composite_codebook_size == 1024**3 and rvq.bits_per_frame == 30


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(codebook_dim=63, num_codebooks=2), "divisible by num_codebooks"),
        (dict(codebook_size=1), "codebook_size"),
        (dict(quantizer_type="vq", num_codebooks=2), "num_codebooks=1"),
        (dict(quantizer_type="lfq"), "quantizer_type"),
        (dict(kernel_size=4), "odd"),
        (dict(hop_length=2048), "hop_length"),
        (dict(win_length=2048), "win_length"),
        (dict(mel_fmax=9000.0), "mel_fmax"),
        (dict(num_mel_bins=600, n_fft=512, win_length=512), "num_mel_bins"),
        (dict(dual_decoding_weight=-1.0), "dual_decoding_weight"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(mel_l1_weight=0.0, mel_l2_weight=0.0), "mel_l1_weight"),
        (dict(vocoder="wavenet"), "vocoder"),
        (dict(vocoder_magnitude_prior="mel"), "vocoder_magnitude_prior"),
        (dict(num_codebooks=0), "num_codebooks"),
        (dict(entropy_loss_weight=-0.1), "entropy_loss_weight"),
        (dict(entropy_temperature=0.0), "entropy_temperature"),
        (dict(subspace_rotation="pca"), "subspace_rotation"),
        (dict(subspace_rotation="opq", quantizer_type="rvq"), "quantizer_type='pq'"),
        (dict(rotation_update_interval=0), "rotation_update_interval"),
        (dict(quantizer_type="rvq", use_cosine_codebook=True), "use_cosine_codebook"),
        (dict(codebook_size=65536, num_codebooks=4, codebook_dim=64), "int64"),
        (dict(quantizer_type="rvq", codebook_size=2**32, num_codebooks=2), "int64"),
    ],
)
def test_invalid_configs_raise_clear_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PQVAEConfig(**kwargs)


def test_round_trip_through_json_and_auto_config(tmp_path):
    config = PQVAEConfig(num_codebooks=4, codebook_size=16, codebook_dim=32, dual_decoding_weight=0.5, use_ema=False)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "pqvae" and saved["num_codebooks"] == 4
    assert saved["auto_map"]["AutoConfig"] == "configuration_pqvae.PQVAEConfig"
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PQVAEConfig)
    drop = {"_name_or_path"}  # where it was loaded from, the only field that differs
    assert {k: v for k, v in loaded.to_dict().items() if k not in drop} == {
        k: v for k, v in config.to_dict().items() if k not in drop
    }
    assert loaded.composite_codebook_size == 16**4


def test_dead_code_threshold_is_relative_by_default_and_old_configs_keep_their_absolute_meaning(tmp_path):
    config = PQVAEConfig()
    assert (config.dead_code_threshold, config.dead_code_threshold_mode) == (0.2, "relative")
    config.save_pretrained(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["dead_code_threshold_mode"] == "relative"
    assert AutoConfig.from_pretrained(tmp_path / "new").dead_code_threshold_mode == "relative"
    # A config.json written before the field existed (the previous shipped checkpoint's, git b69a51c) meant an
    # absolute count per batch: the shipped config without the field stands for it.
    shipped = json.loads((Path(__file__).resolve().parent.parent / "checkpoints" / "pqvae-speech-small"
                          / "config.json").read_text())
    assert shipped["dead_code_threshold_mode"] == "absolute" and shipped["dead_code_threshold"] == 1.0
    del shipped["dead_code_threshold_mode"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text(json.dumps(shipped))
    old = AutoConfig.from_pretrained(tmp_path / "old")
    assert (old.dead_code_threshold, old.dead_code_threshold_mode) == (1.0, "absolute")
    assert PQVAEConfig.from_dict(shipped).dead_code_threshold_mode == "absolute"
    with pytest.raises(ValueError, match="dead_code_threshold_mode"):
        PQVAEConfig(dead_code_threshold_mode="per_gpu")
