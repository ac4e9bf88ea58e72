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


# --------------------------------------------------------------------------------------------------------------------
# Model-independent log-mel distance and delay estimation (used to compare any codec, ours or not, on equal terms)
# --------------------------------------------------------------------------------------------------------------------

# A fixed analysis that no model here trains on (the model front-end is n_fft 1024 / hop 256 / natural-log
# magnitudes), so a model is not scored in its own feature space: 25 ms Hann window, 10 ms hop, 80 HTK-scale bands
# from 0 to 8 kHz, power in dB. Levels more than 80 dB below the reference's loudest band are clamped, so
# differences in near-digital silence do not dominate.
INDEPENDENT_MEL = dict(sampling_rate=16000, win_length=400, hop_length=160, n_fft=512, num_mel_bins=80,
                       dynamic_range_db=80.0)


def _htk_mel_filterbank(sampling_rate: int, n_fft: int, num_bands: int, max_hz: float | None = None) -> np.ndarray:
    """Triangular filters on the HTK mel scale from 0 Hz to `max_hz` (default Nyquist), (num_bands, n_fft // 2 + 1)."""
    def hz_to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    top = sampling_rate / 2 if max_hz is None else max_hz
    edges = 700.0 * (10 ** (np.linspace(0, hz_to_mel(top), num_bands + 2) / 2595.0) - 1.0)
    freqs = np.linspace(0, sampling_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)), 0, None)


