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


def intelligibility_and_quality(reference: np.ndarray, estimate: np.ndarray, sampling_rate: int) -> dict:
    """STOI (0-1) and wideband PESQ (MOS-LQO, 1-4.6) at 16 kHz. Missing packages give None and a reason."""
    length = min(len(reference), len(estimate))
    reference, estimate = reference[:length].astype(np.float64), estimate[:length].astype(np.float64)
    if sampling_rate != 16000:  # both metrics are defined for 16 kHz wideband speech
        reference = soxr.resample(reference, sampling_rate, 16000)
        estimate = soxr.resample(estimate, sampling_rate, 16000)
    result: dict = {}
    try:
        from pystoi import stoi

        # pystoi returns the placeholder 1e-5 (with a RuntimeWarning) when fewer than 30 frames of 25.6 ms remain
        # after dropping the reference's silent frames; a placeholder is not a score, so report None and why.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            score = float(stoi(reference, estimate, 16000, extended=False))
        if any("Not enough STFT frames" in str(warning.message) for warning in caught):
            result["stoi"] = None
            result["stoi_missing"] = "too short: fewer than 30 non-silent STOI frames (about 0.4 s of speech)"
        else:
            result["stoi"] = score
    except ImportError:
        result["stoi"] = None
        result["stoi_missing"] = "pystoi is not installed (pip install pystoi)"
    try:
        from pesq import pesq

        result["pesq_wb"] = float(pesq(16000, reference, estimate, "wb"))
    except ImportError:
        result["pesq_wb"] = None
        result["pesq_missing"] = "pesq is not installed (pip install pesq)"
    except Exception as error:  # pesq raises on clips under 0.25 s (BufferTooShortError) or without speech
        message = error.args[0] if error.args else ""
        message = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
        result["pesq_wb"] = None
        result["pesq_missing"] = f"pesq failed: {type(error).__name__}: {message}"
    return result

