"""Packed corpus (shards + index) and the single-process tokenizer / adversarial vocoder training on it."""

import glob
import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY, TINY_OVERRIDES
from pqvae_hf import PQVAEConfig, PQVAEModel
from pqvae_hf.data import read_audio_file, to_model_audio
from pqvae_hf.discriminators import (
    MelDiscriminator,
    MultiPeriodDiscriminator,
    MultiResolutionDiscriminator,
    discriminator_loss,
    feature_matching_loss,
)
from pqvae_hf.packed_corpus import build, load_split
from pqvae_hf.packed_training import (
    CropSampler,
    Schedule,
    load_parts,
    load_tokenizer,
    load_vocoder_weights,
    main,
    parse_overrides,
    save_parts,
)


@pytest.fixture(scope="module")
def pack(audiofolder, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pack")
    build(str(audiofolder), str(directory), ["train", "validation"], sampling_rate=8000, num_shards=3, codec="flac",
          num_workers=1)
    return directory


def test_pack_round_trip_is_exact_with_flac(audiofolder, pack, tmp_path):
    audio, clips, rate = load_split(str(pack), "train", num_workers=1)
    assert rate == 8000 and len(clips) == 24
    with open(audiofolder / "metadata.csv") as handle:
        names = [line.split(",")[0] for line in handle.read().splitlines()[1:25]]
    for clip, name in zip(clips, names):
        original = to_model_audio(*read_audio_file(str(audiofolder / name)), 8000)
        assert clip["file_name"] == name and clip["length"] == len(original)
        piece = audio[clip["start"]: clip["start"] + clip["length"]]
        np.testing.assert_allclose(piece, original, atol=1.5 / 2**23)  # 24-bit FLAC
    # The decoded cache is reused and gives the same split.
    first = load_split(str(pack), "validation", 1, str(tmp_path))
    again = load_split(str(pack), "validation", 1, str(tmp_path))
    assert os.path.isfile(tmp_path / "validation.npy")
    np.testing.assert_array_equal(first[0], again[0])
    assert first[1] == again[1]
    with pytest.raises(ValueError, match="Split 'test' is not in"):
        load_split(str(pack), "test", 1)


def test_processes_started_together_share_one_cache(pack, tmp_path, monkeypatch):
    # Two training runs started side by side both decode the pack and write the cache; neither may fail or leave
    # a half-written file (the first version renamed one shared temporary file and crashed the slower process).
    import multiprocessing

    context = multiprocessing.get_context("fork")
    all_written, results = context.Barrier(3), context.Queue()
    real_replace = os.replace

    def replace_once_all_have_written(*args, **kwargs):  # makes the race certain instead of a matter of timing
        all_written.wait(timeout=60)
        real_replace(*args, **kwargs)

    def load(slot):
        try:
            results.put((slot, float(load_split(str(pack), "validation", 1, str(tmp_path))[0].sum(dtype=np.float64))))
        except Exception as error:  # noqa: BLE001 - reported to the parent below
            results.put((slot, repr(error)))

    monkeypatch.setattr(os, "replace", replace_once_all_have_written)
    workers = [context.Process(target=load, args=(slot,)) for slot in range(3)]
    for worker in workers:
        worker.start()
    outcome = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join()
    monkeypatch.setattr(os, "replace", real_replace)
    reference = load_split(str(pack), "validation", 1)[0]  # decoded afresh, no cache
    expected = float(reference.sum(dtype=np.float64))
    assert outcome == {0: expected, 1: expected, 2: expected}
    assert sorted(os.listdir(tmp_path)) == ["validation.npy", "validation.npy.json"]
    np.testing.assert_array_equal(load_split(str(pack), "validation", 1, str(tmp_path))[0], reference)


def test_flac_pack_keeps_quiet_bands_at_the_floor(tmp_path):
    """At 16 bits, rounding noise filled the empty 4-8 kHz band of 8 kHz recordings resampled to 16 kHz, and a
    tokenizer trained on that pack decoded the noise floor instead of silence; the 24-bit pack keeps the band empty."""
    from pqvae_hf.modeling import PQVAEConfig
    from pqvae_hf.modeling.modeling_pqvae import LogMelSpectrogram

    import soundfile as sf
    import soxr

    rate = 16000
    narrowband = np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32)  # 1 s recorded at 8 kHz
    tone = soxr.resample(narrowband, 8000, rate, quality="HQ").astype(np.float32)  # 4-8 kHz empty, as in the corpus

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    sf.write(corpus / "a.wav", tone, rate, subtype="FLOAT")
    (corpus / "metadata.csv").write_text("file_name,split\na.wav,train\n")
    front_end = LogMelSpectrogram(PQVAEConfig(vocoder="none"))
    floor = float(front_end(torch.zeros(1, rate)).min())
    top_band = {}
    for bits in (16, 24):
        build(str(corpus), str(tmp_path / f"pack{bits}"), ["train"], sampling_rate=rate, num_shards=1, codec="flac",
              num_workers=1, pcm_bits=bits)
        audio, _, _ = load_split(str(tmp_path / f"pack{bits}"), "train", 1)
        top_band[bits] = float(front_end(torch.from_numpy(np.array(audio))[None])[0, -10:].mean())
    original = float(front_end(torch.from_numpy(tone)[None])[0, -10:].mean())  # top 10 mel bands: above ~6.5 kHz
    assert abs(top_band[24] - original) < 0.3 and original < floor + 1.0
    assert top_band[16] > original + 1.5  # what the earlier pack did


