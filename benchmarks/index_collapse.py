"""The paper's experiment: index collapse of single VQ vs RVQ vs PQ vs PQ + dual decoding, on real speech.

    .venv/bin/python benchmarks/index_collapse.py --corpus_dir data/speech_corpus            # full grid (hours)
    .venv/bin/python benchmarks/index_collapse.py --corpus_dir DIR --quick                  # minutes

Every variant gets the same backbone (encoder/decoder), data (train split), step budget, optimiser, crop length and
seed; only the quantizer settings differ. Each is evaluated on the test and validation splits with
`pqvae_hf.evaluation.evaluate_tokens` (usage and perplexity per sub-codebook and composite, log-mel L1/L2).
Outputs in `--output_dir`: results.json, results.md, perplexity_vs_codebook_size.png, usage_histogram.png.

Status: the grid covers our quantizers (plain recipe and remedied: EMA, k-means init, dead-code restarts, and
ablations of each). Peer quantizers from vector-quantize-pytorch and the token-LM check are not written yet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

PLAIN = dict(use_ema=False, kmeans_init=False, dead_code_threshold=0.0)
NO_DD = dict(dual_decoding_weight=0.0)


CORE = {"VQ-2^16 plain", "PQ-2x256 plain", "PQ-2x256+DD plain", "PQ-2x256+DD", "PQ-2x256", "VQ-2^16"}


def variants(quick: bool) -> list[dict]:
    """(name, method, config overrides). Remedies are the config defaults (EMA, k-means init, dead-code restart)."""
    grid = [
        ("VQ-2^16 plain", "VQ plain", dict(quantizer_type="vq", num_codebooks=1, codebook_size=65536, **PLAIN, **NO_DD)),
        ("PQ-2x256 plain", "PQ plain", dict(num_codebooks=2, codebook_size=256, **PLAIN, **NO_DD)),
        ("PQ-2x256+DD plain", "PQ+DD plain", dict(num_codebooks=2, codebook_size=256, **PLAIN)),
        ("PQ-2x256+DD", "PQ+DD", dict(num_codebooks=2, codebook_size=256)),
        ("PQ-2x256", "PQ", dict(num_codebooks=2, codebook_size=256, **NO_DD)),
        ("VQ-2^16", "VQ", dict(quantizer_type="vq", num_codebooks=1, codebook_size=65536, **NO_DD)),
    ]
    if quick:
        return grid
    for bits in (10, 12, 14):
        grid.append((f"VQ-2^{bits}", "VQ", dict(quantizer_type="vq", num_codebooks=1, codebook_size=2**bits, **NO_DD)))
        grid.append((f"PQ-2x{2 ** (bits // 2)}+DD", "PQ+DD", dict(num_codebooks=2, codebook_size=2 ** (bits // 2))))
        grid.append((f"PQ-2x{2 ** (bits // 2)}", "PQ", dict(num_codebooks=2, codebook_size=2 ** (bits // 2), **NO_DD)))
    grid += [
        ("PQ-4x16+DD", "PQ+DD", dict(num_codebooks=4, codebook_size=16)),
        ("PQ-4x16", "PQ", dict(num_codebooks=4, codebook_size=16, **NO_DD)),
        ("RVQ-2x256", "RVQ", dict(quantizer_type="rvq", num_codebooks=2, codebook_size=256, **NO_DD)),
        ("RVQ-2x256+DD", "RVQ+DD", dict(quantizer_type="rvq", num_codebooks=2, codebook_size=256)),
        ("PQ-2x256+DD no EMA", "ablation", dict(num_codebooks=2, codebook_size=256, use_ema=False)),
        ("PQ-2x256+DD no k-means", "ablation", dict(num_codebooks=2, codebook_size=256, kmeans_init=False)),
        ("PQ-2x256+DD no restarts", "ablation", dict(num_codebooks=2, codebook_size=256, dead_code_threshold=0.0)),
        ("PQ-2x256+DD cosine", "ablation", dict(num_codebooks=2, codebook_size=256, use_cosine_codebook=True)),
        ("PQ-4x32+DD (2^20)", "PQ+DD", dict(num_codebooks=4, codebook_size=32)),
        ("PQ-3x256+DD (2^24)", "PQ+DD", dict(num_codebooks=3, codebook_size=256, codebook_dim=63)),
        ("PQ-4x64+DD (2^24)", "PQ+DD", dict(num_codebooks=4, codebook_size=64)),
    ]
    return grid


def train_variant(overrides: dict, args, train_dataset, output_dir: str) -> tuple:
    from transformers import TrainingArguments

    from pqvae_hf import PQVAEConfig, PQVAEModel
    from pqvae_hf.data import AudioCollator
    from pqvae_hf.trainer import EpochSetterCallback, PQVAETrainer

    torch.manual_seed(args.seed)
    base = dict(hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size, vocoder="none")
    model = PQVAEModel(PQVAEConfig(**{**base, **overrides}))
    collator = AudioCollator(model.config.sampling_rate, crop_seconds=args.crop_seconds, seed=args.seed)
    training_args = TrainingArguments(
        output_dir=output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=min(200, args.steps // 10),
        weight_decay=0.01, logging_steps=max(1, args.steps // 10), save_strategy="no", report_to="none",
        seed=args.seed, remove_unused_columns=False, label_names=[], disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = PQVAETrainer(model=model, args=training_args, train_dataset=train_dataset, data_collator=collator,
                           callbacks=[EpochSetterCallback(collator)])
    start = time.time()
    trainer.train()
    return model.eval(), time.time() - start


def plot(results: list[dict], histograms: dict, output_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for method in sorted({r["method"] for r in results} - {"ablation"}):
        rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["composite_size"])
        axis.plot([math.log2(r["composite_size"]) for r in rows], [r["test"]["composite_perplexity"] for r in rows],
                  marker="o", label=method)
    axis.set_yscale("log")
    axis.set_xlabel("log2 composite codebook size")
    axis.set_ylabel("composite perplexity (test split)")
    axis.legend()
    axis.grid(alpha=0.3)
    fig.savefig(os.path.join(output_dir, "perplexity_vs_codebook_size.png"), dpi=110)
    plt.close(fig)
    if histograms:
        fig, axes = plt.subplots(1, len(histograms), figsize=(5 * len(histograms), 3.5), constrained_layout=True)
        for axis, (name, counts) in zip(np.atleast_1d(axes), histograms.items()):
            counts = np.sort(np.asarray(counts))[::-1]
            axis.plot(np.arange(1, len(counts) + 1), np.maximum(counts, 0.5))
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_title(f"{name}: {int((counts > 0).sum()):,} composite codes used")
            axis.set_xlabel("code rank")
            axis.set_ylabel("test-split count")
        fig.savefig(os.path.join(output_dir, "usage_histogram.png"), dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--quick", action="store_true", help="6 variants, few steps, small eval subsets")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--crop_seconds", type=float, default=2.0)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_eval_clips", type=int, default=None)
    parser.add_argument("--variants", nargs="*", default=None, help="run only these variant names")
    parser.add_argument("--output_dir", default=os.path.join(HERE, "results", "index_collapse"))
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 20 if args.quick else 800
    if args.quick:
        args.hidden_size = min(args.hidden_size, 64)
        args.max_eval_clips = args.max_eval_clips or 40

    from pqvae_hf.data import add_index_column, decode_audio, load_audio_dataset
    from pqvae_hf.evaluation import evaluate_tokens

    os.makedirs(args.output_dir, exist_ok=True)
    source = dict(dataset_dir=args.corpus_dir, split_column="split")
    train = add_index_column(load_audio_dataset(split="train", **source))
    evaluation_audio = {}
    for split in ("test", "validation"):
        data = load_audio_dataset(split=split, max_samples=args.max_eval_clips, **source)
        evaluation_audio[split] = [decode_audio(cell, 16000) for cell in data["audio"]]

    results, histograms = [], {}
    start = time.time()
    selected = [v for v in variants(args.quick or bool(args.variants and set(args.variants) <= CORE))
                if args.variants is None or v[0] in args.variants]
    if args.variants and len(selected) != len(set(args.variants)):
        raise SystemExit(f"Unknown variant names; known: {[v[0] for v in variants(False)]}")
    for name, method, overrides in selected:
        print(f"[index-collapse] {name}", file=sys.stderr, flush=True)
        model, train_seconds = train_variant(overrides, args, train, os.path.join(args.output_dir, "runs", "tmp"))
        row = {"name": name, "method": method, "overrides": overrides, "train_seconds": round(train_seconds, 1),
               "composite_size": model.config.composite_codebook_size, "bits_per_second": model.config.bits_per_second}
        for split, audios in evaluation_audio.items():
            row[split] = evaluate_tokens(model, audios, progress=False)
        results.append(row)
        if name in ("VQ-2^16", "PQ-2x256+DD"):
            histograms[name] = _composite_counts(model, evaluation_audio["test"])
    wall = time.time() - start
    summary = {"command": "benchmarks/index_collapse.py" + (" --quick" if args.quick else ""),
               "steps": args.steps, "batch_size": args.batch_size, "crop_seconds": args.crop_seconds,
               "hidden_size": args.hidden_size, "seed": args.seed, "wall_seconds": round(wall, 1),
               "max_eval_clips": args.max_eval_clips, "results": results}
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    with open(os.path.join(args.output_dir, "results.md"), "w") as handle:
        handle.write(to_markdown(summary))
    plot(results, histograms, args.output_dir)
    print(to_markdown(summary))
    return summary


@torch.no_grad()
def _composite_counts(model, audios: list[np.ndarray]) -> list[int]:
    from pqvae_hf import CodebookStatistics

    stats = CodebookStatistics(model.config.num_codebooks, model.config.codebook_size)
    for audio in audios:
        stats.update(model.encode(torch.from_numpy(audio)[None, None]).audio_codes)
    return stats.composite_counts.tolist()


def to_markdown(summary: dict) -> str:
    lines = [f"# Index collapse ({summary['command']})", "",
             f"{summary['steps']} steps, batch {summary['batch_size']} x {summary['crop_seconds']} s, hidden"
             f" {summary['hidden_size']}, seed {summary['seed']}, wall {summary['wall_seconds']:.0f} s. Test split"
             f"{' (first ' + str(summary['max_eval_clips']) + ' clips)' if summary['max_eval_clips'] else ''}.", "",
             "| variant | composite | bit/s | used per codebook (%) | perplexity per codebook | composite perplexity |"
             " product of perplexities | mel L1 | mel L2 | val mel L1 | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary["results"]:
        test, val = row["test"], row["validation"]
        usage = " / ".join(f"{100 * u:.3g}" for u in test["codebook_usage_fraction"])
        perplexity = " / ".join(f"{p:.1f}" for p in test["codebook_perplexity"])
        lines.append(f"| {row['name']} | 2^{math.log2(row['composite_size']):.0f} | {row['bits_per_second']:g} |"
                     f" {usage} | {perplexity} | {test['composite_perplexity']:,.1f} |"
                     f" {test['product_of_codebook_perplexities']:,.0f} | {test['log_mel_l1']:.3f} |"
                     f" {test['log_mel_l2']:.3f} | {val['log_mel_l1']:.3f} | {row['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
