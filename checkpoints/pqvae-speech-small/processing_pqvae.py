# Copyright 2026 The pqvae-hf authors. Apache-2.0.
"""Processor for PQ-VAE: the feature extractor plus helpers that map codes to language-model token ids and back.

Part of the Hub payload: imports numpy, transformers and its own relative modules.
"""

from __future__ import annotations

import numpy as np
from transformers import ProcessorMixin


class PQVAEProcessor(ProcessorMixin):
    r"""
    Wraps a [`PQVAEFeatureExtractor`] and converts between per-codebook codes and LM token ids.

    Composite id of a frame: `sum_m codes[m] * codebook_size**m` (codebook 0 is the least significant digit), in
    `[0, codebook_size**num_codebooks)`. LM token id: `audio_token_offset + composite id`, so audio tokens can be
    appended after a text vocabulary of `audio_token_offset` entries. With `add_boundary_tokens=True`, an utterance
    is wrapped in `begin_audio_token_id = audio_token_offset + N**M` and `end_audio_token_id = ... + 1`.

    Args:
        feature_extractor ([`PQVAEFeatureExtractor`]).
        num_codebooks (`int`, defaults to 2): M of the model.
        codebook_size (`int`, defaults to 256): N of the model.
        audio_token_offset (`int`, defaults to 0): id of composite code 0 in the LM vocabulary.

    `from_pretrained` checks M and N against the `config.json` of the same folder, when there is one, and
    `check_model_config(model.config)` does the same for any model: codes of one model read with another's M or N
    would map to wrong token ids without any error.
    """

    def __init__(self, feature_extractor=None, num_codebooks: int = 2, codebook_size: int = 256,
                 audio_token_offset: int = 0, **kwargs):
        if num_codebooks < 1 or codebook_size < 2 or audio_token_offset < 0:
            raise ValueError(
                f"Need num_codebooks >= 1, codebook_size >= 2 and audio_token_offset >= 0; got {num_codebooks},"
                f" {codebook_size}, {audio_token_offset}."
            )
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.audio_token_offset = audio_token_offset
        super().__init__(feature_extractor, **kwargs)

    def check_model_config(self, config) -> None:
        """Raises a ValueError if `config` (a [`PQVAEConfig`] or its dict) has another `num_codebooks` or
        `codebook_size` than this processor."""
        get = config.get if isinstance(config, dict) else lambda name: getattr(config, name, None)
        mismatched = [f"{name}: processor {getattr(self, name)}, model {get(name)}"
                      for name in ("num_codebooks", "codebook_size")
                      if get(name) is not None and get(name) != getattr(self, name)]
        if mismatched:
            raise ValueError(
                "The processor does not match the model (" + "; ".join(mismatched) + "). Save the processor made for"
                " this model, e.g. PQVAEProcessor(feature_extractor, num_codebooks=config.num_codebooks,"
                " codebook_size=config.codebook_size)."
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        hub_kwargs = {key: kwargs[key] for key in ("cache_dir", "force_download", "local_files_only", "token",
                                                    "revision", "subfolder") if key in kwargs}
        try:
            from transformers import PreTrainedConfig

            config_dict, _ = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)
        except (OSError, ValueError):  # a processor saved on its own: nothing to check against
            return processor
        if config_dict.get("model_type") == "pqvae":
            processor.check_model_config(config_dict)
        return processor

    def __call__(self, audio=None, sampling_rate: int | None = None, **kwargs):
        """Runs the feature extractor: `processor(audio, sampling_rate=16000, return_tensors="pt")`."""
        if audio is None:
            raise ValueError("Pass `audio` (an array, or a list of arrays).")
        return self.feature_extractor(audio, sampling_rate=sampling_rate, **kwargs)

    @property
    def composite_codebook_size(self) -> int:
        return self.codebook_size**self.num_codebooks

    @property
    def begin_audio_token_id(self) -> int:
        return self.audio_token_offset + self.composite_codebook_size

    @property
    def end_audio_token_id(self) -> int:
        return self.begin_audio_token_id + 1

    @property
    def audio_vocab_size(self) -> int:
        """Ids this processor can emit: N**M composite ids plus the two boundary markers."""
        return self.composite_codebook_size + 2

    def codes_to_lm_tokens(self, audio_codes, frame_mask=None, add_boundary_tokens: bool = False) -> list[list[int]]:
        """(B, M, F) codes (tensor or array) and an optional (B, F) frame mask -> one list of LM ids per example,
        holding only that example's valid frames."""
        codes = np.asarray(audio_codes.cpu() if hasattr(audio_codes, "cpu") else audio_codes)
        if codes.ndim == 2:
            codes = codes[None]
        if codes.ndim != 3 or codes.shape[1] != self.num_codebooks:
            raise ValueError(f"audio_codes must have shape (batch, {self.num_codebooks}, frames), got {codes.shape}.")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"audio_codes must lie in [0, {self.codebook_size}).")
        radix = self.codebook_size ** np.arange(self.num_codebooks, dtype=np.int64)
        composite = (codes.astype(np.int64) * radix[None, :, None]).sum(axis=1) + self.audio_token_offset
        if frame_mask is not None:
            mask = np.asarray(frame_mask.cpu() if hasattr(frame_mask, "cpu") else frame_mask).astype(bool)
        else:
            mask = np.ones(composite.shape, dtype=bool)
        sequences = []
        for ids, valid in zip(composite, mask):
            tokens = ids[valid].tolist()
            if add_boundary_tokens:
                tokens = [self.begin_audio_token_id, *tokens, self.end_audio_token_id]
            sequences.append(tokens)
        return sequences

    def lm_tokens_to_codes(self, token_ids) -> np.ndarray:
        """One sequence of LM ids -> codes (M, F) int64. Boundary markers are dropped; any other id outside the audio
        range raises a ValueError."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        ids = ids[(ids != self.begin_audio_token_id) & (ids != self.end_audio_token_id)]
        composite = ids - self.audio_token_offset
        bad = (composite < 0) | (composite >= self.composite_codebook_size)
        if bad.any():
            raise ValueError(
                f"Token ids {ids[bad][:5].tolist()} are not audio tokens: expected ids in [{self.audio_token_offset},"
                f" {self.audio_token_offset + self.composite_codebook_size})."
            )
        radix = self.codebook_size ** np.arange(self.num_codebooks, dtype=np.int64)
        return (composite[None, :] // radix[:, None]) % self.codebook_size


__all__ = ["PQVAEProcessor"]