def _framed_power(audio: np.ndarray, win_length: int, hop_length: int, n_fft: int,
                  block_frames: int = 8192) -> np.ndarray:
    """Power spectrogram (frames, n_fft // 2 + 1) of whole frames only (no padding), in blocks to bound memory."""
    num_frames = 0 if len(audio) < win_length else 1 + (len(audio) - win_length) // hop_length
    window = np.hanning(win_length + 2)[1:-1].astype(np.float32)  # Hann without its two zero end points
    out = np.empty((num_frames, n_fft // 2 + 1), dtype=np.float32)
    if num_frames == 0:
        return out
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(audio, dtype=np.float32), win_length)[::hop_length]
    for start in range(0, num_frames, block_frames):
        block = frames[start : start + block_frames] * window
        out[start : start + block_frames] = np.abs(np.fft.rfft(block, n=n_fft, axis=-1)) ** 2
    return out


def independent_log_mel_db(audio: np.ndarray, sampling_rate: int = 16000) -> np.ndarray:
    """Log-mel power in dB (frames, 80) with the fixed INDEPENDENT_MEL analysis; audio must be at 16 kHz."""
    settings = INDEPENDENT_MEL
    if sampling_rate != settings["sampling_rate"]:
        raise ValueError(f"independent_log_mel_db expects {settings['sampling_rate']} Hz audio, got {sampling_rate} Hz;"
                         " resample first (e.g. soxr.resample).")
    filters = _htk_mel_filterbank(sampling_rate, settings["n_fft"], settings["num_mel_bins"]).astype(np.float32)
    power = _framed_power(audio, settings["win_length"], settings["hop_length"], settings["n_fft"]) @ filters.T
    return 10.0 * np.log10(np.maximum(power, 1e-20))


def independent_log_mel_distance(reference: np.ndarray, estimate: np.ndarray, sampling_rate: int = 16000) -> dict:
    """Mean absolute log-mel difference in dB over all frames and bands (INDEPENDENT_MEL analysis).

    Both spectrograms are floored at 80 dB below the reference's maximum. Returns `{"log_mel_db": value}`, or None
    and `log_mel_unavailable` when the clip is shorter than one 25 ms window.
    """
    length = min(len(reference), len(estimate))
    reference_db = independent_log_mel_db(reference[:length], sampling_rate)
    if reference_db.shape[0] == 0:
        return {"log_mel_db": None, "log_mel_unavailable": "too short: under one 25 ms analysis window"}
    estimate_db = independent_log_mel_db(estimate[:length], sampling_rate)
    floor = reference_db.max() - INDEPENDENT_MEL["dynamic_range_db"]
    return {"log_mel_db": float(np.abs(np.maximum(reference_db, floor) - np.maximum(estimate_db, floor)).mean())}


# Delay estimation works on band envelopes, not on the waveform: vocoders and parametric codecs (Griffin-Lim, Codec2)
# do not reproduce the waveform's phase, so waveform cross-correlation peaks are weak and unreliable for them, while
# their spectral envelopes follow the reference closely. Resolution: one envelope hop (1 ms at 16 kHz). Only bands
# below 4 kHz count: narrowband codecs (Codec2 runs at 8 kHz) leave nothing above, and empty bands only add noise.
ALIGNMENT = dict(win_length=256, hop_length=16, n_fft=256, num_bands=16, max_hz=4000.0, dynamic_range_db=60.0)


def _alignment_features(audio: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Standardised log band energies below 4 kHz (bands, frames) on a 1 ms grid (at 16 kHz)."""
    filters = _htk_mel_filterbank(sampling_rate, ALIGNMENT["n_fft"], ALIGNMENT["num_bands"],
                                  ALIGNMENT["max_hz"]).astype(np.float32)
    power = _framed_power(audio, ALIGNMENT["win_length"], ALIGNMENT["hop_length"], ALIGNMENT["n_fft"]) @ filters.T
    if power.shape[0] == 0:
        return np.zeros((ALIGNMENT["num_bands"], 0), dtype=np.float32)
    level = 10.0 * np.log10(np.maximum(power, 1e-20))
    level = np.maximum(level, level.max() - ALIGNMENT["dynamic_range_db"])
    level = (level - level.mean(axis=0)) / (level.std(axis=0) + 1e-6)
    return level.T.astype(np.float32)


def delay_correlation(reference: np.ndarray, estimate: np.ndarray, sampling_rate: int = 16000,
                      max_delay_seconds: float = 0.05) -> dict:
    """How well `estimate` matches `reference` at each candidate delay, on band envelopes.

    Returns `{"lags": samples (K,), "correlation": (K,), "frames": overlap weight}`; lag d > 0 means the estimate
    lags the reference by d samples (estimate[n + d] ~ reference[n]). Lags are multiples of the 1 ms envelope hop
    within +-max_delay_seconds. Sum the weighted curves of many clips to estimate one codec's delay
    (`estimate_delay`), which is far more reliable than one short clip's peak.
    """
    hop = ALIGNMENT["hop_length"]
    max_lag = int(round(max_delay_seconds * sampling_rate / hop))
    lag_frames = np.arange(-max_lag, max_lag + 1)
    ref_features = _alignment_features(reference, sampling_rate)
    est_features = _alignment_features(estimate, sampling_rate)
    num_ref, num_est = ref_features.shape[1], est_features.shape[1]
    if min(num_ref, num_est) <= 2 * max_lag:  # too few frames for every lag to have a real overlap
        return {"lags": lag_frames * hop, "correlation": np.zeros(len(lag_frames)), "frames": 0}
    size = int(2 ** np.ceil(np.log2(num_ref + num_est)))
    spectrum = np.fft.rfft(est_features, size, axis=1) * np.conj(np.fft.rfft(ref_features, size, axis=1))
    circular = np.fft.irfft(spectrum.sum(axis=0), size)  # sum over bands of sum_t ref[t] * est[t + lag]
    sums = circular[lag_frames % size]
    overlap = np.minimum(num_ref, num_est - lag_frames) - np.maximum(0, -lag_frames)
    correlation = sums / (overlap * ref_features.shape[0])
    return {"lags": lag_frames * hop, "correlation": correlation, "frames": int(min(num_ref, num_est))}


def estimate_delay(curves: list[dict]) -> dict:
    """One delay for a codec from many clips' `delay_correlation` curves (weighted by frames).

    Returns `{"lag_samples", "peak_correlation", "clips_used", "clips_agreeing"}`, where `clips_agreeing` counts the
    clips whose own best lag is within 2 ms of the pooled one (a check that the codec's delay is constant).
    """
    used = [curve for curve in curves if curve["frames"] > 0]
    if not used:
        return {"lag_samples": 0, "peak_correlation": None, "clips_used": 0, "clips_agreeing": 0,
                "note": "no clip was long enough to estimate a delay; no shift applied"}
    lags = used[0]["lags"]
    pooled = sum(curve["correlation"] * curve["frames"] for curve in used) / sum(curve["frames"] for curve in used)
    best = int(np.argmax(pooled))
    tolerance = 2 * (lags[1] - lags[0]) if len(lags) > 1 else 0
    agreeing = sum(abs(int(lags[np.argmax(curve["correlation"])]) - int(lags[best])) <= tolerance for curve in used)
    return {"lag_samples": int(lags[best]), "peak_correlation": float(pooled[best]), "clips_used": len(used),
            "clips_agreeing": int(agreeing)}


def shift_to_reference(estimate: np.ndarray, lag_samples: int, length: int) -> np.ndarray:
    """Undo a delay of `lag_samples` and return exactly `length` samples (zeros where the estimate has none)."""
    shifted = estimate[lag_samples:] if lag_samples >= 0 else np.concatenate([np.zeros(-lag_samples,
                                                                                        estimate.dtype), estimate])
    shifted = shifted[:length]
    return np.pad(shifted, (0, length - len(shifted)))
