"""Reconstruction metrics: log-mel distances (always) and STOI / wideband PESQ (when pystoi / pesq are installed)."""

from __future__ import annotations

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

        result["stoi"] = float(stoi(reference, estimate, 16000, extended=False))
    except ImportError:
        result["stoi"] = None
        result["stoi_missing"] = "pystoi is not installed (pip install pystoi)"
    try:
        from pesq import pesq

        result["pesq_wb"] = float(pesq(16000, reference, estimate, "wb"))
    except ImportError:
        result["pesq_wb"] = None
        result["pesq_missing"] = "pesq is not installed (pip install pesq)"
    except Exception as error:  # pesq raises on e.g. silent input
        result["pesq_wb"] = None
        result["pesq_missing"] = f"pesq failed: {error}"
    return result
