"""Codec quality: our tokenizer against Codec2 and Opus on the same clips, with the same metrics.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/codec_quality.py --corpus_dir data/speech_corpus   # whole test split
    .venv/bin/python benchmarks/codec_quality.py --corpus_dir DIR --quick                # 8 clips, under a minute
    .venv/bin/python benchmarks/codec_quality.py --corpus_dir DIR --checkpoint checkpoints/NEW --skip_baselines

Systems (every one scored on every clip of the split, at 16 kHz, against the original clip):
- for each `--checkpoint`: tokens -> mel -> neural vocoder, tokens -> mel -> Griffin-Lim (bit rate: the tokens'
  bits per second of audio), and the ceilings without quantization: true log-mel -> neural vocoder, true log-mel ->
  Griffin-Lim (no bit rate: the mel is not quantized);
- Codec2 (Debian `codec2`: c2enc / c2dec) in `--codec2_modes`, at 8 kHz, resampled back to 16 kHz for scoring; bit
  rate = bytes of the .bit file * 8 / clip duration (the input is zero-padded to whole codec frames, so short clips
  pay for their last partial frame);
- Opus (Debian `opus-tools`: opusenc / opusdec, default VBR, complexity 10, 20 ms frames) at `--opus_kbps`; bit
  rate = the Opus packets' bytes (parsed from the Ogg pages, so Ogg page headers and the OpusHead / OpusTags header
  packets are excluded) * 8 / clip duration.

Metrics: STOI, wideband PESQ (pystoi / pesq via pqvae_hf.metrics.intelligibility_and_quality) and a log-mel
distance in dB with the benchmark's own fixed analysis (pqvae_hf.metrics.INDEPENDENT_MEL: 25 ms / 10 ms / 80 bands,
not any model's front-end). Each system's delay is found first (band-envelope cross-correlation within
+-`--max_delay_ms`, pooled over all clips, 1 ms resolution) and undone before scoring. Clips on which a metric cannot
be computed (PESQ needs >= 0.25 s and detectable speech, STOI about 0.4 s of non-silent speech) get null and a reason;
each metric is averaged over the clips where every reported system has a value, and the count is reported.

Outputs in `--output_dir` (default benchmarks/results/codec_quality for the whole test split): systems/*.json, one
per system with its per-clip scores, keyed by system settings + split + the clips' file contents (a re-run reuses
them; `--force` recomputes), clips.json, results.json, results.md and quality_vs_bitrate.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import soundfile as sf
import soxr
from tqdm.auto import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from pqvae_hf.metrics import (  # noqa: E402
    INDEPENDENT_MEL,
    delay_correlation,
    estimate_delay,
    independent_log_mel_distance,
    intelligibility_and_quality,
    shift_to_reference,
)

# Bump when scoring changes (metrics, alignment, resampling), so cached per-system results are recomputed.
SCORING_VERSION = 1
RATE = 16000  # every clip is scored at 16 kHz: STOI and PESQ-WB are defined there
METRICS = ("stoi", "pesq_wb", "log_mel_db")
METRIC_LABELS = {"stoi": "STOI", "pesq_wb": "PESQ-WB", "log_mel_db": "log-mel distance (dB)"}
MISSING_KEYS = {"stoi": "stoi_unavailable", "pesq_wb": "pesq_unavailable", "log_mel_db": "log_mel_unavailable"}
# Codec2 modes: nominal bit/s and samples per frame at 8 kHz (codec2's own frame sizes: 20 ms for 3200 and 2400,
# 40 ms for the others).
CODEC2_MODES = {"3200": (3200, 160), "2400": (2400, 160), "1600": (1600, 320), "1400": (1400, 320),
                "1300": (1300, 320), "1200": (1200, 320), "700C": (700, 320)}
CODEC2_RATE = 8000
DEFAULT_CHECKPOINT = os.path.join(REPO, "checkpoints", "pqvae-speech-small")
QUICK_CLIPS = 8


# --------------------------------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ClipSet:
    split: str
    names: list[str]
    sources: list[str]
    audios: list[np.ndarray]  # mono float32 at RATE
    sha256: str  # of the split name, file names and file bytes: the key that cached results must match
    selection: str
    decoding: str

    @property
    def seconds(self) -> list[float]:
        return [len(audio) / RATE for audio in self.audios]


def load_clips(corpus_dir: str, split: str, split_column: str | None, max_clips: int | None) -> ClipSet:
    from pqvae_hf.data import AudioDecodeNotes, decode_audio, load_audio_dataset

    if not os.path.isdir(corpus_dir):
        raise SystemExit(f"No corpus at {corpus_dir}. Build it with `bash ../shared/data/fetch_speech_corpus.sh"
                         f" data/speech_corpus` and pass --corpus_dir (or set PQVAE_CORPUS_DIR).")
    data = load_audio_dataset(dataset_dir=corpus_dir, split=split, split_column=split_column or None)
    total = len(data)
    if max_clips is not None and max_clips < total:
        # Evenly spaced, not the first N: the metadata is sorted by source, so the first N would be one source.
        data = data.select(np.unique(np.linspace(0, total - 1, max_clips).round().astype(int)).tolist())
        selection = f"{len(data)} clips evenly spaced through the {total} of split {split!r}"
    else:
        selection = f"all {total} clips of split {split!r}"
    paths = [cell["path"] for cell in data["audio"]]
    names = list(data["file_name"]) if "file_name" in data.column_names else [os.path.basename(p) for p in paths]
    sources = list(data["source"]) if "source" in data.column_names else ["all"] * len(data)
    digest = hashlib.sha256(split.encode())
    notes = AudioDecodeNotes()
    audios = []
    for name, path in tqdm(list(zip(names, paths)), desc=f"Loading {split}"):
        with open(path, "rb") as handle:
            digest.update(name.encode() + b"\0" + hashlib.sha256(handle.read()).digest())
        audio = decode_audio(path, RATE, notes)
        if audio.size == 0:
            raise ValueError(f"{path} contains no samples; remove it from the metadata.")
        audios.append(audio)
    return ClipSet(split, names, [str(source) for source in sources], audios, digest.hexdigest(), selection,
                   notes.summary())


# --------------------------------------------------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------------------------------------------------

# A runner turns one clip (float32 at RATE) into (decoded audio at RATE, bits spent on it or None).
Runner = Callable[[np.ndarray], tuple[np.ndarray, "int | None"]]


@dataclass
class System:
    name: str
    family: str  # "pqvae", "ceiling", "codec2", "opus"
    settings: dict  # everything that defines the output; part of the cache key
    nominal_bits_per_second: float | None
    make_runner: Callable[[], Runner]  # called once, when the system has to be computed (loads models lazily)
    picklable_runner: tuple | None = None  # (function, args) a worker process can call instead of make_runner()
    tool_version: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_baseline(self) -> bool:
        return self.family in ("codec2", "opus")


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_fingerprint(folder: str) -> str:
    """Hash of the weights and config: a retrained checkpoint in the same folder invalidates its cached results."""
    parts = []
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            parts.append(f"{name}:{_file_sha256(path)}")
    if not parts:
        raise SystemExit(f"--checkpoint {folder} has no config.json / model.safetensors; pass a checkpoint folder.")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


class _ModelCache:
    """Loads each checkpoint once, on first use, on one CPU device."""

    def __init__(self):
        self.models = {}

    def get(self, folder: str):
        if folder not in self.models:
            from pqvae_hf.inference import load_model

            self.models[folder] = load_model(folder)
        return self.models[folder]


def _model_runner(models: _ModelCache, folder: str, source: str, vocoder: str, chunk_seconds: float) -> Runner:
    """tokens (source="tokens") or the true log-mel (source="true_mel") -> mel -> vocoder, for one checkpoint."""
    import torch

    from pqvae_hf.inference import decode_long, encode_long, vocode_long
    from pqvae_hf.modeling.modeling_pqvae import GriffinLim

    model = models.get(folder)
    config = model.config
    griffin_lim = GriffinLim(config, model.front_end)
    chunk_frames = max(1, int(chunk_seconds * config.frame_rate))

    @torch.no_grad()
    def run(audio: np.ndarray) -> tuple[np.ndarray, int | None]:
        model_audio = audio if config.sampling_rate == RATE else soxr.resample(audio, RATE, config.sampling_rate)
        bits = None
        if source == "tokens":
            codes = encode_long(model, model_audio, chunk_seconds=chunk_seconds)
            bits = int(codes.shape[-1] * config.bits_per_frame)
            mel, _ = decode_long(model, codes, chunk_seconds=chunk_seconds, return_waveform=False)
            mel = model.postfilter_mel(mel[None])[0]  # what `decode` gives the vocoder (identity at contrast 1)
        else:
            mel = model.front_end(torch.from_numpy(np.ascontiguousarray(model_audio))[None])[0]
        if vocoder == "neural":
            waveform = vocode_long(model, mel, chunk_frames=chunk_frames, true_mel=source == "true_mel")
        else:
            waveform = griffin_lim(mel[None])[0]
        waveform = waveform.numpy().astype(np.float32)
        if config.sampling_rate != RATE:
            waveform = soxr.resample(waveform, config.sampling_rate, RATE).astype(np.float32)
        return waveform, bits

    return run


def checkpoint_systems(folder: str, models: _ModelCache, chunk_seconds: float,
                       inputs: tuple[str, ...] = ("tokens", "true_mel"),
                       vocoders: tuple[str, ...] = ("neural", "griffin_lim")) -> list[System]:
    from transformers import AutoConfig

    import pqvae_hf  # noqa: F401  (registers the pqvae config)

    config = AutoConfig.from_pretrained(folder)
    label = os.path.basename(os.path.normpath(folder))
    fingerprint = _checkpoint_fingerprint(folder)
    available = (["neural"] if config.vocoder == "neural" else []) + ["griffin_lim"]
    vocoder_names = {"neural": "neural vocoder", "griffin_lim": "Griffin-Lim"}
    systems = []
    for source in inputs:
        for vocoder in (vocoder for vocoder in available if vocoder in vocoders):
            settings = {"checkpoint": label, "checkpoint_sha256": fingerprint, "input": source, "vocoder": vocoder,
                        "griffin_lim_iters": config.griffin_lim_iters if vocoder == "griffin_lim" else None}
            if source == "tokens":
                name = f"PQ-VAE {label}: tokens -> {vocoder_names[vocoder]}"
                family, nominal = "pqvae", float(config.bits_per_second)
            else:
                # A checkpoint with a mel vocoder renders true mels with it (`PQVAEModel.vocode_mel`).
                uses_mel_vocoder = vocoder == "neural" and config.mel_vocoder == "neural"
                if uses_mel_vocoder:
                    settings["neural_vocoder_module"] = "mel_vocoder"
                    settings["mel_vocoder_phase_refinement_iters"] = config.mel_vocoder_phase_refinement_iters
                rendered_by = "neural mel vocoder" if uses_mel_vocoder else vocoder_names[vocoder]
                name = f"ceiling {label}: true mel -> {rendered_by}"
                family, nominal = "ceiling", None
            systems.append(System(
                name, family, settings, nominal,
                make_runner=lambda s=source, v=vocoder: _model_runner(models, folder, s, v, chunk_seconds)))
    if not systems:
        raise SystemExit(f"--checkpoint {folder}: none of --checkpoint_vocoders {' '.join(vocoders)} exists for it (its"
                         f" vocoders: {', '.join(available)}); ask for griffin_lim.")
    if config.vocoder != "neural":
        systems[0].notes.append(f"{label} has no neural vocoder (config.vocoder={config.vocoder!r}): Griffin-Lim only")
    return systems


def _tool_version(command: list[str]) -> str | None:
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (output.stdout or output.stderr).strip().splitlines()
    return text[0] if text else None


def _run_tool(command: list[str]) -> None:
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {process.returncode}): {process.stderr.strip()[-500:]}")


def _to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")


def run_codec2(audio: np.ndarray, mode: str) -> tuple[np.ndarray, int]:
    """16 kHz clip -> 8 kHz 16-bit raw -> c2enc -> c2dec -> 16 kHz; returns (audio, bits in the .bit file)."""
    samples_per_frame = CODEC2_MODES[mode][1]
    narrowband = soxr.resample(audio, RATE, CODEC2_RATE, quality="HQ")
    narrowband = np.pad(narrowband, (0, -len(narrowband) % samples_per_frame))  # encode the last partial frame too
    with tempfile.TemporaryDirectory(prefix="codec2_") as work:
        raw_in, bits_path, raw_out = (os.path.join(work, name) for name in ("in.raw", "out.bit", "out.raw"))
        _to_int16(narrowband).tofile(raw_in)
        _run_tool(["c2enc", mode, raw_in, bits_path])  # a .bit name: headerless output, no .c2 header counted
        _run_tool(["c2dec", mode, bits_path, raw_out])
        bits = os.path.getsize(bits_path) * 8
        decoded = np.fromfile(raw_out, dtype="<i2").astype(np.float32) / 32768.0
    return soxr.resample(decoded, CODEC2_RATE, RATE, quality="HQ").astype(np.float32), bits


def ogg_packet_sizes(data: bytes) -> list[int]:
    """Sizes of the packets of a single-stream Ogg file, from the pages' lacing tables (RFC 3533)."""
    sizes, current, position = [], 0, 0
    while position < len(data):
        if data[position : position + 4] != b"OggS":
            raise ValueError(f"Not an Ogg page at byte {position}: the opusenc output is not a plain Ogg stream.")
        segments = data[position + 26]
        lacing = data[position + 27 : position + 27 + segments]
        position += 27 + segments + sum(lacing)
        for value in lacing:
            current += value
            if value < 255:  # a lacing value below 255 ends a packet; 255 continues it (possibly on the next page)
                sizes.append(current)
                current = 0
    return sizes


