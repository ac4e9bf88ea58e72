"""Tokenize a corpus split with `pqvae tokenize-dataset` under /usr/bin/time -v, and an hour-long file with
`pqvae tokenize`: wall time, audio-seconds per second and peak RSS, written to benchmarks/results/tokenize.{json,md}.

    .venv/bin/python benchmarks/tokenize_corpus.py --corpus_dir data/speech_corpus [--num_proc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PQVAE = os.path.join(os.path.dirname(sys.executable), "pqvae")


def timed(command: list[str]) -> dict:
    start = time.time()
    process = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = time.time() - start
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{process.stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", process.stderr).group(1))
    summary = json.loads(process.stdout[process.stdout.index("{"):])
    return {"wall_seconds": round(wall, 1), "peak_rss_mb": round(peak_kb / 1024), "summary": summary}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_proc", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--hour_seconds", type=float, default=3600.0)
    parser.add_argument("--output_dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="pqvae-tokenize-")
    corpus_command = [PQVAE, "tokenize-dataset", "--dataset_dir", args.corpus_dir, "--split", args.split,
                      "--split_column", "split", "--output_dir", os.path.join(work, "tokens"),
                      "--batch_size", str(args.batch_size), "--column_prefix", "pqvae_"]  # the corpus has duration_s
    if args.num_proc:
        corpus_command += ["--num_proc", str(args.num_proc)]
    corpus = timed(corpus_command)

    # An hour of real speech: the demo clip (10.8 s) repeated with small gain changes, written as 16 kHz PCM.
    clip, rate = sf.read(os.path.join(REPO, "assets", "speech_orig_16k.flac"), dtype="float32")
    repeats = int(np.ceil(args.hour_seconds * rate / len(clip)))
    gains = np.random.default_rng(0).uniform(0.5, 1.0, repeats).astype(np.float32)
    long_audio = np.concatenate([clip * g for g in gains])[: int(args.hour_seconds * rate)]
    long_path = os.path.join(work, "hour.wav")
    sf.write(long_path, long_audio, rate, subtype="PCM_16")
    del long_audio
    hour = timed([PQVAE, "tokenize", long_path, "--out", os.path.join(work, "hour_codes.npy")])

    result = {"corpus_split": args.split, "corpus_command": " ".join(corpus_command[1:]), "corpus": corpus,
              "hour_file_seconds": args.hour_seconds, "hour": hour,
              "threads": os.environ.get("OMP_NUM_THREADS", "default")}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "tokenize.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    c, h = corpus["summary"], hour["summary"]
    markdown = "\n".join([
        "# Tokenization throughput and memory", "",
        f"`benchmarks/tokenize_corpus.py --corpus_dir ... --split {args.split}`"
        f"{' --num_proc ' + str(args.num_proc) if args.num_proc else ''} (CPU, OMP_NUM_THREADS={result['threads']}).", "",
        "| job | audio | wall (s) | audio s / s | tokens | peak RSS (MB) |", "|---|---|---|---|---|---|",
        f"| `pqvae tokenize-dataset` ({args.split} split, {c['files']} files) | {c['audio_hours'] * 60:.1f} min |"
        f" {corpus['wall_seconds']} | {c['audio_hours'] * 3600 / corpus['wall_seconds']:.1f} | {c['tokens']:,} |"
        f" {corpus['peak_rss_mb']} |",
        f"| `pqvae tokenize` one {args.hour_seconds / 60:.0f}-minute file | {h['audio_seconds'] / 60:.1f} min |"
        f" {hour['wall_seconds']} | {h['audio_seconds'] / hour['wall_seconds']:.1f} | {h['frames']:,} |"
        f" {hour['peak_rss_mb']} |", "",
        "Wall times include process start and model loading; `tokenize-dataset` also includes dataset loading and"
        " writing the token dataset.", ""])
    with open(os.path.join(args.output_dir, "tokenize.md"), "w") as handle:
        handle.write(markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    main()
