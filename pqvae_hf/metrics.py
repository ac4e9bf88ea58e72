"""Reconstruction metrics: log-mel distances (always) and STOI / wideband PESQ (when pystoi / pesq are installed)."""

from __future__ import annotations

import warnings

import numpy as np
import soxr
import torch


def log_mel_distances(model, reference: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    """L1 and L2 between the model front-end's log-mel of two waveforms at the model's rate (equal lengths)."""
    length = min(len(reference), len(estimate))
    pair = torch.from_numpy(np.stack([reference[:length], estimate[:length]]).astype(np.float32))
    with torch.no_grad():
        mels = model.front_end(pair.to(model.device)).cpu()
    error = mels[0] - mels[1]
    return {"log_mel_l1": float(error.abs().mean()), "log_mel_l2": float((error**2).mean())}


# pystoi scores 30 frames of 256 samples at 10 kHz, hop 128, after dropping silent frames: 3,968 samples at least.
STOI_MIN_SECONDS = (256 + 29 * 128) / 10000


def intelligibility_and_quality(reference: np.ndarray, estimate: np.ndarray, sampling_rate: int) -> dict:
    """STOI (0-1) and wideband PESQ (MOS-LQO, 1-4.6) at 16 kHz. A metric that cannot be computed (package missing,
    clip too short or silent) is None, with the reason under `stoi_unavailable` / `pesq_unavailable`."""
    length = min(len(reference), len(estimate))
    reference, estimate = reference[:length].astype(np.float64), estimate[:length].astype(np.float64)
    if sampling_rate != 16000 and length:  # both metrics are defined for 16 kHz wideband speech
        reference = soxr.resample(reference, sampling_rate, 16000)
        estimate = soxr.resample(estimate, sampling_rate, 16000)
    result: dict = {}
    try:
        from pystoi import stoi
    except ImportError:
        result.update(stoi=None, stoi_unavailable="pystoi is not installed (pip install pystoi)")
    else:
        # pystoi needs 30 frames of 25.6 ms after dropping silent ones; with fewer it warns and returns 1e-5 (or
        # fails outright below one frame): that is "cannot be computed", not a score.
        too_short = (f"clip too short for STOI ({length / sampling_rate:.3f} s): it needs at least 30 frames of"
                     " 25.6 ms of non-silent speech (about 0.4 s or more)")
        value = None
        if length / sampling_rate < STOI_MIN_SECONDS:
            result["stoi_unavailable"] = too_short
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    value = float(stoi(reference, estimate, 16000, extended=False))
                except Exception as error:
                    result["stoi_unavailable"] = f"STOI could not be computed: {error}"
            if any("Not enough STFT frames" in str(w.message) for w in caught):  # mostly silence
                value, result["stoi_unavailable"] = None, too_short
        result = {"stoi": value, **result}
    try:
        from pesq import pesq
    except ImportError:
        result.update(pesq_wb=None, pesq_unavailable="pesq is not installed (pip install pesq)")
    else:
        try:
            result["pesq_wb"] = float(pesq(16000, reference, estimate, "wb"))
        except Exception as error:  # pesq raises on short (< 0.25 s) or silent input
            message = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else str(error)
            result.update(pesq_wb=None, pesq_unavailable=f"PESQ could not be computed on {length / sampling_rate:.3f}"
                                                         f" s: {message}")
    return result