def run_opus(audio: np.ndarray, kbps: float) -> tuple[np.ndarray, int]:
    """16 kHz clip -> opusenc (VBR at `kbps`) -> opusdec at 16 kHz; returns (audio, bits in the Opus packets)."""
    with tempfile.TemporaryDirectory(prefix="opus_") as work:
        wav_in, encoded, wav_out = (os.path.join(work, name) for name in ("in.wav", "out.opus", "out.wav"))
        sf.write(wav_in, _to_int16(audio), RATE, subtype="PCM_16")
        _run_tool(["opusenc", "--quiet", "--bitrate", f"{kbps:g}", wav_in, encoded])
        _run_tool(["opusdec", "--quiet", "--rate", str(RATE), "--float", encoded, wav_out])
        with open(encoded, "rb") as handle:
            packets = ogg_packet_sizes(handle.read())
        decoded, rate = sf.read(wav_out, dtype="float32", always_2d=False)
    if rate != RATE or decoded.ndim != 1:
        raise RuntimeError(f"opusdec returned {decoded.shape} at {rate} Hz; expected mono at {RATE} Hz.")
    # The first two packets are the OpusHead and OpusTags headers, not audio.
    return decoded, 8 * sum(packets[2:])


def baseline_systems(codec2_modes: list[str], opus_kbps: list[float]) -> list[System]:
    codec2_version = _tool_version(["dpkg-query", "-W", "-f=codec2 ${Version}", "codec2"])
    opus_version = _tool_version(["opusenc", "--version"])
    systems = []
    for mode in codec2_modes:
        if mode not in CODEC2_MODES:
            raise SystemExit(f"Unknown Codec2 mode {mode!r}; choose from {', '.join(CODEC2_MODES)}.")
        systems.append(System(f"Codec2 {mode}", "codec2", {"codec": "codec2", "mode": mode,
                                                            "sampling_rate": CODEC2_RATE},
                              float(CODEC2_MODES[mode][0]), make_runner=lambda m=mode: (lambda a: run_codec2(a, m)),
                              picklable_runner=(run_codec2, (mode,)), tool_version=codec2_version))
    for kbps in opus_kbps:
        systems.append(System(f"Opus {kbps:g} kbit/s", "opus", {"codec": "opus", "kbps": kbps, "mode": "vbr"},
                              1000.0 * kbps, make_runner=lambda k=kbps: (lambda a: run_opus(a, k)),
                              picklable_runner=(run_opus, (kbps,)), tool_version=opus_version))
    return systems