def test_crop_sampler_masks_short_clips_and_limits_the_peak():
    audio = np.concatenate([np.full(100, 0.5, np.float32), np.full(1000, -0.9, np.float32)])
    clips = [{"start": 0, "length": 100}, {"start": 100, "length": 1000}]
    sampler = CropSampler(audio, clips, 400, torch.device("cpu"), torch.Generator().manual_seed(0))
    batch, mask = sampler.batch(64)
    lengths = mask.sum(1)
    assert set(lengths.tolist()) == {100, 400}
    assert bool((batch[mask == 0] == 0).all())
    assert float(batch.abs().max()) <= 0.99 + 1e-6
    # Short clips are drawn in proportion to their length: 100 / (100 + 400) of the time, about 13 of 64.
    assert 4 <= int((lengths == 100).sum()) <= 24


def test_schedule_ends_low_when_the_time_budget_runs_out():
    schedule = Schedule(max_steps=1000, warmup_steps=10, time_budget_s=60.0)
    assert schedule.factor(0, 0.0) == pytest.approx(0.1)
    assert schedule.factor(500, 0.0) == pytest.approx(0.5)
    assert schedule.factor(100, 59.999) == pytest.approx(0.0, abs=1e-6)


def test_parse_overrides_types():
    assert parse_overrides("dual_decoding_weight=0,num_encoder_layers=6,vocoder=none,use_ema=false,mel_fmax=none") == {
        "dual_decoding_weight": 0.0, "num_encoder_layers": 6, "vocoder": "none", "use_ema": False, "mel_fmax": None}
    assert isinstance(parse_overrides("dual_decoding_weight=0")["dual_decoding_weight"], float)
    with pytest.raises(ValueError, match="name=value"):
        parse_overrides("num_encoder_layers")


def test_save_parts_splits_and_joins(tmp_path):
    state = {f"w{i}": torch.randn(1000) for i in range(5)}  # 4,000 bytes each
    paths = save_parts(state, str(tmp_path), "model", max_bytes=9000)
    assert len(paths) == 3
    joined = load_parts(str(tmp_path), "model")
    assert all(torch.equal(joined[k], v) for k, v in state.items())
    with pytest.raises(FileNotFoundError, match="No other-part"):
        load_parts(str(tmp_path), "other")


def test_vocoder_weights_load_alike_from_every_place_they_are_kept(tmp_path):
    """A vocoder run's parts (folder or DIR/vocoder), a vocoder .safetensors, and a whole checkpoint (folder or its
    model.safetensors, tokenizer weights left out) all give the same PQVAEVocoder state dict."""
    model = PQVAEModel(PQVAEConfig(**TINY, vocoder="neural"))
    expected = model.vocoder.state_dict()
    model.save_pretrained(tmp_path / "checkpoint")
    (tmp_path / "run").mkdir()
    save_parts(expected, str(tmp_path / "run"), "vocoder", max_bytes=50_000)
    save_file({k: v.contiguous() for k, v in expected.items()}, tmp_path / "vocoder.safetensors")
    sources = [tmp_path / "run", tmp_path / "run" / "vocoder", tmp_path / "vocoder.safetensors",
               tmp_path / "checkpoint", tmp_path / "checkpoint" / "model.safetensors"]
    for source in sources:
        loaded = load_vocoder_weights(str(source))
        assert loaded.keys() == expected.keys(), source
        assert all(torch.equal(loaded[k], v) for k, v in expected.items()), source
    assert len(glob.glob(str(tmp_path / "run" / "vocoder-part-*.safetensors"))) > 1
    with pytest.raises(FileNotFoundError, match="No vocoder-part"):
        load_vocoder_weights(str(tmp_path / "empty" / "vocoder"))


