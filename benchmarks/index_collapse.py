"""The paper's experiment: index collapse of single VQ vs RVQ vs PQ vs PQ + dual decoding, on real speech.

    .venv/bin/python benchmarks/index_collapse.py --corpus_dir data/speech_corpus            # full grid (hours)
    .venv/bin/python benchmarks/index_collapse.py --corpus_dir DIR --quick                  # about a minute

Every variant gets the same backbone (encoder/decoder), data (train split), step budget, optimiser, crop length and
seed; only the quantizer differs. Our quantizers get the same remedies wherever they apply (EMA, k-means init,
dead-code restarts, entropy loss), the plain VQ-VAE recipe is run too to show the collapse, and each remedy is
ablated on PQ + DD. Peers from vector-quantize-pytorch (`VectorQuantize`, `FSQ`, `SimVQ`; benchmark-only dependency,
`pip install .[bench]`) replace the quantizer in the same backbone (peer_quantizers.py). Each variant is evaluated
on the whole test split (unseen languages and speakers) and on the validation split with
`pqvae_hf.evaluation.evaluate_tokens`: usage and perplexity per sub-codebook and for composite ids, the product of
the sub-perplexities, log-mel L1/L2, bit rate, training wall time. Then the token-LM check (token_lm.py) trains the
same tiny GPT-2 on the composite ids of VQ-2^10, VQ-2^16 and PQ-2x256+DD.

The first grid (400 steps, one seed, current-batch restarts that cap a single codebook at about one batch of live
codes); `index_collapse_converged.py` is its successor (fair remedies for every codebook size, 2,000 steps, three
seeds). This script is kept so its committed results stay reproducible.

Outputs in `--output_dir`: variants/*.json (one per variant; a re-run skips those already there), token_lm/*.json,
results.json, results.md, perplexity_vs_codebook_size.png, usage_histogram.png. To use several cores, start the
same command in several processes (one torch thread each): each claims the next variant nobody is running.
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
sys.path.insert(0, HERE)  # peer_quantizers, token_lm

# The first and only value tried (no tuning); the "no entropy loss" ablation measures what it does.
ENTROPY_WEIGHT = 0.1

PLAIN = dict(use_ema=False, kmeans_init=False, dead_code_threshold=0.0, entropy_loss_weight=0.0)
# The remedied recipe, given to every one of our quantizers (VQ, PQ, RVQ) alike; each remedy is ablated below.
REMEDIES = dict(use_ema=True, kmeans_init=True, dead_code_threshold=1.0, entropy_loss_weight=ENTROPY_WEIGHT)
NO_DD = dict(dual_decoding_weight=0.0)
DD = dict(dual_decoding_weight=1.0)

# Tokenizers whose composite ids train the token LM (issue 6, part 3).
TOKEN_LM_VARIANTS = ("VQ-2^10", "VQ-2^16", "PQ-2x256+DD")
HISTOGRAM_VARIANTS = ("VQ-2^16", "PQ-2x256+DD")


def variants(quick: bool) -> list[tuple[str, str, dict]]:
    """(name, method, config overrides), most important first. Peers carry `peer=<kind>` (see peer_quantizers)."""
    def vq(size, **extra):
        return dict(quantizer_type="vq", num_codebooks=1, codebook_size=size, **{**REMEDIES, **NO_DD, **extra})

    def pq(m, n, dd=True, **extra):
        return dict(quantizer_type="pq", num_codebooks=m, codebook_size=n, **{**REMEDIES, **(DD if dd else NO_DD),
                                                                               **extra})

    grid = [
        ("PQ-2x256+DD", "PQ+DD", pq(2, 256)),
        ("VQ-2^16", "VQ", vq(65536)),
        ("PQ-2x256", "PQ", pq(2, 256, dd=False)),
        ("VQ-2^16 plain", "VQ plain", vq(65536, **PLAIN)),
        ("PQ-2x256 plain", "PQ plain", pq(2, 256, dd=False, **PLAIN)),
        ("PQ-2x256+DD plain", "PQ+DD plain", pq(2, 256, **PLAIN)),
    ]
    grid += [
        ("peer VQ-2^16 (vector-quantize-pytorch)", "peer VQ", dict(peer="vq")),
        ("peer FSQ 8-8-8-5-5-5", "peer FSQ", dict(peer="fsq")),
        ("peer SimVQ-2^16", "peer SimVQ", dict(peer="simvq")),
    ]
    opq = ("PQ-2x256+DD OPQ rotation", "ablation", pq(2, 256, subspace_rotation="opq"))
    if quick:  # every code path once: our quantizers, the peers, the rotation
        return grid + [opq]
    grid += [
        ("PQ-4x16+DD", "PQ+DD (M=4)", pq(4, 16)),
        ("PQ-4x16", "PQ (M=4)", pq(4, 16, dd=False)),
        ("RVQ-2x256", "RVQ", dict(quantizer_type="rvq", num_codebooks=2, codebook_size=256, **REMEDIES, **NO_DD)),
        ("RVQ-2x256+DD", "RVQ+DD", dict(quantizer_type="rvq", num_codebooks=2, codebook_size=256, **REMEDIES, **DD)),
    ]
    for bits in (10, 12, 14):
        n = 2 ** (bits // 2)
        grid += [(f"VQ-2^{bits}", "VQ", vq(2**bits)),
                 (f"PQ-2x{n}+DD", "PQ+DD", pq(2, n))]
    grid += [
        ("PQ-2x256+DD no EMA", "ablation", pq(2, 256, use_ema=False)),
        ("PQ-2x256+DD no k-means", "ablation", pq(2, 256, kmeans_init=False)),
        ("PQ-2x256+DD no restarts", "ablation", pq(2, 256, dead_code_threshold=0.0)),
        ("PQ-2x256+DD no entropy loss", "ablation", pq(2, 256, entropy_loss_weight=0.0)),
        opq,
        ("PQ-4x32+DD (2^20)", "PQ+DD (M=4)", pq(4, 32)),
        ("PQ-4x64+DD (2^24)", "PQ+DD (M=4)", pq(4, 64)),
    ]
    return grid


def extra_variants() -> list[tuple[str, str, dict]]:
    """Defined but left out of the default grid to fit the CPU budget; run them with --variants NAME ..."""
    pq = dict(quantizer_type="pq", **REMEDIES, **DD)
    return [(f"PQ-2x{n}", "PQ", dict(pq, num_codebooks=2, codebook_size=n, dual_decoding_weight=0.0))
            for n in (32, 64, 128)] + [
        ("PQ-4x8+DD", "PQ+DD (M=4)", dict(pq, num_codebooks=4, codebook_size=8)),
        ("PQ-3x256+DD (2^24)", "PQ+DD (M=3)", dict(pq, num_codebooks=3, codebook_size=256, codebook_dim=63)),
        ("PQ-2x256+DD cosine", "ablation", dict(pq, num_codebooks=2, codebook_size=256, use_cosine_codebook=True)),
        ("PQ-2x256+DD entropy loss x3", "ablation",
         dict(pq, num_codebooks=2, codebook_size=256, entropy_loss_weight=3 * ENTROPY_WEIGHT)),
    ]


def train_variant(overrides: dict, args, train_dataset, output_dir: str) -> tuple:
    from transformers import TrainingArguments

    from pqvae_hf.data import AudioCollator
    from pqvae_hf.trainer import EpochSetterCallback, PQVAETrainer

    torch.manual_seed(args.seed)
    # The recorded grid ran with the threshold in absolute units (1 assignment per batch), the only mode then.
    base = dict(hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size, vocoder="none",
                dead_code_threshold=1.0, dead_code_threshold_mode="absolute")
    from peer_quantizers import build_backbone

    model, _ = build_backbone(base, overrides)
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

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    methods = sorted({r["method"] for r in results} - {"ablation"})
    markers = dict(zip(methods, "osD^v<>pPX*hH8"))
    for method in methods:
        rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["composite_size"])
        sizes = [math.log2(r["composite_size"]) for r in rows]
        style = dict(marker=markers[method], label=method, linestyle="--" if "plain" in method else "-")
        axes[0].plot(sizes, [r["test"]["composite_perplexity"] for r in rows], **style)
        axes[1].plot(sizes, [r["test"]["log_mel_l1"] for r in rows], **style)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("composite perplexity (test split)")
    axes[1].set_ylabel("log-mel L1 of decoded tokens (test split)")
    for axis in axes:
        axis.set_xlabel("log2 composite codebook size (bits per frame)")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8, ncol=2)
    fig.suptitle("Index collapse benchmark: same backbone, data, steps and seed for every quantizer")
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


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-+^." else "_" for c in name)


def _load_eval_audio(args) -> dict:
    from pqvae_hf.data import decode_audio

    limits = {"test": args.max_eval_clips, "validation": args.max_val_clips}
    return {split: [decode_audio(cell, 16000) for cell in _spread_subset(args, split, limit)["audio"]]
            for split, limit in limits.items()}


def _spread_subset(args, split: str, limit: int | None):
    """The split, or `limit` clips evenly spaced through it (the metadata is sorted by source, so the first N clips
    would all come from one or two recording sets)."""
    from pqvae_hf.data import load_audio_dataset

    data = load_audio_dataset(dataset_dir=args.corpus_dir, split_column="split", split=split)
    if limit is None or limit >= len(data):
        return data
    return data.select(np.unique(np.linspace(0, len(data) - 1, limit).round().astype(int)).tolist())


def run_grid(args, selected, extra: dict) -> None:
    """Train + evaluate each selected variant; one JSON per variant in output_dir/variants (re-runs skip it)."""
    from pqvae_hf.data import add_index_column, load_audio_dataset
    from pqvae_hf.evaluation import evaluate_tokens

    variant_dir = os.path.join(args.output_dir, "variants")
    os.makedirs(variant_dir, exist_ok=True)
    todo = [v for v in selected if args.force or not os.path.exists(os.path.join(variant_dir, _slug(v[0]) + ".json"))]
    if not todo:
        return
    train = add_index_column(load_audio_dataset(dataset_dir=args.corpus_dir, split_column="split", split="train"))
    evaluation_audio = _load_eval_audio(args)
    for position, (name, method, overrides) in enumerate(todo, 1):
        result_path = os.path.join(variant_dir, _slug(name) + ".json")
        if (os.path.exists(result_path) and not args.force) or not _claim(result_path):
            continue  # done meanwhile, or being run by another process
        print(f"[index-collapse] {position}/{len(todo)} {name}", file=sys.stderr, flush=True)
        overrides = {**overrides, **extra}
        model, train_seconds = train_variant(overrides, args, train,
                                             os.path.join(args.output_dir, "runs", f"tmp-{os.getpid()}"))
        row = {"name": name, "method": method, "overrides": overrides, "train_seconds": round(train_seconds, 1),
               "threads": torch.get_num_threads(), "steps": args.steps,
               "composite_size": model.config.composite_codebook_size, "bits_per_second": model.config.bits_per_second}
        for split, audios in evaluation_audio.items():
            row[split] = evaluate_tokens(model, audios, progress=False)
        if name in HISTOGRAM_VARIANTS:
            row["test_composite_counts"] = _composite_counts(model, evaluation_audio["test"])
        if name in TOKEN_LM_VARIANTS:
            model.save_pretrained(os.path.join(args.output_dir, "runs", _slug(name)))
        with open(result_path, "w") as handle:
            json.dump(row, handle, indent=1)
        os.remove(result_path + ".claim")


def _claim(result_path: str) -> bool:
    """Atomically claim a variant for this process (a claim whose process is gone is taken over)."""
    claim = result_path + ".claim"
    for _ in range(2):
        try:
            handle = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(claim) as existing:
                    owner = int(existing.read().strip() or 0)
                os.kill(owner, 0)
                return False  # alive: someone else runs it
            except (ProcessLookupError, ValueError, FileNotFoundError):
                try:
                    os.remove(claim)
                except FileNotFoundError:
                    pass
                continue
        os.write(handle, str(os.getpid()).encode())
        os.close(handle)
        return True
    return False


def run_token_lm(args, names) -> None:
    """Token-LM check on the saved tokenizers of TOKEN_LM_VARIANTS; one JSON per tokenizer in output_dir/token_lm."""
    from token_lm import score_tokenizer

    from pqvae_hf.data import decode_audio

    lm_dir = os.path.join(args.output_dir, "token_lm")
    os.makedirs(lm_dir, exist_ok=True)
    todo = [n for n in names if args.force or not os.path.exists(os.path.join(lm_dir, _slug(n) + ".json"))]
    todo = [n for n in todo if os.path.isdir(os.path.join(args.output_dir, "runs", _slug(n)))]
    if not todo:
        return
    audio = {split: [decode_audio(cell, 16000) for cell in _spread_subset(args, split, limit)["audio"]]
             for split, limit in (("train", args.max_lm_train_clips), ("test", args.max_eval_clips))}
    for name in todo:
        result_path = os.path.join(lm_dir, _slug(name) + ".json")
        if (os.path.exists(result_path) and not args.force) or not _claim(result_path):
            continue
        print(f"[index-collapse] token LM on {name}", file=sys.stderr, flush=True)
        result = score_tokenizer(os.path.join(args.output_dir, "runs", _slug(name)), audio, steps=args.lm_steps,
                                 batch_size=args.lm_batch_size, seed=args.seed)
        with open(result_path, "w") as handle:
            json.dump({"name": name, **result}, handle, indent=1)
        os.remove(result_path + ".claim")


def report(args, names) -> dict:
    """Collect the per-variant JSONs (in grid order) into results.json / results.md and the two plots."""
    results, histograms, token_lm = [], {}, []
    for name in names:
        path = os.path.join(args.output_dir, "variants", _slug(name) + ".json")
        if os.path.exists(path):
            with open(path) as handle:
                row = json.load(handle)
            counts = row.pop("test_composite_counts", None)
            if counts is not None:
                histograms[name] = counts
            results.append(row)
        lm_path = os.path.join(args.output_dir, "token_lm", _slug(name) + ".json")
        if os.path.exists(lm_path):
            with open(lm_path) as handle:
                token_lm.append(json.load(handle))
    command = "benchmarks/index_collapse.py" + (" --quick" if args.quick else "")
    summary = {"command": command, "steps": args.steps, "batch_size": args.batch_size,
               "crop_seconds": args.crop_seconds, "hidden_size": args.hidden_size, "seed": args.seed,
               "max_eval_clips": args.max_eval_clips, "max_val_clips": args.max_val_clips,
               "total_train_seconds": round(sum(r["train_seconds"] for r in results), 1),
               "results": results, "token_lm": token_lm}
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    with open(os.path.join(args.output_dir, "results.md"), "w") as handle:
        handle.write(to_markdown(summary))
    if results:
        plot(results, histograms, args.output_dir)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--quick", action="store_true", help="6 variants, few steps, small model and eval subsets")
    parser.add_argument("--steps", type=int, default=None, help="training steps per variant (default 400)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--crop_seconds", type=float, default=2.0)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_eval_clips", type=int, default=None, help="test clips, evenly spaced (default: all)")
    parser.add_argument("--max_val_clips", type=int, default=None, help="validation clips, evenly spaced (default: all)")
    parser.add_argument("--lm_steps", type=int, default=None, help="token-LM training steps (default 300)")
    parser.add_argument("--lm_batch_size", type=int, default=8, help="token-LM windows of 128 tokens per step")
    parser.add_argument("--max_lm_train_clips", type=int, default=None, help="train clips for the token LM")
    parser.add_argument("--variants", nargs="*", default=None, help="run only these variant names")
    parser.add_argument("--stage", choices=("all", "grid", "token_lm", "report"), default="all")
    parser.add_argument("--force", action="store_true", help="re-run variants whose results already exist")
    # Work splits across processes: start the same command N times; each claims the next variant nobody runs.
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config fields set on top of every selected variant (e.g. entropy_loss_weight=0.1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output_dir", default=os.path.join(HERE, "results", "index_collapse"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = {key: json.loads(value) if value[:1] in "0123456789-[{tfn" else value
             for key, value in (item.split("=", 1) for item in args.override)}
    if args.steps is None:
        args.steps = 20 if args.quick else 400
    if args.lm_steps is None:
        args.lm_steps = 20 if args.quick else 300
    if args.quick:
        args.hidden_size = min(args.hidden_size, 64)
        args.max_eval_clips = args.max_eval_clips or 40
        args.max_val_clips = args.max_val_clips or 40
        args.max_lm_train_clips = args.max_lm_train_clips or 60
    known = variants(False) + extra_variants()
    if args.variants and not set(args.variants) <= {v[0] for v in known}:
        raise SystemExit(f"Unknown variant names {sorted(set(args.variants) - {v[0] for v in known})}; known:"
                         f" {[v[0] for v in known]}")
    selected = [v for v in (known if args.variants else variants(args.quick))
                if args.variants is None or v[0] in args.variants]
    # (VQ-2^10 is not in the quick grid; the other two exercise the token-LM path there)
    lm_names = [n for n in TOKEN_LM_VARIANTS if n in {v[0] for v in selected}]
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.time()
    if args.stage in ("all", "grid"):
        run_grid(args, selected, extra)
    if args.stage in ("all", "token_lm"):
        run_token_lm(args, lm_names)
    summary = report(args, [v[0] for v in selected])
    print(to_markdown(summary))
    print(f"[index-collapse] this call took {time.time() - start:.0f} s", file=sys.stderr)
    return summary


@torch.no_grad()
def _composite_counts(model, audios: list[np.ndarray]) -> list[int]:
    from pqvae_hf import CodebookStatistics

    stats = CodebookStatistics(model.config.num_codebooks, model.config.codebook_size)
    for audio in audios:
        stats.update(model.encode(torch.from_numpy(audio)[None, None]).audio_codes)
    return stats.composite_counts.tolist()


def targets(summary: dict) -> list[str]:
    """The issue's targets, checked against the measured rows (only those whose variants ran)."""
    rows = {row["name"]: row for row in summary["results"]}
    lines = ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]

    def add(target: str, measured: str, met: bool) -> None:
        lines.append(f"| {target} | {measured} | {'yes' if met else '**no**'} |")

    main = rows.get("PQ-2x256+DD")
    if main:
        test, n = main["test"], main["composite_size"] ** 0.5
        usage = test["codebook_usage_fraction"]
        add("PQ-2x256+DD: >= 99 % of every sub-codebook used (test)",
            " / ".join(f"{100 * u:.1f} %" for u in usage), min(usage) >= 0.99)
        ratios = [p / n for p in test["codebook_perplexity"]]
        val_ratios = [p / n for p in main["validation"]["codebook_perplexity"]]
        add("PQ-2x256+DD: sub-perplexity >= 0.8 N (test)",
            " / ".join(f"{r:.2f} N" for r in ratios) + " (validation: " +
            " / ".join(f"{r:.2f} N" for r in val_ratios) + ")", min(ratios) >= 0.8)
        lines.append(f"| PQ-2x256+DD: composite perplexity vs product of sub-perplexities |"
                     f" {test['composite_perplexity']:,.0f} vs {test['product_of_codebook_perplexities']:,.0f} | - |")
        for other in ["VQ-2^16"] + [name for name in rows if name.startswith("peer ")]:
            if other in rows:
                theirs, ours = rows[other]["test"]["log_mel_l1"], test["log_mel_l1"]
                speed = rows[other]["train_seconds"] / main["train_seconds"]
                add(f"PQ-2x256+DD test mel L1 <= {other} ({rows[other]['bits_per_second']:.0f} bit/s)",
                    f"{ours:.3f} vs {theirs:.3f} ({100 * (ours - theirs) / theirs:+.1f} %); PQ-2x256+DD trains"
                    f" {speed if speed >= 1 else 1 / speed:.2f}x {'faster' if speed >= 1 else 'slower'}", ours <= theirs)
    for name in ("PQ-4x32+DD (2^20)", "PQ-3x256+DD (2^24)", "PQ-4x64+DD (2^24)"):
        if name in rows:
            usage = rows[name]["test"]["codebook_usage_fraction"]
            add(f"{name}: >= 95 % of every sub-codebook used (test)",
                " / ".join(f"{100 * u:.1f} %" for u in usage), min(usage) >= 0.95)
    return lines if len(lines) > 5 else []