def missing_tools(system: System) -> list[str]:
    tools = {"codec2": ["c2enc", "c2dec"], "opus": ["opusenc", "opusdec"]}.get(system.family, [])
    return [tool for tool in tools if shutil.which(tool) is None]


# --------------------------------------------------------------------------------------------------------------------
# Running and scoring one system
# --------------------------------------------------------------------------------------------------------------------


def _decode_clip(runner_function, runner_args, audio: np.ndarray, max_delay_seconds: float):
    """Worker: one clip through a codec, plus its delay-correlation curve against the original."""
    decoded, bits = runner_function(audio, *runner_args)
    return decoded, bits, delay_correlation(audio, decoded, RATE, max_delay_seconds)


def score_clip(reference: np.ndarray, decoded: np.ndarray, lag_samples: int) -> dict:
    """STOI, PESQ-WB and the independent log-mel distance of one clip after undoing the system's delay."""
    aligned = shift_to_reference(decoded.astype(np.float32), lag_samples, len(reference))
    scores = {**intelligibility_and_quality(reference, aligned, RATE),
              **independent_log_mel_distance(reference, aligned, RATE)}
    return scores


def _map(function, argument_lists: list[tuple], num_workers: int, description: str) -> list:
    if num_workers <= 1:
        return [function(*arguments) for arguments in tqdm(argument_lists, desc=description)]
    with ProcessPoolExecutor(num_workers) as pool:
        columns = list(zip(*argument_lists))
        return list(tqdm(pool.map(function, *columns, chunksize=4), total=len(argument_lists), desc=description))