def _tokenizer_args(pack, out, steps, *extra):
    return ["tokenizer", "--pack_dir", str(pack), "--output_dir", str(out), "--device", "cpu", "--num_workers", "1",
            "--max_steps", str(steps), "--batch_size", "4", "--crop_seconds", "0.5", "--warmup_steps", "2",
            "--logging_steps", "2", "--eval_steps", "3", "--config_overrides", TINY_OVERRIDES + ",vocoder=none",
            *extra]


def _vocoder_args(pack, out, tokenizer, *extra, config_overrides=""):
    """Two steps of a tiny vocoder on `tokenizer`'s decoded mels; `config_overrides` adds to its size."""
    return ["vocoder", "--pack_dir", str(pack), "--output_dir", str(out), "--device", "cpu", "--num_workers", "1",
            "--max_steps", "2", "--batch_size", "2", "--segment_seconds", "0.25", "--tokenizer", str(tokenizer),
            "--eval_steps", "2", "--logging_steps", "1", "--eval_clips", "2", "--config_overrides",
            "vocoder_hidden_size=16,vocoder_intermediate_size=32,vocoder_num_layers=1" + config_overrides, *extra]


def test_tokenizer_training_resumes_exactly(audiofolder, pack, tmp_path):
    assert main(_tokenizer_args(pack, tmp_path / "whole", 6, "--corpus_dir", str(audiofolder))) == 0
    assert main(_tokenizer_args(pack, tmp_path / "cut", 6, "--stop_at_step", "3")) == 0
    assert json.loads((tmp_path / "cut" / "log.json").read_text())["train"][-1]["step"] == 2
    assert main(_tokenizer_args(pack, tmp_path / "cut", 6, "--resume")) == 0
    whole, resumed = load_parts(str(tmp_path / "whole"), "tokenizer"), load_parts(str(tmp_path / "cut"), "tokenizer")
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], msg=key)
    log = json.loads((tmp_path / "whole" / "log.json").read_text())
    assert log["steps"] == 6 and len(log["eval"]) == 2
    assert 0 < log["final_eval"]["mel_l1"] < 10 and log["final_eval"]["composite_usage"] >= 1
    # The same model scored by pqvae_hf.evaluation on the original files: the 24-bit pack holds the same audio.
    original = log["final_eval"]["original_files"]
    assert original["clips"] == 6 and original["log_mel_l1"] == pytest.approx(log["final_eval"]["mel_l1"], rel=0.02)
    model = load_tokenizer(str(tmp_path / "whole"))
    assert model.config.codebook_size == 16 and not model.training


def test_tokenizer_mel_gan_changes_the_decoder_and_resumes_exactly(pack, tmp_path):
    gan = ("--mel_adversarial_weight", "0.5", "--mel_feature_matching_weight", "1", "--mel_adversarial_start_step", "2")
    assert main(_tokenizer_args(pack, tmp_path / "whole", 6, *gan)) == 0
    assert main(_tokenizer_args(pack, tmp_path / "cut", 6, *gan, "--stop_at_step", "3")) == 0
    with pytest.raises(ValueError, match="mel_adversarial_weight"):  # the discriminator's state cannot be dropped
        main(_tokenizer_args(pack, tmp_path / "cut", 6, "--resume"))
    assert main(_tokenizer_args(pack, tmp_path / "cut", 6, *gan, "--resume")) == 0
    # The same run whose decoder never feels the adversary (same discriminator, same random draws).
    assert main(_tokenizer_args(pack, tmp_path / "plain", 6, *gan[:-1], "100")) == 0
    whole, resumed = load_parts(str(tmp_path / "whole"), "tokenizer"), load_parts(str(tmp_path / "cut"), "tokenizer")
    plain = load_parts(str(tmp_path / "plain"), "tokenizer")
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], msg=key)
    decoder_keys = [key for key in whole if key.startswith("decoder.")]
    assert any(not torch.equal(whole[key], plain[key]) for key in decoder_keys)  # the adversary reached the decoder
    train = json.loads((tmp_path / "whole" / "log.json").read_text())["train"]
    assert [sorted(k for k in entry if k.startswith("mel_")) for entry in train] == [
        ["mel_discriminator"], ["mel_adversarial", "mel_discriminator", "mel_feature_matching"],
        ["mel_adversarial", "mel_discriminator", "mel_feature_matching"]]
    assert all(entry["mel_discriminator"] > 0 for entry in train)


