"""Speed and memory of PQ-VAE against transformers' EnCodec, DAC and Mimi, measured in one run on one machine.

    .venv/bin/python benchmarks/speed.py                 # full run -> benchmarks/results/speed.{json,md}
    .venv/bin/python benchmarks/speed.py --quick         # seconds-long smoke run (used by the tests)

Throughput is audio-seconds per wall-second (higher is faster), for encode (audio -> tokens) and decode
(tokens -> waveform), batch 1 and a larger batch, 10 s and 60 s inputs; warm-up, then the median of several runs,
with `torch.set_num_threads` fixed. Each model runs in its own process so its peak RSS (ru_maxrss, model loading
included) is its own. Peers are built from their default configs with random weights: speed does not depend on the
weights, and the Hub is unreachable here. PQ-VAE is the shipped checkpoint (neural vocoder), in PyTorch and through
onnxruntime. A quantizer micro-benchmark compares PQ nearest-codeword search (M=2 x N=256) with one 65,536-word
codebook at the same dimension, next to the multiply-add counts one would expect.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PEERS = ("pqvae", "pqvae-onnx", "encodec", "mimi", "dac")


def _timed(function, repeats: int, budget_seconds: float = 60.0) -> float:
    start = time.perf_counter()
    function()  # warm-up (allocations, kernels, lazy init)
    warm_up = time.perf_counter() - start
    if warm_up * (repeats + 1) > budget_seconds:  # slow peer: fewer runs, still the median of what fits
        repeats = max(1, min(repeats, int(budget_seconds / max(warm_up, 1e-9))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _build(name: str, device: str):
    """-> (sampling_rate, encode(audio (B, 1, T)) -> codes, decode(codes) -> audio)."""
    if name in ("pqvae", "pqvae-onnx"):
        sys.path.insert(0, REPO)
        from pqvae_hf.inference import load_model

        model = load_model(None, device)
        rate = model.config.sampling_rate
        if name == "pqvae":
            return rate, (lambda x: model.encode(x).audio_codes), (lambda c: model.decode(c).audio_values)
        import onnxruntime as ort

        from pqvae_hf.conversion.export_onnx import export

        paths = export(model, tempfile.mkdtemp(prefix="pqvae-onnx-"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        encoder = ort.InferenceSession(paths["encoder"], options, providers=["CPUExecutionProvider"])
        decoder = ort.InferenceSession(paths["decoder"], options, providers=["CPUExecutionProvider"])

        def encode(x):
            mask = np.ones((x.shape[0], x.shape[-1]), dtype=np.int64)
            return torch.from_numpy(encoder.run(None, {"input_values": x.numpy(), "padding_mask": mask})[0])

        return rate, encode, (lambda c: decoder.run(None, {"audio_codes": c.numpy()})[-1])
    import transformers

    if name == "encodec":
        model = transformers.EncodecModel(transformers.EncodecConfig()).eval().to(device)
        encode = lambda x: model.encode(x).audio_codes  # noqa: E731
        decode = lambda c: model.decode(c, [None]).audio_values  # noqa: E731
    elif name == "mimi":
        model = transformers.MimiModel(transformers.MimiConfig()).eval().to(device)
        encode = lambda x: model.encode(x).audio_codes  # noqa: E731
        decode = lambda c: model.decode(c).audio_values  # noqa: E731
    elif name == "dac":
        model = transformers.DacModel(transformers.DacConfig()).eval().to(device)
        encode = lambda x: model.encode(x).audio_codes  # noqa: E731
        decode = lambda c: model.decode(audio_codes=c).audio_values  # noqa: E731
    else:
        raise ValueError(name)
    return model.config.sampling_rate, encode, decode


def worker(name: str, seconds: list[float], batches: list[int], repeats: int, threads: int, device: str,
           max_call_seconds: float = 60.0) -> dict:
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    rate, encode, decode = _build(name, device)
    rows = []
    slowest = None  # audio-seconds per second of the slower direction, from the first setting
    for duration in seconds:
        for batch in batches:
            if slowest is not None and batch * duration / slowest > max_call_seconds:
                rows.append({"seconds": duration, "batch": batch, "skipped": f"one call would take about"
                             f" {batch * duration / slowest:.0f} s (> {max_call_seconds:g} s)"})
                continue
            audio = 0.1 * torch.randn(batch, 1, int(duration * rate), generator=torch.Generator().manual_seed(0))
            audio = audio.to(device)
            codes = encode(audio)
            encode_time = _timed(lambda: encode(audio), repeats)
            decode_time = _timed(lambda: decode(codes), repeats)
            rows.append({"seconds": duration, "batch": batch,
                         "encode_audio_s_per_s": batch * duration / encode_time,
                         "decode_audio_s_per_s": batch * duration / decode_time})
            if slowest is None:
                slowest = min(rows[-1]["encode_audio_s_per_s"], rows[-1]["decode_audio_s_per_s"])
    return {"name": name, "sampling_rate": rate, "rows": rows,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def quantizer_microbenchmark(frames: int, repeats: int, threads: int) -> dict:
    """Nearest-codeword search for `frames` latents of dim 64: PQ 2 x 256 (d=32) vs one codebook of 65,536."""
    sys.path.insert(0, REPO)
    from pqvae_hf.modeling.quantization_pqvae import VectorQuantizerGroup

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(frames, 64, generator=generator)
    pq = VectorQuantizerGroup(2, 256, 32, use_ema=False, kmeans_init=False)
    vq = VectorQuantizerGroup(1, 65536, 64, use_ema=False, kmeans_init=False)
    with torch.no_grad():
        pq.codebook.normal_(generator=generator)
        vq.codebook.normal_(generator=generator)
        pq_time = _timed(lambda: pq.search(latents.view(frames, 2, 32)), repeats)
        vq_time = _timed(lambda: vq.search(latents.view(frames, 1, 64)), repeats)
    pq_macs, vq_macs = frames * 2 * 256 * 32, frames * 65536 * 64
    return {"frames": frames, "pq_seconds": pq_time, "vq_seconds": vq_time, "speedup": vq_time / pq_time,
            "expected_speedup_from_macs": vq_macs / pq_macs,
            "pq_gmacs_per_s": pq_macs / pq_time / 1e9, "vq_gmacs_per_s": vq_macs / vq_time / 1e9,
            "pq_codebook_floats": 2 * 256 * 32, "vq_codebook_floats": 65536 * 64}


def to_markdown(result: dict) -> str:
    lines = [f"# Speed benchmark ({result['machine']})", "",
             f"`{result['command']}`: torch {result['torch']}, {result['threads']} threads, device {result['device']},"
             f" median of {result['repeats']} runs after a warm-up; wall time {result['wall_seconds']:.0f} s.",
             "Throughput in audio-seconds per wall-second. Peers use their default configs and random weights.", "",
             "| model | input | batch | encode x real time | decode x real time | peak RSS (MB) |",
             "|---|---|---|---|---|---|"]
    for model in result["models"]:
        if "error" in model:
            lines.append(f"| {model['name']} | - | - | failed: {model['error'][:80]} | | |")
            continue
        for row in model["rows"]:
            if "skipped" in row:
                lines.append(f"| {model['name']} | {row['seconds']:g} s | {row['batch']} | skipped: {row['skipped']}"
                             " | | |")
                continue
            lines.append(f"| {model['name']} | {row['seconds']:g} s | {row['batch']} |"
                         f" {row['encode_audio_s_per_s']:.1f} | {row['decode_audio_s_per_s']:.1f} |"
                         f" {model['peak_rss_mb']:.0f} |")
    lines += ["", "## PQ-VAE / peer throughput ratios", "", "| peer | input | batch | encode ratio | decode ratio |",
              "|---|---|---|---|---|"]
    for ratio in result["ratios"]:
        lines.append(f"| {ratio['peer']} | {ratio['seconds']:g} s | {ratio['batch']} | {ratio['encode_ratio']:.1f} |"
                     f" {ratio['decode_ratio']:.1f} |")
    q = result["quantizer"]
    lines += ["", "## Quantizer search at composite 2^16", "",
              f"{q['frames']:,} latents of dim 64: PQ 2 x 256 {q['pq_seconds'] * 1e3:.1f} ms, single VQ 65,536"
              f" {q['vq_seconds'] * 1e3:.1f} ms: PQ is **{q['speedup']:.0f}x** faster (multiply-adds predict"
              f" {q['expected_speedup_from_macs']:.0f}x; achieved {q['pq_gmacs_per_s']:.1f} vs"
              f" {q['vq_gmacs_per_s']:.1f} GMAC/s). Codebook memory: {q['pq_codebook_floats']:,} vs"
              f" {q['vq_codebook_floats']:,} floats."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 s inputs, batch 1, 1 run, PQ-VAE and EnCodec only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--output_dir", default=os.path.join(HERE, "results"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, nargs="*", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, nargs="*", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.seconds, args.batches, args.repeats, args.threads, args.device)))
        return {}

    seconds, batches = ([1.0], [1]) if args.quick else ([10.0, 60.0], [1, 4])
    repeats = 1 if args.quick else args.repeats
    models = args.models or (["pqvae", "encodec"] if args.quick else list(PEERS))
    start = time.time()
    results = []
    for name in models:
        command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--threads", str(args.threads),
                   "--device", args.device, "--repeats", str(repeats), "--seconds", *map(str, seconds),
                   "--batches", *map(str, batches)]
        print(f"[speed] {name} ...", file=sys.stderr, flush=True)
        process = subprocess.run(command, capture_output=True, text=True)
        if process.returncode != 0:
            results.append({"name": name, "error": process.stderr.strip().splitlines()[-1] if process.stderr else "?"})
            print(f"[speed] {name} failed: {process.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(process.stdout.strip().splitlines()[-1]))
    ours = {(r["seconds"], r["batch"]): r for m in results if m["name"] == "pqvae" for r in m.get("rows", [])}
    ratios = []
    for model in results:
        if model["name"].startswith("pqvae") or "rows" not in model:
            continue
        for row in model["rows"]:
            mine = ours.get((row["seconds"], row["batch"]))
            if mine and "skipped" not in row and "skipped" not in mine:
                ratios.append({"peer": model["name"], "seconds": row["seconds"], "batch": row["batch"],
                               "encode_ratio": mine["encode_audio_s_per_s"] / row["encode_audio_s_per_s"],
                               "decode_ratio": mine["decode_audio_s_per_s"] / row["decode_audio_s_per_s"]})
    result = {
        "command": "benchmarks/speed.py" + (" --quick" if args.quick else ""),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "threads": args.threads, "device": args.device, "repeats": repeats,
        "models": results, "ratios": ratios,
        "quantizer": quantizer_microbenchmark(2000 if args.quick else 20000, repeats + 2, args.threads),
    }
    result["wall_seconds"] = time.time() - start
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "speed.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    with open(os.path.join(args.output_dir, "speed.md"), "w") as handle:
        handle.write(to_markdown(result))
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