def to_markdown(summary: dict) -> str:
    eval_note = (f"{summary['max_eval_clips']} evenly spaced test clips" if summary["max_eval_clips"] else "whole test split")
    lines = [f"# Index collapse ({summary['command']})", "",
             f"{summary['steps']} steps per variant, batch {summary['batch_size']} x {summary['crop_seconds']} s,"
             f" hidden {summary['hidden_size']}, seed {summary['seed']}; metrics on the {eval_note} (unseen"
             f" languages and speakers); val metrics on"
             f" {(str(summary['max_val_clips']) + ' evenly spaced') if summary['max_val_clips'] else 'all'} validation clips."
             f" Total training time {summary['total_train_seconds'] / 60:.0f} min.", "",
             "| variant | composite | bit/s | used per codebook (%) | perplexity per codebook | composite perplexity |"
             " product of perplexities | mel L1 | mel L2 | val mel L1 | val perplexity per codebook | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary["results"]:
        test, val = row["test"], row["validation"]
        usage = " / ".join(f"{100 * u:.3g}" for u in test["codebook_usage_fraction"])
        perplexity = " / ".join(f"{p:.1f}" for p in test["codebook_perplexity"])
        val_perplexity = " / ".join(f"{p:.1f}" for p in val["codebook_perplexity"])
        lines.append(f"| {row['name']} | 2^{math.log2(row['composite_size']):.2f}".rstrip("0").rstrip(".") +
                     f" | {row['bits_per_second']:.0f} | {usage} | {perplexity} | {test['composite_perplexity']:,.1f} |"
                     f" {test['product_of_codebook_perplexities']:,.0f} | {test['log_mel_l1']:.3f} |"
                     f" {test['log_mel_l2']:.3f} | {val['log_mel_l1']:.3f} | {val_perplexity} |"
                     f" {row['train_seconds']:.0f} |")
    lines += targets(summary)
    if summary.get("token_lm"):
        lines += ["", "## Token LM (tiny GPT-2 on train-split composite ids, scored on the test split)", "",
                  "| tokenizer | vocabulary | LM parameters | test bits / frame | test bits / s | unigram bits / frame |"
                  " log2 vocabulary | test tokens unseen in train | LM train s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in summary["token_lm"]:
            lines.append(f"| {row['name']} | {row['vocab_size']:,} | {row['lm_parameters'] / 1e6:.2f} M |"
                         f" {row['test_bits_per_frame']:.2f} | {row['test_bits_per_second']:.0f} |"
                         f" {row['unigram_bits_per_frame']:.2f} | {row['max_bits_per_frame']:.1f} |"
                         f" {100 * row['test_tokens_unseen_in_train']:.1f} % | {row['lm_train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