def test_mel_discriminator_ignores_padded_frames():
    discriminator = MelDiscriminator(floor=math.log(1e-5))
    mel, mask = torch.randn(2, 80, 40), torch.ones(2, 40, dtype=torch.long)
    mask[1, 30:] = 0
    other = mel.clone()
    other[1, :, 30:] = 5.0  # what lies in padded frames
    (scores, features), (other_scores, _) = discriminator(mel, mask), discriminator(other, mask)
    assert torch.equal(scores, other_scores) and len(features) == 6
    assert not torch.equal(discriminator(other)[0], scores)  # without the mask the padding shows


def test_adversarial_vocoder_on_decoded_mels(pack, tmp_path):
    main(_tokenizer_args(pack, tmp_path / "tok", 2))
    phase = ["--decoded_mel_fraction", "0.5", "--phase_weight", "1.0"]
    assert main(_vocoder_args(pack, tmp_path / "voc", tmp_path / "tok", *phase)) == 0
    log = json.loads((tmp_path / "voc" / "log.json").read_text())
    assert set(log["final_eval"]) == {"step", "true_mel", "token_mel"}
    assert {"adversarial", "feature_matching", "discriminator", "inst_freq_error", "group_delay_error"} <= set(
        log["train"][0])
    for kind in ("true_mel", "token_mel"):  # anti-wrapped phase errors lie in (0, pi]; an untrained phase is far off
        errors = log["final_eval"][kind]
        assert 0.3 < errors["inst_freq_error"] <= np.pi and 0.3 < errors["group_delay_error"] <= np.pi
    state = load_parts(str(tmp_path / "voc"), "vocoder")
    assert all(key.startswith("vocoder.") for key in state)
    with pytest.raises(SystemExit):  # token mels need a tokenizer
        main(_vocoder_args(pack, tmp_path / "no_tokenizer", "", "--decoded_mel_fraction", "0.5"))
    # The phase of the output waveform instead of the predicted one: chord distances in [0, 2], logged the same way.
    assert main(_vocoder_args(pack, tmp_path / "voc_output_phase", tmp_path / "tok", *phase,
                              "--phase_loss_on", "output")) == 0
    entry = json.loads((tmp_path / "voc_output_phase" / "log.json").read_text())["train"][0]
    assert 0 < entry["inst_freq_error"] <= 2 and 0 < entry["group_delay_error"] <= 2


