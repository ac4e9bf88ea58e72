import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor, AutoProcessor

from pqvae_hf import PQVAEConfig, PQVAEFeatureExtractor, PQVAEProcessor


@pytest.fixture
def fe():
    return PQVAEFeatureExtractor(sampling_rate=16000)


def test_single_list_and_batch_inputs(fe):
    one = fe(np.zeros(100, dtype=np.float32), sampling_rate=16000, return_tensors="pt")
    assert one["input_values"].shape == (1, 1, 100) and one["padding_mask"].shape == (1, 100)
    floats = fe([0.0, 0.5, -0.5], sampling_rate=16000)
    assert floats["input_values"].shape == (1, 1, 3)
    batch = fe([np.ones(10), np.ones(4), torch.ones(7)], sampling_rate=16000, return_tensors="pt")
    assert batch["input_values"].shape == (3, 1, 10)
    assert batch["padding_mask"].sum(-1).tolist() == [10, 4, 7]
    assert float(batch["input_values"][1, 0, 4:].abs().sum()) == 0.0
    assert batch["input_values"].dtype == torch.float32
    padded = fe([np.ones(10)], sampling_rate=16000, pad_to_multiple_of=8, return_tensors="np")
    assert padded["input_values"].shape == (1, 1, 16) and padded["padding_mask"].sum() == 10


def test_integer_pcm_is_scaled_to_float(fe):
    pcm16 = np.array([-32768, 0, 16384, 32767], dtype=np.int16)
    out = fe(pcm16, sampling_rate=16000)["input_values"][0, 0]
    assert np.allclose(out, [-1.0, 0.0, 0.5, 32767 / 32768])
    pcm32 = np.array([-(2**31), 2**30], dtype=np.int32)
    assert np.allclose(fe(pcm32, sampling_rate=16000)["input_values"][0, 0], [-1.0, 0.5])
    pcm8 = np.array([0, 128, 255], dtype=np.uint8)
    assert np.allclose(fe(pcm8, sampling_rate=16000)["input_values"][0, 0], [-1.0, 0.0, 127 / 128])


def test_multichannel_needs_explicit_downmix(fe):
    stereo = np.stack([np.ones(50), -np.ones(50) * 0.5]).astype(np.float32)  # (channels, samples)
    with pytest.raises(ValueError, match="2 channels.*mono=True"):
        fe(stereo, sampling_rate=16000)
    mixed = fe(stereo, sampling_rate=16000, mono=True)["input_values"]
    assert np.allclose(mixed, 0.25)
    with pytest.raises(ValueError, match=r"\(samples, channels\).*audio.T"):
        fe(stereo.T, sampling_rate=16000, mono=True)
    assert PQVAEFeatureExtractor(mono=True)(stereo, sampling_rate=16000)["input_values"].shape == (1, 1, 50)


def test_bad_audio_raises(fe):
    with pytest.raises(ValueError, match="44100 Hz.*16000 Hz"):
        fe(np.zeros(10), sampling_rate=44100)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fe([np.zeros(10), np.array([0.0, np.inf])], sampling_rate=16000)
    with pytest.raises(ValueError, match="Example 1 is empty"):
        fe([np.zeros(10), np.zeros(0)], sampling_rate=16000)
    with pytest.raises(ValueError, match="empty list"):
        fe([], sampling_rate=16000)
    with pytest.raises(ValueError, match="unsupported audio dtype"):
        fe(np.array(["a", "b"]), sampling_rate=16000)
    with pytest.raises(ValueError, match="truncation=True"):
        fe(np.zeros(20), sampling_rate=16000, padding="max_length", max_length=10)
    cut = fe(np.zeros(20), sampling_rate=16000, truncation=True, max_length=10)
    assert cut["input_values"].shape == (1, 1, 10)  # only when asked
    with pytest.raises(ValueError, match="feature_size must be 1"):
        PQVAEFeatureExtractor(feature_size=2)


