# Copyright 2026 The pqvae-hf authors. Apache-2.0.
"""Feature extractor for PQ-VAE: raw audio -> `input_values` (B, 1, T) + `padding_mask` (B, T), EnCodec-style.

Part of the Hub payload: imports numpy, transformers and (optionally) torch only.
"""

from __future__ import annotations

import numpy as np
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.utils import logging

logger = logging.get_logger(__name__)

_INTEGER_SCALES = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}


class PQVAEFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Prepares mono audio for [`PQVAEModel`].

    Input rules (every violation raises a ValueError that says what to do):
    - One example is a 1-D array of samples, or a 2-D array `(channels, samples)`; a batch is a list of those. A
      single 2-D array is one multichannel example, never a batch.
    - Integer PCM is scaled to float32 in [-1, 1): int16 / 32768, int32 / 2**31, int8 / 128, uint8 (x - 128) / 128.
    - Multichannel audio is refused unless `mono=True` (here or at call time), which averages the channels.
    - `sampling_rate` must equal the model's rate; nothing is resampled silently.
    - NaN/Inf samples and empty examples are refused.
    Examples are right-padded with zeros to the longest one (or `pad_to_multiple_of`); nothing is truncated unless
    `truncation=True` and `max_length` are given.

    Args:
        feature_size (`int`, defaults to 1): channels the model takes (mono).
        sampling_rate (`int`, defaults to 16000).
        padding_value (`float`, defaults to 0.0).
        mono (`bool`, defaults to `False`): downmix multichannel input by averaging channels.
    """

    model_input_names = ["input_values", "padding_mask"]

    def __init__(self, feature_size: int = 1, sampling_rate: int = 16000, padding_value: float = 0.0,
                 mono: bool = False, **kwargs):
        if feature_size != 1:
            raise ValueError(f"PQ-VAE models take mono audio: feature_size must be 1, got {feature_size}.")
        self._check_padding_side(kwargs.get("padding_side", "right"))
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.mono = mono

    @staticmethod
    def _check_padding_side(padding_side) -> None:
        if padding_side != "right":
            raise ValueError(
                f"padding_side={padding_side!r} is not supported: the model derives each example's frames from the"
                " number of real samples at the start of its row (right padding). Use padding_side='right'."
            )

    def _to_mono_float(self, audio, index: int, mono: bool) -> np.ndarray:
        if hasattr(audio, "detach"):  # torch tensor, without importing torch here
            audio = audio.detach().cpu().numpy()
        audio = np.asarray(audio)
        if audio.dtype in _INTEGER_SCALES:
            audio = audio.astype(np.float32) / _INTEGER_SCALES[audio.dtype]
        elif audio.dtype == np.uint8:
            audio = (audio.astype(np.float32) - 128.0) / 128.0
        elif np.issubdtype(audio.dtype, np.floating):
            audio = audio.astype(np.float32, copy=False)
        else:
            raise ValueError(f"Example {index}: unsupported audio dtype {audio.dtype}; pass float or int16/int32 PCM.")
        if audio.ndim == 2:
            channels, samples = audio.shape
            if channels > samples:
                raise ValueError(
                    f"Example {index}: 2-D audio must be (channels, samples), got shape {audio.shape}, which looks"
                    " like (samples, channels) as soundfile returns it: pass `audio.T`."
                )
            if channels > 1 and not mono:
                raise ValueError(
                    f"Example {index} has {channels} channels but the model is mono: pass `mono=True` to average"
                    " the channels, or select one channel yourself."
                )
            audio = audio.mean(axis=0) if channels > 1 else audio[0]
        elif audio.ndim != 1:
            raise ValueError(f"Example {index}: expected (samples,) or (channels, samples), got shape {audio.shape}.")
        if audio.size == 0:
            raise ValueError(f"Example {index} is empty (0 samples).")
        if not np.isfinite(audio).all():
            raise ValueError(f"Example {index} contains NaN or Inf samples; clean the audio first.")
        return audio

    def __call__(
        self,
        raw_audio,
        sampling_rate: int | None = None,
        padding: bool | str = True,
        max_length: int | None = None,
        truncation: bool = False,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
        mono: bool | None = None,
        return_attention_mask: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """
        Args:
            raw_audio: one example (1-D array / list of floats / `(channels, samples)` array / tensor) or a list of
                examples.
            sampling_rate (`int`): rate of `raw_audio`; must equal `self.sampling_rate`.
            padding (`bool` or `"longest"` / `"max_length"`): pad to the longest example (default) or `max_length`.
            max_length (`int`, *optional*): with `padding="max_length"`, the padded length; with `truncation=True`,
                the length examples are cut to.
            truncation (`bool`): cut examples longer than `max_length` (off by default: nothing is dropped).
            pad_to_multiple_of (`int`, *optional*): round the padded length up to a multiple of this.
            return_tensors (`"pt"` or `"np"`, *optional*).
            mono (`bool`, *optional*): override `self.mono` for this call.
            return_attention_mask (`bool`, *optional*): return `padding_mask` (default: `self.return_attention_mask`,
                True). It is the model's `padding_mask` (EnCodec's name for the attention mask).

        Returns:
            [`BatchFeature`] with `input_values` (B, 1, T) float32 and `padding_mask` (B, T) int64 (1 = real sample).
            Padding is done by `SequenceFeatureExtractor.pad` (right side, `padding_value`).
        """
        self._check_padding_side(kwargs.pop("padding_side", self.padding_side))
        if kwargs:
            raise TypeError(f"Unexpected arguments: {sorted(kwargs)}.")
        if sampling_rate is None:
            logger.warning(
                f"No `sampling_rate` given to {self.__class__.__name__}; assuming {self.sampling_rate} Hz. Pass it to"
                " catch rate mismatches."
            )
        elif sampling_rate != self.sampling_rate:
            raise ValueError(
                f"Audio sampled at {sampling_rate} Hz, but this model takes {self.sampling_rate} Hz. Resample it first"
                f" (e.g. `soxr.resample(audio, {sampling_rate}, {self.sampling_rate})`, or cast a datasets column with"
                f" `Audio(sampling_rate={self.sampling_rate})`)."
            )
        mono = self.mono if mono is None else mono

        is_batch = isinstance(raw_audio, (list, tuple)) and len(raw_audio) > 0 and not np.isscalar(raw_audio[0])
        examples = list(raw_audio) if is_batch else [raw_audio]
        if len(examples) == 0 or (isinstance(raw_audio, (list, tuple)) and len(raw_audio) == 0):
            raise ValueError("No audio given (empty list).")
        examples = [self._to_mono_float(audio, index, mono) for index, audio in enumerate(examples)]

        if truncation:
            if max_length is None:
                raise ValueError("truncation=True needs max_length.")
            examples = [audio[:max_length] for audio in examples]
        lengths = [audio.shape[0] for audio in examples]
        if padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length.")
            if max(lengths) > max_length:
                raise ValueError(
                    f"An example has {max(lengths)} samples, more than max_length={max_length}; pass truncation=True"
                    " to cut it, or a larger max_length."
                )
            target = max_length
        elif padding in (False, "do_not_pad"):
            if len(set(lengths)) > 1 and return_tensors is not None:
                raise ValueError("Examples of different lengths need padding=True to be returned as tensors.")
            padding = "longest"  # the output is always one (B, 1, T) array: equal lengths need no padding anyway
        elif padding not in (True, "longest"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}.")

        # Truncation was done above (to exactly max_length, before rounding up to pad_to_multiple_of).
        padded = self.pad(BatchFeature({"input_values": examples}), padding=padding, max_length=max_length,
                          truncation=False, pad_to_multiple_of=pad_to_multiple_of, return_attention_mask=True,
                          return_tensors="np")
        outputs = {"input_values": np.asarray(padded["input_values"], dtype=np.float32)[:, None, :]}
        if self.return_attention_mask if return_attention_mask is None else return_attention_mask:
            outputs["padding_mask"] = np.asarray(padded["attention_mask"], dtype=np.int64)
        return BatchFeature(outputs, tensor_type=return_tensors)


__all__ = ["PQVAEFeatureExtractor"]