def cache_key(system: System, clips: ClipSet, max_delay_ms: float) -> dict:
    return {"system": system.name, "settings": system.settings, "split": clips.split, "clips_sha256": clips.sha256,
            "num_clips": len(clips.names), "max_delay_ms": max_delay_ms, "scoring_version": SCORING_VERSION}


def run_system(system: System, clips: ClipSet, args) -> dict:
    """Decode every clip, find the system's delay, score every clip; returns the cache record (per-clip columns)."""
    start = time.time()
    max_delay_seconds = args.max_delay_ms / 1000.0
    if system.picklable_runner is not None and args.num_workers > 1:
        function, runner_args = system.picklable_runner
        decoded = _map(_decode_clip, [(function, runner_args, audio, max_delay_seconds) for audio in clips.audios],
                       args.num_workers, f"{system.name}: encode/decode")
    else:
        runner = system.make_runner()
        decoded = []
        for audio in tqdm(clips.audios, desc=f"{system.name}: encode/decode"):
            output, bits = runner(audio)
            decoded.append((output, bits, delay_correlation(audio, output, RATE, max_delay_seconds)))
    delay = estimate_delay([curve for _, _, curve in decoded])
    scores = _map(score_clip, [(audio, output, delay["lag_samples"]) for audio, (output, _, _) in
                               zip(clips.audios, decoded)], args.num_workers, f"{system.name}: score")
    bits = [clip_bits for _, clip_bits, _ in decoded]
    columns, missing = {}, {}
    for metric in METRICS:
        columns[metric] = [None if s.get(metric) is None else round(float(s[metric]), 5) for s in scores]
        reasons: dict[str, list[int]] = {}
        for index, s in enumerate(scores):
            if s.get(metric) is None:
                reasons.setdefault(s.get(MISSING_KEYS[metric], "unknown"), []).append(index)
        missing[metric] = reasons
    return {
        "name": system.name,
        "family": system.family,
        "settings": system.settings,
        "tool_version": system.tool_version,
        "nominal_bits_per_second": system.nominal_bits_per_second,
        "delay": {**delay, "lag_ms": 1000.0 * delay["lag_samples"] / RATE},
        "total_bits": None if any(b is None for b in bits) else int(sum(bits)),
        "audio_seconds": round(sum(clips.seconds), 3),
        "wall_seconds": round(time.time() - start, 1),
        "bits": None if any(b is None for b in bits) else [int(b) for b in bits],
        "scores": columns,
        "missing": missing,
    }


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-+." else "_" for c in name)