def test_processor_lm_tokens_round_trip_with_offset_and_markers(tmp_path):
    processor = PQVAEProcessor(PQVAEFeatureExtractor(), num_codebooks=2, codebook_size=16, audio_token_offset=1000)
    codes = torch.tensor([[[1, 2, 3], [4, 5, 6]], [[15, 0, 0], [15, 0, 0]]])
    tokens = processor.codes_to_lm_tokens(codes, frame_mask=torch.tensor([[1, 1, 1], [1, 0, 0]]),
                                          add_boundary_tokens=True)
    begin, end = processor.begin_audio_token_id, processor.end_audio_token_id
    assert (begin, end) == (1000 + 256, 1000 + 257) and processor.audio_vocab_size == 258
    assert tokens == [[begin, 1000 + 1 + 4 * 16, 1000 + 2 + 5 * 16, 1000 + 3 + 6 * 16, end], [begin, 1000 + 255, end]]
    assert processor.lm_tokens_to_codes(tokens[0]).tolist() == [[1, 2, 3], [4, 5, 6]]
    assert processor.lm_tokens_to_codes(tokens[1]).tolist() == [[15], [15]]
    with pytest.raises(ValueError, match=r"not audio tokens.*\[1000, 1256\)"):
        processor.lm_tokens_to_codes([5, 1001])
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        processor.codes_to_lm_tokens(torch.full((1, 2, 1), 16))

    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, PQVAEProcessor)
    assert (loaded.num_codebooks, loaded.codebook_size, loaded.audio_token_offset) == (2, 16, 1000)
    assert isinstance(AutoFeatureExtractor.from_pretrained(tmp_path), PQVAEFeatureExtractor)
    batch = loaded([np.zeros(30), np.zeros(20)], sampling_rate=16000, return_tensors="pt")
    assert batch["padding_mask"].sum().item() == 50


def test_config_and_feature_extractor_rates_agree():
    assert PQVAEFeatureExtractor().sampling_rate == PQVAEConfig().sampling_rate


def test_left_padding_is_refused_because_the_frame_mask_assumes_right_padding(fe):
    with pytest.raises(ValueError, match="padding_side"):
        PQVAEFeatureExtractor(sampling_rate=16000, padding_side="left")
    assert PQVAEFeatureExtractor(sampling_rate=16000, padding_side="right").padding_side == "right"
    with pytest.raises(ValueError, match="padding_side"):
        fe([np.ones(10), np.ones(4)], sampling_rate=16000, padding_side="left")
    fe.padding_side = "left"
    with pytest.raises(ValueError, match="padding_side"):
        fe([np.ones(10), np.ones(4)], sampling_rate=16000)


def test_processor_must_match_the_model_it_is_saved_with(tmp_path):
    from conftest import tiny_config

    from pqvae_hf import PQVAEModel

    model = PQVAEModel(tiny_config())  # M = 2, N = 16
    model.save_pretrained(tmp_path)
    feature_extractor = PQVAEFeatureExtractor(sampling_rate=8000)
    PQVAEProcessor(feature_extractor, num_codebooks=2, codebook_size=256).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="codebook_size"):
        AutoProcessor.from_pretrained(tmp_path)
    PQVAEProcessor(feature_extractor, num_codebooks=2, codebook_size=16).save_pretrained(tmp_path)
    assert AutoProcessor.from_pretrained(tmp_path).codebook_size == 16
    processor = AutoProcessor.from_pretrained(tmp_path)
    processor.check_model_config(model.config)
    with pytest.raises(ValueError, match="num_codebooks"):
        processor.check_model_config(tiny_config(num_codebooks=4))


def test_padding_goes_through_sequence_feature_extractor_pad_and_honours_return_attention_mask(fe, monkeypatch):
    calls = []
    original = PQVAEFeatureExtractor.pad
    monkeypatch.setattr(PQVAEFeatureExtractor, "pad", lambda self, *a, **k: calls.append(k) or original(self, *a, **k))
    out = fe([np.ones(10), np.ones(3)], sampling_rate=16000, pad_to_multiple_of=8, return_tensors="pt")
    assert calls and calls[-1]["pad_to_multiple_of"] == 8
    assert out["input_values"].shape == (2, 1, 16) and out["padding_mask"].dtype == torch.int64
    assert out["padding_mask"].sum(-1).tolist() == [10, 3]
    no_mask = fe([np.ones(10), np.ones(3)], sampling_rate=16000, return_attention_mask=False, return_tensors="np")
    assert set(no_mask) == {"input_values"} and no_mask["input_values"].shape == (2, 1, 10)
    quiet = PQVAEFeatureExtractor(sampling_rate=16000, return_attention_mask=False)
    assert "padding_mask" not in quiet(np.ones(5), sampling_rate=16000)
    assert "padding_mask" in quiet(np.ones(5), sampling_rate=16000, return_attention_mask=True)