def test_vocoder_with_magnitude_prior_from_a_plain_one_and_assembled(pack, tmp_path):
    """A plain vocoder converted to the magnitude prior (--restart_magnitude_from_prior), trained, then merged with
    its tokenizer: the checkpoint's config takes the prior from the vocoder folder, so its weights are read right."""
    from pqvae_hf.assemble_checkpoint import assemble

    main(_tokenizer_args(pack, tmp_path / "tok", 2))
    size = "vocoder_hidden_size=16,vocoder_intermediate_size=32,vocoder_num_layers=1"
    common = ["vocoder", "--pack_dir", str(pack), "--device", "cpu", "--num_workers", "1", "--max_steps", "2",
              "--batch_size", "2", "--segment_seconds", "0.25", "--eval_steps", "2", "--eval_clips", "2",
              "--adversarial_start_step", "100", "--logging_steps", "1",
              "--tokenizer", str(tmp_path / "tok")]  # its mel settings
    assert main(common + ["--output_dir", str(tmp_path / "plain"), "--config_overrides", size]) == 0
    assert "inst_freq_error" not in json.loads((tmp_path / "plain" / "log.json").read_text())["train"][0]  # weight 0
    assert main(common + ["--output_dir", str(tmp_path / "prior"), "--init_vocoder", str(tmp_path / "plain" / "vocoder"),
                          "--restart_magnitude_from_prior", "--learning_rate", "0",
                          "--config_overrides", size + ",vocoder_magnitude_prior=mel_pseudo_inverse"]) == 0
    plain, prior = load_parts(str(tmp_path / "plain"), "vocoder"), load_parts(str(tmp_path / "prior"), "vocoder")
    rows = prior["vocoder.proj_out.weight"].shape[0] // 2
    assert prior["vocoder.proj_out.weight"][:rows].abs().sum() == 0  # learning rate 0: still exactly the prior
    torch.testing.assert_close(prior["vocoder.proj_out.weight"][rows:], plain["vocoder.proj_out.weight"][rows:])
    model = assemble(str(tmp_path / "tok"), str(tmp_path / "prior"), str(tmp_path / "merged"))
    assert model.config.vocoder_magnitude_prior == "mel_pseudo_inverse" and model.config.vocoder_hidden_size == 16
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["vocoder_magnitude_prior"] == "mel_pseudo_inverse"
    log_mel = torch.randn(1, model.config.num_mel_bins, 6) - 4.0
    with torch.no_grad():
        magnitude, _ = model.vocoder.magnitude_and_phase(log_mel)
    pseudo_inverse = torch.linalg.pinv(model.front_end.mel_filters.double()).float()
    expected = (pseudo_inverse @ log_mel.exp()).clamp_min(model.config.log_floor)
    torch.testing.assert_close(magnitude, expected, atol=1e-5, rtol=1e-4)
    # A decode-time setting passed at assembly lands in the saved config; the vocoder's fields are kept.
    tuned = assemble(str(tmp_path / "tok"), str(tmp_path / "prior"), str(tmp_path / "tuned"),
                     {"decoded_mel_contrast": 1.2})
    saved = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert saved["decoded_mel_contrast"] == 1.2 and saved["vocoder_magnitude_prior"] == "mel_pseudo_inverse"
    assert tuned.config.decoded_mel_contrast == 1.2
    # The prior vocoder as the mel vocoder beside the plain one: each keeps its own fields and weights.
    both = assemble(str(tmp_path / "tok"), str(tmp_path / "plain"), str(tmp_path / "both"), None,
                    str(tmp_path / "prior"), {"mel_vocoder_phase_refinement_iters": 3})
    saved = json.loads((tmp_path / "both" / "config.json").read_text())
    assert (saved["vocoder_magnitude_prior"], saved["mel_vocoder"], saved["mel_vocoder_magnitude_prior"],
            saved["mel_vocoder_phase_refinement_iters"]) == ("none", "neural", "mel_pseudo_inverse", 3)
    for module, weights in ((both.vocoder, plain), (both.mel_vocoder, prior)):
        torch.testing.assert_close(module.proj_out.weight, weights["vocoder.proj_out.weight"], atol=0, rtol=0)
    # Reassembled without one, a checkpoint that had a mel vocoder as its tokenizer keeps no untrained one.
    assert assemble(str(tmp_path / "both"), str(tmp_path / "plain"), str(tmp_path / "again")).mel_vocoder is None
    with pytest.raises(ValueError, match="same size"):
        assemble(str(tmp_path / "tok"), str(tmp_path / "plain"), str(tmp_path / "bad"), {"vocoder_hidden_size": 32},
                 str(tmp_path / "prior"))


def test_vocoder_learns_from_token_mels_post_filtered_by_its_own_config(pack, tmp_path, monkeypatch):
    """`--config_overrides decoded_mel_contrast=C` trains the vocoder on token mels post-filtered with C (what `decode`
    will feed it in the merged checkpoint), not with the tokenizer folder's factor."""
    from pqvae_hf.modeling.modeling_pqvae import PQVAEModel

    main(_tokenizer_args(pack, tmp_path / "tok", 2))
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["decoded_mel_contrast"] == 1.0
    seen, original = [], PQVAEModel.postfilter_mel

    def recording(self, mel, frame_mask=None):
        seen.append(self.config.decoded_mel_contrast)
        return original(self, mel, frame_mask)

    monkeypatch.setattr(PQVAEModel, "postfilter_mel", recording)
    assert main(_vocoder_args(pack, tmp_path / "voc", tmp_path / "tok", "--decoded_mel_fraction", "1.0",
                              "--adversarial_start_step", "100", config_overrides=",decoded_mel_contrast=1.5")) == 0
    assert seen and set(seen) == {1.5}
    assert json.loads((tmp_path / "voc" / "config.json").read_text())["decoded_mel_contrast"] == 1.5


def test_discriminators_score_each_sub_discriminator_and_losses_vanish_when_matched():
    waveform = torch.randn(2, 4000)
    for discriminator in (MultiPeriodDiscriminator(), MultiResolutionDiscriminator()):
        scores, features = discriminator(waveform)
        assert len(scores) == len(features) == len(discriminator.discriminators)
        assert all(s.shape[0] == 2 for s in scores)
        assert float(feature_matching_loss(features, features)) == 0.0
    ones, zeros = [torch.ones(2, 3)], [torch.zeros(2, 3)]
    assert float(discriminator_loss(ones, zeros)) == 0.0
    assert float(discriminator_loss(zeros, ones)) == 2.0