def cached_or_run(system: System, clips: ClipSet, args, systems_dir: str) -> tuple[dict | None, str]:
    """(record, how it was obtained). Cached records are reused only if their key matches exactly."""
    path = os.path.join(systems_dir, _slug(system.name) + ".json")
    key = cache_key(system, clips, args.max_delay_ms)
    if os.path.isfile(path) and not args.force:
        with open(path) as handle:
            record = json.load(handle)
        if record.get("cache_key") == key:
            return record, "cached"
        print(f"[codec_quality] {system.name}: cached result in {path} was computed for other settings or clips;"
              " recomputing", file=sys.stderr)
    if system.is_baseline and args.skip_baselines:
        return None, "skipped (--skip_baselines and no cached result for these clips)"
    absent = missing_tools(system)
    if absent:
        package = "codec2" if system.family == "codec2" else "opus-tools"
        print(f"[codec_quality] skipping {system.name}: {', '.join(absent)} not found; install with"
              f" `apt-get install {package}` (scripts/setup.sh does)", file=sys.stderr)
        return None, f"skipped: {', '.join(absent)} not installed (apt-get install {package})"
    record = {"cache_key": key, **run_system(system, clips, args)}
    os.makedirs(systems_dir, exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle, separators=(",", ":"))
        handle.write("\n")
    os.replace(path + ".tmp", path)  # never leave a half-written cache behind
    return record, "computed"


# --------------------------------------------------------------------------------------------------------------------
# Summary, report and plot
# --------------------------------------------------------------------------------------------------------------------


def _mean(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {"mean": None, "standard_error": None, "clips": 0}
    error = float(array.std(ddof=1) / math.sqrt(array.size)) if array.size > 1 else None
    return {"mean": float(array.mean()), "standard_error": error, "clips": int(array.size)}


# A reason names the clip's own duration ("clip too short for STOI (0.294 s): ..."); the report counts clips per kind
# of reason, so the duration is dropped there (each system's record keeps the full per-clip text).
_CLIP_DURATION = re.compile(r" \(\d+\.\d+ s\)| on \d+\.\d+ s")


def reason_kind(reason: str) -> str:
    """The reason without the clip's duration: 'PESQ could not be computed on 0.294 s: X' -> '... computed: X'."""
    return _CLIP_DURATION.sub("", reason)


def summarize(records: list[dict], clips: ClipSet) -> dict:
    """Means over the clips that every reported system could be scored on, overall and per source."""
    num_clips = len(clips.names)
    common, excluded = {}, {}
    for metric in METRICS:
        scored = [all(record["scores"][metric][i] is not None for record in records) for i in range(num_clips)]
        common[metric] = [i for i in range(num_clips) if scored[i]]
        why: dict[int, set] = {}  # clip -> every system's reason for having no value
        for record in records:
            for reason, indices in record["missing"][metric].items():
                for i in indices:
                    why.setdefault(i, set()).add(reason)
        reasons: dict[str, int] = {}
        for i in sorted(why):
            key = " / ".join(sorted({reason_kind(reason) for reason in why[i]}))
            reasons[key] = reasons.get(key, 0) + 1
        excluded[metric] = {"clips": num_clips - len(common[metric]), "reasons": reasons}
    sources = sorted(set(clips.sources))
    seconds = clips.seconds
    systems = []
    for record in records:
        measured = None
        if record["total_bits"] is not None:
            measured = record["total_bits"] / sum(seconds)
        entry = {key: record[key] for key in ("name", "family", "settings", "tool_version", "nominal_bits_per_second",
                                              "delay", "wall_seconds")}
        entry["measured_bits_per_second"] = measured
        entry["metrics"] = {m: _mean([record["scores"][m][i] for i in common[m]]) for m in METRICS}
        entry["unscorable_clips"] = {m: sum(len(v) for v in record["missing"][m].values()) for m in METRICS}
        entry["per_source"] = {}
        for source in sources:
            entry["per_source"][source] = {m: _mean([record["scores"][m][i] for i in common[m]
                                                     if clips.sources[i] == source]) for m in METRICS}
        systems.append(entry)
    # Paired differences, clip by clip over the same common clips: ours (tokens) minus each Codec2 mode; each later
    # --checkpoint's tokens minus the first one's through the same vocoder (how much a retrained checkpoint moved);
    # and each neural vocoder minus Griffin-Lim on the same checkpoint's same mel (tokens' or true: issue 11's vocoder
    # target). The standard error of a difference of means from two separate standard errors overstates it when both
    # systems find the same clips hard.
    ours_records = [r for r in records if r["family"] in ("pqvae", "ceiling")]
    first_checkpoint = ours_records[0]["settings"]["checkpoint"] if ours_records else None

    def route(record: dict, **changes) -> tuple:
        settings = {**record["settings"], **changes}
        return settings["checkpoint"], settings["input"], settings["vocoder"]

    paired = []
    for ours in ours_records:
        baselines = [r for r in records if r["family"] == "codec2"] if ours["family"] == "pqvae" else []
        if ours["family"] == "pqvae" and ours["settings"]["checkpoint"] != first_checkpoint:
            baselines += [r for r in ours_records if route(r) == route(ours, checkpoint=first_checkpoint)]
        if ours["settings"]["vocoder"] == "neural":
            baselines += [r for r in ours_records if route(r) == route(ours, vocoder="griffin_lim")]
        for baseline in baselines:
            paired.append({"system": ours["name"], "baseline": baseline["name"], "difference": {
                m: _mean([ours["scores"][m][i] - baseline["scores"][m][i] for i in common[m]]) for m in METRICS}})
    return {
        "clips": num_clips,
        "audio_seconds": round(sum(seconds), 2),
        "clips_per_source": {s: clips.sources.count(s) for s in sources},
        "seconds_per_source": {s: round(sum(t for t, c in zip(seconds, clips.sources) if c == s), 2) for s in sources},
        "common_clips": {m: len(common[m]) for m in METRICS},
        "excluded": excluded,
        "systems": systems,
        "paired_differences": paired,
    }


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def to_markdown(results: dict) -> str:
    summary = results["summary"]
    lines = [
        f"# Codec quality: split `{results['split']}`",
        "",
        f"{results['selection']}: {summary['clips']:,} clips, {summary['audio_seconds'] / 60:.1f} min, scored at"
        f" 16 kHz against the original clip. Command: `{results['command']}` ({results['machine']})."
        f" Compute time of the systems below: {results['systems_compute_seconds']:,.0f} s (sum of each system's own run, cached ones"
        f" included); this invocation: {results['wall_seconds']:,.0f} s wall.",
        "",
        "Each metric is averaged over the clips where every system below has a value: "
        + ", ".join(f"{METRIC_LABELS[m]} {summary['common_clips'][m]:,}" for m in METRICS) + " clips.",
    ]
    for metric in METRICS:
        excluded = summary["excluded"][metric]
        if excluded["clips"]:
            reasons = "; ".join(f"{why} ({n:,})" for why, n in sorted(excluded["reasons"].items(), key=lambda x: -x[1]))
            lines.append(f"- {METRIC_LABELS[metric]}: {excluded['clips']:,} clips excluded: {reasons}.")
    lines += [
        "",
        "| system | bit/s (measured) | bit/s (nominal) | STOI | PESQ-WB | log-mel dist. (dB) | delay found (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for system in summary["systems"]:
        metrics = system["metrics"]
        delay = system["delay"]
        lines.append(
            f"| {system['name']} | {_fmt(system['measured_bits_per_second'], 0)} |"
            f" {_fmt(system['nominal_bits_per_second'], 0)} | {_fmt(metrics['stoi']['mean'], 3)} |"
            f" {_fmt(metrics['pesq_wb']['mean'], 2)} | {_fmt(metrics['log_mel_db']['mean'], 2)} |"
            f" {delay['lag_ms']:+.0f} ({delay['clips_agreeing']}/{delay['clips_used']} clips agree) |")
    lines += [
        "",
        "Bit rate measured = bits actually spent / audio duration, over all clips: PQ-VAE counts its tokens"
        " (`len // hop + 1` frames per clip), Codec2 the bytes of the .bit file (input padded to whole codec frames),"
        " Opus the bytes of its packets (Ogg page headers and the OpusHead/OpusTags header packets excluded). Ceilings"
        " vocode the unquantized log-mel, so they have no bit rate. Delay: each system's output is shifted by the one"
        f" lag (within +-{results['max_delay_ms']:g} ms, 1 ms steps) that maximises the band-envelope correlation"
        " pooled over all clips; \"agree\" counts clips whose own best lag is within 2 ms of it.",
        "",
        f"Log-mel distance: mean |difference| of {INDEPENDENT_MEL['num_mel_bins']}-band log-mel power in dB,"
        f" {INDEPENDENT_MEL['win_length'] / 16:g} ms window / {INDEPENDENT_MEL['hop_length'] / 16:g} ms hop at 16 kHz,"
        f" floored {INDEPENDENT_MEL['dynamic_range_db']:g} dB below the reference's peak (lower is better).",
        "",
    ]
    if summary.get("paired_differences"):
        lines += ["## PQ-VAE minus Codec2, minus the first checkpoint and minus Griffin-Lim, paired clip by clip", "",
                  "Mean difference over the same clips as above +- its standard error (of the per-clip differences);"
                  " positive STOI / PESQ-WB and negative log-mel distance favour the system over its baseline (for"
                  " tokens, each Codec2 mode, and for a later `--checkpoint` also the first one's through the same"
                  " vocoder; for a neural vocoder, Griffin-Lim on the same checkpoint's same mel).", "",
                  "| system | baseline | STOI | PESQ-WB | log-mel dist. (dB) |", "|---|---|---|---|---|"]
        for row in summary["paired_differences"]:
            cells = []
            for metric, digits in (("stoi", 3), ("pesq_wb", 3), ("log_mel_db", 2)):
                value = row["difference"][metric]
                error = value["standard_error"]
                cells.append("-" if value["mean"] is None else
                             f"{value['mean']:+.{digits}f}" + ("" if error is None else f" +- {error:.{digits}f}"))
            lines.append(f"| {row['system']} | {row['baseline']} | " + " | ".join(cells) + " |")
        lines.append("")
    sources = list(summary["clips_per_source"])
    if len(sources) > 1:
        lines.append("## Per source")
        lines.append("")
        lines.append("Clips (minutes) per source: " + ", ".join(
            f"{s} {summary['clips_per_source'][s]:,} ({summary['seconds_per_source'][s] / 60:.1f})" for s in sources)
            + ".")
        for metric, digits in (("stoi", 3), ("pesq_wb", 2), ("log_mel_db", 2)):
            lines += ["", f"{METRIC_LABELS[metric]} (clips scored per source in the header):", ""]
            first = summary["systems"][0]["per_source"]
            lines.append("| system | " + " | ".join(f"{s} ({first[s][metric]['clips']})" for s in sources) + " |")
            lines.append("|---|" + "---|" * len(sources))
            for system in summary["systems"]:
                lines.append(f"| {system['name']} | " + " | ".join(
                    _fmt(system["per_source"][s][metric]["mean"], digits) for s in sources) + " |")
        lines.append("")
    if results["not_run"]:
        lines.append("## Not in this report")
        lines.append("")
        lines += [f"- {name}: {why}" for name, why in results["not_run"].items()]
        lines.append("")
    if results["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in results["notes"]] + [""]
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results["summary"]["systems"]
    colours = plt.get_cmap("tab20" if len(systems) > 10 else "tab10").colors
    markers = "osD^v<>pPXh*H8d"
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for index, system in enumerate(systems):
        style = dict(color=colours[index % len(colours)], label=system["name"])
        for axis, metric in zip(axes, ("stoi", "pesq_wb")):
            value = system["metrics"][metric]["mean"]
            if value is None:
                continue
            if system["measured_bits_per_second"] is None:  # a ceiling: no bit rate, drawn across the panel
                axis.axhline(value, linestyle=(0, (4, 2 + index % 3)), linewidth=1.6, **style)
            else:
                axis.scatter(system["measured_bits_per_second"], value, marker=markers[index % len(markers)], s=70,
                             edgecolors="black", linewidths=0.5, zorder=3, **style)
    counts = results["summary"]["common_clips"]
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    for axis, metric in zip(axes, ("stoi", "pesq_wb")):
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(FixedLocator([500, 1000, 2000, 5000, 10000, 20000, 50000]))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1000:g}k"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("measured bit rate (bit/s, log scale; 1k = 1,000)")
        axis.set_ylabel(f"mean {METRIC_LABELS[metric]} ({counts[metric]:,} clips)")
        axis.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.suptitle(f"Speech codec quality vs bit rate, split '{results['split']}' ({results['summary']['clips']:,}"
                    " clips); dashed lines: unquantized-mel ceilings")
    rows = math.ceil(len(labels) / 2)
    figure.tight_layout(rect=(0, 0.035 * rows + 0.02, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def default_output_dir(split: str, max_clips: int | None) -> str:
    name = "codec_quality" if split == "test" else f"codec_quality_{split}"
    if max_clips is not None:
        name += f"_{max_clips}clips"  # a subset never overwrites the whole-split results
    return os.path.join(HERE, "results", name)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_dir", default=os.environ.get("PQVAE_CORPUS_DIR",
                                                                os.path.join(REPO, "data", "speech_corpus")))
    parser.add_argument("--split", default="test")
    parser.add_argument("--split_column", default="split", help="metadata column naming the split ('' for all rows)")
    parser.add_argument("--checkpoint", action="append", default=None,
                        help="checkpoint folder, repeatable (default checkpoints/pqvae-speech-small)")
    parser.add_argument("--codec2_modes", nargs="*", default=["3200", "1300", "700C"])
    parser.add_argument("--opus_kbps", nargs="*", type=float, default=[6.0, 8.0, 12.0])
    parser.add_argument("--skip_baselines", action="store_true",
                        help="never compute Codec2 / Opus; use their cached results for these clips if present")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_CLIPS} clips evenly spaced through the split")
    parser.add_argument("--max_clips", type=int, default=None, help="N clips evenly spaced (default: the whole split)")
    parser.add_argument("--max_delay_ms", type=float, default=50.0, help="delay search range, +- milliseconds")
    parser.add_argument("--chunk_seconds", type=float, default=30.0, help="longer clips are encoded in chunks")
    parser.add_argument("--num_workers", type=int, default=1, help="processes for codecs and scoring")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--checkpoint_inputs", nargs="+", choices=("tokens", "true_mel"),
                        default=["tokens", "true_mel"],
                        help="what each checkpoint's systems vocode: its tokens' decoded mel and/or the true mel")
    parser.add_argument("--checkpoint_vocoders", nargs="+", choices=("neural", "griffin_lim"),
                        default=["neural", "griffin_lim"], help="which of each checkpoint's vocoders to score")
    parser.add_argument("--force", action="store_true", help="recompute systems even if cached")
    parser.add_argument("--output_dir", default=None,
                        help="default benchmarks/results/codec_quality (test) or codec_quality_<split>")
    args = parser.parse_args(argv)
    if args.quick and args.max_clips is None:
        args.max_clips = QUICK_CLIPS

    import torch

    torch.set_num_threads(args.threads)
    start = time.time()
    output_dir = args.output_dir or default_output_dir(args.split, args.max_clips)
    systems_dir = os.path.join(output_dir, "systems")
    os.makedirs(output_dir, exist_ok=True)

    clips = load_clips(args.corpus_dir, args.split, args.split_column, args.max_clips)
    models = _ModelCache()
    checkpoints = args.checkpoint or [DEFAULT_CHECKPOINT]
    systems = []
    for folder in checkpoints:
        systems += checkpoint_systems(folder, models, args.chunk_seconds, tuple(args.checkpoint_inputs),
                                      tuple(args.checkpoint_vocoders))
    systems += baseline_systems(args.codec2_modes, args.opus_kbps)
    names = [system.name for system in systems]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SystemExit(f"Two checkpoints give the same system names {duplicates}: their folders share a name;"
                         " copy one under another folder name.")
    # Reported order: our systems and codecs by bit rate, ceilings last.
    systems.sort(key=lambda s: (s.family == "ceiling", s.nominal_bits_per_second or 0.0))

    records, not_run, how = [], {}, {}
    for system in systems:
        record, how[system.name] = cached_or_run(system, clips, args, systems_dir)
        if record is None:
            not_run[system.name] = how[system.name]
        else:
            records.append(record)
        print(f"[codec_quality] {system.name}: {how[system.name]}", file=sys.stderr)
    if not records:
        raise SystemExit("No system could be scored; see the messages above.")

    notes = [note for system in systems for note in system.notes]
    with open(os.path.join(output_dir, "clips.json"), "w") as handle:
        json.dump({"split": clips.split, "clips_sha256": clips.sha256, "file_name": clips.names,
                   "source": clips.sources, "seconds": [round(s, 4) for s in clips.seconds]}, handle)
        handle.write("\n")
    results = {
        "benchmark": "codec_quality",
        "split": clips.split,
        "selection": clips.selection,
        "decoding": clips.decoding,
        "clips_sha256": clips.sha256,
        "command": "python benchmarks/codec_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} torch thread(s),"
                   f" {args.num_workers} worker process(es)",
        "max_delay_ms": args.max_delay_ms,
        "scoring_version": SCORING_VERSION,
        "how_obtained": {record["name"]: how[record["name"]] for record in records},
        "not_run": not_run,
        "notes": notes,
        "summary": summarize(records, clips),
    }
    results["systems_compute_seconds"] = round(sum(record["wall_seconds"] for record in records), 1)
    results["wall_seconds"] = round(time.time() - start, 1)
    with open(os.path.join(output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    with open(os.path.join(output_dir, "results.md"), "w") as handle:
        handle.write(to_markdown(results))
    plot(results, os.path.join(output_dir, "quality_vs_bitrate.png"))
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    main()
