"""The paper's experiment to convergence: fair remedies for every codebook size, >= 2,000 steps, three seeds.

    .venv/bin/python benchmarks/index_collapse_converged.py --corpus_dir data/speech_corpus --threads 1   # the grid
    .venv/bin/python benchmarks/index_collapse_converged.py --corpus_dir data/speech_corpus --stage report
    .venv/bin/python benchmarks/index_collapse_converged.py --corpus_dir DIR --quick                      # ~1-2 min

What changed against `index_collapse.py` (400 steps, one seed; issue 13):

- **Fair remedies, one rule for every codebook size** (`fair_remedies`), given alike to our VQ, PQ and RVQ: k-means
  on at least `--init_frames` (65,536) distinct frames accumulated over the first batches (every variant waits the
  same ~46 steps, the quantizer passing latents through meanwhile; RVQ stages are seeded on the residuals of the
  same frames); dead codes judged in expected-uses units (`dead_code_threshold=0.2` of the uniform share, over a usage
  window of max(4 N, 131,072) frames, so a uniformly used codeword has >= 4 expected uses per window) and restarted
  from a replay buffer of the last `--replay_frames` (65,536) encoder outputs, each with a distinct frame, so a
  65,536-word codebook is no longer capped at one batch's ~1,430 frames; no restarts in the last `--freeze_steps`
  (200) steps, so evaluated codebooks hold trained codewords. No entropy loss anywhere.
- The peer `VectorQuantize` (vector-quantize-pytorch) gets the matched setting where the library allows it: k-means
  init, EMA decay 0.99, `threshold_ema_dead_code` = 0.2 x the expected uses per codeword per batch (its threshold is
  an absolute EMA count), restarts frozen for the same last steps. Its own recipe differs in what the library fixes:
  k-means on the first batch only (duplicates when the batch has fewer frames than codewords), dead codes checked
  every step and replaced from the current batch only (at most one batch of frames revived per step), usage window
  = its EMA decay (100 batches). FSQ has no codebook to remedy.
- Every (variant, seed) is trained for `--steps` (2,000) steps, validated every `--val_every` steps on a fixed
  subset of validation clips (mel L1, composite perplexity: the learning curve), timed per component (quantizer
  search; EMA + restarts + k-means init; entropy loss; peer quantizer; backbone forward/backward + optimizer; data),
  and evaluated on the whole test split and the whole validation split with `pqvae_hf.evaluation.evaluate_tokens`.

Work sharing and resuming: each (variant, seed) is one JSON in `OUTPUT_DIR/variants/`; a process claims the next
pair nobody runs (a claim file holding its pid), so several processes (one torch thread each) share the grid; a
finished pair is skipped on re-runs. Every `--val_every` steps a run writes `OUTPUT_DIR/runs/<pair>/checkpoint.pt`
(model, optimizer, schedule, quantizer training state, RNG, curve, timers), and a restarted process resumes a pair
from it, so a stop loses at most `--val_every` steps. `--stage report` rebuilds results.json / results.md / plots
from whatever JSONs exist (pending pairs are listed, never filled in).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)  # index_collapse, peer_quantizers, token_lm

from index_collapse import _claim, _slug, _spread_subset  # noqa: E402

DEFAULT_OUTPUT = os.path.join(HERE, "results", "index_collapse_converged")
SEEDS = (0, 1, 2)
# The tokenizers whose composite ids train the token LM, and whose test-split code counts are plotted (seed 0).
TOKEN_LM_VARIANTS = ("VQ-2^16", "PQ-2x256+DD")
TOKEN_LM_SEED = 0  # the seed whose tokenizers are saved for the token-LM stage and whose code counts are plotted
PLAIN = dict(use_ema=False, kmeans_init=False, dead_code_threshold=0.0, entropy_loss_weight=0.0)


def default_seeds(quick: bool) -> list[int]:
    """Seeds of the grid when --seeds is not given (the quick smoke run: one)."""
    return [0] if quick else list(SEEDS)


def fair_remedies(codebook_size: int, args) -> dict:
    """The remedies every one of our quantizers gets, scaled by its codebook size N (see the module docstring)."""
    return dict(
        use_ema=True, ema_decay=0.99, kmeans_init=True, kmeans_iters=10, kmeans_init_min_frames=args.init_frames,
        dead_code_threshold=0.2, dead_code_threshold_mode="relative", dead_code_restart_interval=args.restart_interval,
        dead_code_replay_frames=args.replay_frames, usage_window_frames=max(4 * codebook_size, args.min_usage_window),
        dead_code_restart_last_step=max(1, args.steps - args.freeze_steps), entropy_loss_weight=0.0)


def variants(args) -> list[tuple[str, str, dict, tuple[int, ...]]]:
    """(name, method, config overrides, seeds): the core grid, then the peer VectorQuantize (one seed) and the plain
    VQ-VAE recipe (one seed, to show the collapse)."""
    def ours(kind, m, n, dd, **extra):
        return dict(quantizer_type=kind, num_codebooks=m, codebook_size=n, dual_decoding_weight=1.0 if dd else 0.0,
                    **{**fair_remedies(n, args), **extra})

    seeds = tuple(args.seeds)
    # Run order within a seed: the paper's method, then the fair single-codebook baseline (issue 13's first point),
    # then the cheaper comparisons, the second 65,536-word run last.
    return [
        ("PQ-2x256+DD", "PQ+DD", ours("pq", 2, 256, True), seeds),
        ("VQ-2^16", "VQ", ours("vq", 1, 65536, False), seeds),
        ("PQ-2x256", "PQ", ours("pq", 2, 256, False), seeds),
        ("FSQ 8-8-8-5-5-5 (peer)", "FSQ (peer)", dict(peer="fsq"), seeds),
        ("RVQ-2x256+DD", "RVQ+DD", ours("rvq", 2, 256, True), seeds),
        ("VQ-2^16+DD", "VQ+DD", ours("vq", 1, 65536, True), seeds),
        ("VectorQuantize-2^16 (peer, matched)", "VectorQuantize (peer)", dict(peer="vq"), seeds[:1]),
        ("VQ-2^16 plain", "plain recipe", ours("vq", 1, 65536, False, **PLAIN), seeds[:1]),
        ("PQ-2x256+DD plain", "plain recipe", ours("pq", 2, 256, True, **PLAIN), seeds[:1]),
    ]


def pairs(args) -> list[tuple[str, str, dict, int]]:
    """(variant, seed) pairs in run order: seed 0 of every variant first (in `variants` order), then seed 1, then
    seed 2; the plain-recipe rows last."""
    grid = [v for v in variants(args) if args.variants is None or v[0] in args.variants]
    plain = [v for v in grid if v[1] == "plain recipe"]
    order = []
    for seed in sorted({s for v in grid for s in v[3]}):
        order += [(name, method, overrides, seed) for name, method, overrides, seeds in grid
                  if seed in seeds and (name, method, overrides, seeds) not in plain]
    order += [(name, method, overrides, seed) for name, method, overrides, seeds in plain for seed in seeds]
    return order


def pair_slug(name: str, seed: int) -> str:
    return f"{_slug(name)}__seed{seed}"


# --------------------------------------------------------------------------------------------------------------------
# Per-component timing
# --------------------------------------------------------------------------------------------------------------------


class ComponentTimers:
    """Wall seconds per component, accumulated only while `active` (training steps, not validation)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.counts = defaultdict(int)
        self.active = False

    def wrap(self, owner, method: str, component: str, before=None) -> None:
        inner = getattr(owner, method)

        def timed(*args, **kwargs):
            if not self.active:
                return inner(*args, **kwargs)
            if before is not None:
                before(*args, **kwargs)
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[component] += time.perf_counter() - start

        # An instance attribute shadows the class's method (nn.Module.__setattr__ keeps plain callables as such).
        object.__setattr__(owner, method, timed)

    def instrument(self, model) -> None:
        from pqvae_hf.modeling.quantization_pqvae import VectorQuantizerGroup

        groups = [m for m in model.quantizer.modules() if isinstance(m, VectorQuantizerGroup)]
        for group in groups:
            def count_dead(*args, _group=group, **kwargs):
                self.counts["restart_checks"] += 1
                self.counts["codewords_found_dead"] += int((_group.usage_ema < _group.dead_code_threshold).sum())

            self.wrap(group, "search", "quantizer_search")
            for method in ("_update_statistics", "_remember_for_restarts", "_initialize", "_accumulate_for_init"):
                self.wrap(group, method, "ema_restarts_init")
            self.wrap(group, "_restart_dead_codes", "ema_restarts_init", before=count_dead)
            self.wrap(group, "entropy_loss", "entropy_loss")
        if not groups:  # a peer: its forward is search, EMA and restarts in one
            self.wrap(model.quantizer, "forward", "peer_quantizer")

    def state(self) -> dict:
        return {"seconds": dict(self.seconds), "counts": dict(self.counts)}

    def load(self, state: dict) -> None:
        self.seconds.update(state["seconds"])
        self.counts.update(state["counts"])


# --------------------------------------------------------------------------------------------------------------------
# Training one (variant, seed)
# --------------------------------------------------------------------------------------------------------------------


class Batches:
    """Batch `step` of a seed is a fixed function of (seed, step): epoch-wise permutations of the train rows and
    AudioCollator crops keyed by (seed, epoch, row), so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, train, seed: int, batch_size: int, crop_seconds: float, sampling_rate: int):
        from pqvae_hf.data import AudioCollator

        if len(train) < batch_size:
            raise ValueError(f"The train split has {len(train)} clips, fewer than --batch_size {batch_size}.")
        self.train, self.seed, self.batch_size = train, seed, batch_size
        self.per_epoch = len(train) // batch_size
        self.collator = AudioCollator(sampling_rate, crop_seconds=crop_seconds, seed=seed)
        self._order = {}

    def __call__(self, step: int) -> dict:
        epoch, position = divmod(step, self.per_epoch)
        if epoch not in self._order:
            self._order = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.train))}
        rows = self._order[epoch][position * self.batch_size:(position + 1) * self.batch_size]
        self.collator.epoch = epoch
        return self.collator([self.train[int(i)] for i in rows])


def build_model(overrides: dict, args, frames_per_batch: float):
    from peer_quantizers import build_backbone

    base = dict(hidden_size=args.hidden_size, intermediate_size=3 * args.hidden_size, vocoder="none")
    model, peer = build_backbone(base, overrides)
    if peer == "vq":
        # The matched dead-code rule in the library's units: its threshold is an EMA of assignments per batch,
        # so 0.2 of the expected uses per codeword per batch (frames per batch / N), as for our quantizers.
        codebook = model.quantizer.inner._codebook
        codebook.threshold_ema_dead_code = 0.2 * frames_per_batch / model.config.codebook_size
        codebook.reset_cluster_size = codebook.threshold_ema_dead_code
    return model, peer


def freeze_peer_restarts(model) -> None:
    """The peer `VectorQuantize` checks dead codes every step: stop that for the frozen last steps, as for ours."""
    codebook = model.quantizer.inner._codebook
    codebook.has_dead_code_replacement = False


def _optimizer(model, args, steps: int):
    from transformers import get_cosine_schedule_with_warmup

    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            # As transformers.Trainer: no weight decay on biases and norm scales; none on codebooks either.
            (decay if parameter.dim() >= 2 and "codebook" not in name else no_decay).append(parameter)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.learning_rate)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(200, steps // 10), steps)
    return optimizer, schedule


def _quantizer_training_state(model) -> dict:
    """What `state_dict` leaves out: non-persistent buffers (the replay ring) and frames held for k-means init."""
    from pqvae_hf.modeling.quantization_pqvae import VectorQuantizerGroup

    persistent = set(model.state_dict())
    state = {"buffers": {name: buf.clone() for name, buf in model.named_buffers() if name not in persistent},
             "init_frames": {}}
    for name, module in model.named_modules():
        if isinstance(module, VectorQuantizerGroup) and module._init_frames:
            state["init_frames"][name] = [f.clone() for f in module._init_frames]
    return state


def _load_quantizer_training_state(model, state: dict) -> None:
    buffers = dict(model.named_buffers())
    for name, value in state["buffers"].items():
        buffers[name].copy_(value)
    modules = dict(model.named_modules())
    for name, frames in state["init_frames"].items():
        modules[name]._init_frames = list(frames)


@torch.no_grad()
def _validate(model, audios) -> dict:
    from pqvae_hf.evaluation import evaluate_tokens

    model.eval()
    metrics = evaluate_tokens(model, audios, progress=False)
    model.train()
    return {"val_mel_l1": metrics["log_mel_l1"], "composite_perplexity": metrics["composite_perplexity"],
            "codebook_perplexity": metrics["codebook_perplexity"],
            "codebook_usage_fraction": metrics["codebook_usage_fraction"],
            "composite_usage": metrics["composite_usage"]}


def _frames_per_batch(batches: Batches, hop: int, count: int = 8) -> float:
    """Mean valid frames in the first `count` batches of this seed (the expected-uses unit of the peer's threshold)."""
    frames = [float((batches(step)["padding_mask"].sum(-1) // hop + 1).sum()) for step in range(count)]
    return float(np.mean(frames))


def train_pair(name: str, overrides: dict, seed: int, args, train, val_audio, run_dir: str) -> tuple:
    """Trains one (variant, seed); returns (model, record). Resumes from run_dir/checkpoint.pt when it matches."""
    torch.manual_seed(seed)
    batches = Batches(train, seed, args.batch_size, args.crop_seconds, 16000)
    frames_per_batch = _frames_per_batch(batches, 256)
    torch.manual_seed(seed)
    model, peer = build_model(overrides, args, frames_per_batch)
    model.train()
    optimizer, schedule = _optimizer(model, args, args.steps)
    timers = ComponentTimers()
    timers.instrument(model)
    curve, start_step, train_seconds, data_seconds, init_step = [], 0, 0.0, 0.0, None
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    identity = {"name": name, "seed": seed, "steps": args.steps, "overrides": overrides,
                "batch_size": args.batch_size, "crop_seconds": args.crop_seconds, "hidden_size": args.hidden_size}
    if os.path.exists(checkpoint_path):
        saved = torch.load(checkpoint_path, weights_only=False)
        if saved["identity"] == identity:
            model.load_state_dict(saved["model"])
            _load_quantizer_training_state(model, saved["quantizer_state"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            torch.set_rng_state(saved["torch_rng"])
            timers.load(saved["timers"])
            curve, start_step = saved["curve"], saved["step"]
            train_seconds, data_seconds, init_step = saved["train_seconds"], saved["data_seconds"], saved["init_step"]
            print(f"[converged] {name} seed {seed}: resumed at step {start_step}", file=sys.stderr, flush=True)
        else:
            print(f"[converged] {checkpoint_path} belongs to another setting; starting over", file=sys.stderr)
    if peer == "vq" and start_step >= args.steps - args.freeze_steps:
        freeze_peer_restarts(model)
    from pqvae_hf.modeling.quantization_pqvae import VectorQuantizerGroup

    groups = [m for m in model.quantizer.modules() if isinstance(m, VectorQuantizerGroup)]
    for step in range(start_step, args.steps):
        if peer == "vq" and step == args.steps - args.freeze_steps:
            freeze_peer_restarts(model)
        start = time.perf_counter()
        batch = batches(step)
        data_seconds += time.perf_counter() - start
        timers.active = True
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - start
        timers.active = False
        if init_step is None and (not groups or all(bool(g.initialized) for g in groups)):
            init_step = step + 1
        done = step + 1
        if done % args.val_every == 0 or done == args.steps:
            point = {"step": done, "train_seconds": round(train_seconds, 1), "train_loss": float(loss.detach()),
                     **_validate(model, val_audio)}
            curve.append(point)
            print(f"[converged] {name} seed {seed} step {done}: val mel L1 {point['val_mel_l1']:.4f}, composite"
                  f" perplexity {point['composite_perplexity']:.0f}, {train_seconds / done:.2f} s/step",
                  file=sys.stderr, flush=True)
            if done < args.steps:
                os.makedirs(run_dir, exist_ok=True)
                torch.save({"identity": identity, "step": done, "model": model.state_dict(),
                            "quantizer_state": _quantizer_training_state(model), "optimizer": optimizer.state_dict(),
                            "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
                            "timers": timers.state(), "curve": curve, "train_seconds": train_seconds,
                            "data_seconds": data_seconds, "init_step": init_step}, checkpoint_path + ".tmp")
                os.replace(checkpoint_path + ".tmp", checkpoint_path)
    seconds = timers.seconds
    quantizer_parts = sum(seconds[k] for k in ("quantizer_search", "ema_restarts_init", "entropy_loss",
                                               "peer_quantizer"))
    breakdown = {
        "quantizer_search_s": round(seconds["quantizer_search"], 3),
        "ema_restarts_init_s": round(seconds["ema_restarts_init"], 3),
        "entropy_loss_s": round(seconds["entropy_loss"], 3),
        "peer_quantizer_s": round(seconds["peer_quantizer"], 3),
        "backbone_and_optimizer_s": round(train_seconds - quantizer_parts, 3),
        "data_loading_s": round(data_seconds, 3),
        "ms_per_step": round(1000 * train_seconds / args.steps, 1),
    }
    record = {"train_seconds": round(train_seconds, 1), "time_breakdown": breakdown, "curve": curve,
              "quantizer_initialised_at_step": init_step, "frames_per_batch": round(frames_per_batch, 1),
              "restart_checks": timers.counts.get("restart_checks", 0),
              "codewords_found_dead": timers.counts.get("codewords_found_dead", 0)}
    return model.eval(), record


# --------------------------------------------------------------------------------------------------------------------
# The grid
# --------------------------------------------------------------------------------------------------------------------


def run_grid(args) -> None:
    from pqvae_hf.data import add_index_column, decode_audio, load_audio_dataset
    from pqvae_hf.evaluation import evaluate_tokens

    variant_dir = os.path.join(args.output_dir, "variants")
    os.makedirs(variant_dir, exist_ok=True)
    todo = [p for p in pairs(args) if not os.path.exists(os.path.join(variant_dir, pair_slug(p[0], p[3]) + ".json"))]
    if not todo:
        return
    train = add_index_column(load_audio_dataset(dataset_dir=args.corpus_dir, split_column="split", split="train"))
    val_audio = [decode_audio(cell, 16000) for cell in _spread_subset(args, "validation", args.val_clips)["audio"]]
    final_audio = None  # loaded on first use: the whole test and validation splits
    ran = 0
    for name, method, overrides, seed in todo:
        if args.max_pairs is not None and ran >= args.max_pairs:
            break
        slug = pair_slug(name, seed)
        result_path = os.path.join(variant_dir, slug + ".json")
        if os.path.exists(result_path) or not _claim(result_path):
            continue
        ran += 1
        print(f"[converged] {name} seed {seed}", file=sys.stderr, flush=True)
        run_dir = os.path.join(args.output_dir, "runs", slug)
        model, record = train_pair(name, overrides, seed, args, train, val_audio, run_dir)
        if final_audio is None:
            final_audio = {split: [decode_audio(cell, 16000) for cell in _spread_subset(args, split, limit)["audio"]]
                           for split, limit in (("test", args.max_eval_clips), ("validation", args.max_val_clips))}
        row = {"name": name, "method": method, "seed": seed, "overrides": overrides, "steps": args.steps,
               "batch_size": args.batch_size, "crop_seconds": args.crop_seconds, "hidden_size": args.hidden_size,
               "threads": torch.get_num_threads(), "composite_size": model.config.composite_codebook_size,
               "bits_per_second": model.config.bits_per_second, **record}
        start = time.perf_counter()
        for split, audios in final_audio.items():
            row[split] = evaluate_tokens(model, audios, progress=False)
        row["eval_seconds"] = round(time.perf_counter() - start, 1)
        if seed == TOKEN_LM_SEED and name in TOKEN_LM_VARIANTS:  # not min(--seeds): a `--seeds 1 2` process
            row["test_composite_counts"] = _composite_counts(model, final_audio["test"])
            model.save_pretrained(os.path.join(args.output_dir, "runs", _slug(name) + "__tokenizer"))
        with open(result_path + ".tmp", "w") as handle:
            json.dump(row, handle, indent=1)
        os.replace(result_path + ".tmp", result_path)
        os.remove(result_path + ".claim")
        checkpoint = os.path.join(run_dir, "checkpoint.pt")
        if os.path.exists(checkpoint):
            os.remove(checkpoint)


@torch.no_grad()
def _composite_counts(model, audios) -> dict:
    """Sparse test-split composite-id counts {"ids": [...], "counts": [...]} (the histogram of the plot)."""
    from pqvae_hf import CodebookStatistics

    stats = CodebookStatistics(model.config.num_codebooks, model.config.codebook_size)
    for audio in audios:
        stats.update(model.encode(torch.from_numpy(audio)[None, None]).audio_codes)
    return {"ids": stats.composite_ids.tolist(), "counts": stats.composite_counts.tolist()}


# --------------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    values = [float(v) for v in values]
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def _fmt(values: list[float], digits: int = 3, thousands: bool = False) -> str:
    mean, std = _mean_std(values)
    form = (lambda v: f"{v:,.0f}") if thousands else (lambda v: f"{v:.{digits}f}")
    return form(mean) if std is None else f"{form(mean)} ± {form(std)}"


def aggregate(rows: list[dict]) -> dict:
    """Mean and sample std over seeds of the headline numbers of one variant's rows."""
    def collect(get):
        return [get(r) for r in rows]

    m = len(rows[0]["test"]["codebook_perplexity"])
    summary = {"seeds": sorted(r["seed"] for r in rows)}
    for key, get in {
        "test_mel_l1": lambda r: r["test"]["log_mel_l1"],
        "val_mel_l1": lambda r: r["validation"]["log_mel_l1"],
        "test_composite_perplexity": lambda r: r["test"]["composite_perplexity"],
        "val_composite_perplexity": lambda r: r["validation"]["composite_perplexity"],
        "test_composite_usage": lambda r: r["test"]["composite_usage"],
        "train_seconds": lambda r: r["train_seconds"],
        "ms_per_step": lambda r: r["time_breakdown"]["ms_per_step"],
    }.items():
        mean, std = _mean_std(collect(get))
        summary[key] = {"mean": mean, "std": std, "values": collect(get)}
    for index in range(m):
        for key, field in (("test_usage_fraction", "codebook_usage_fraction"), ("test_perplexity", "codebook_perplexity")):
            mean, std = _mean_std([r["test"][field][index] for r in rows])
            summary.setdefault(key, []).append({"mean": mean, "std": std})
    return summary


def report_scope(args) -> argparse.Namespace:
    """The whole grid at the default seeds plus any asked for: a process run with `--variants` / `--seeds` (one of
    two sharing the grid) must not narrow the report to its own share and call the rest finished."""
    scope = argparse.Namespace(**vars(args))
    scope.variants = None
    scope.seeds = sorted(set(args.seeds) | set(default_seeds(args.quick)))
    return scope


def report(args) -> dict:
    args = report_scope(args)
    variant_dir = os.path.join(args.output_dir, "variants")
    rows, histograms, running, pending = [], {}, [], []
    for name, method, _, seed in pairs(args):
        path = os.path.join(variant_dir, pair_slug(name, seed) + ".json")
        if os.path.exists(path):
            with open(path) as handle:
                row = json.load(handle)
            counts = row.pop("test_composite_counts", None)
            if counts is not None and seed == TOKEN_LM_SEED:
                histograms[name] = counts
            rows.append(row)
        else:
            claim = path + ".claim"
            alive = False
            if os.path.exists(claim):
                try:
                    with open(claim) as handle:
                        os.kill(int(handle.read().strip() or 0), 0)
                    alive = True
                except (ProcessLookupError, ValueError, FileNotFoundError, PermissionError):
                    alive = False
            (running if alive else pending).append(f"{name} (seed {seed})")
    by_variant: dict[str, list[dict]] = {}
    for row in rows:
        by_variant.setdefault(row["name"], []).append(row)
    token_lm = []
    lm_dir = os.path.join(args.output_dir, "token_lm")
    if os.path.isdir(lm_dir):
        for file in sorted(os.listdir(lm_dir)):
            if file.endswith(".json"):
                with open(os.path.join(lm_dir, file)) as handle:
                    token_lm.append(json.load(handle))
    summary = {
        "command": "benchmarks/index_collapse_converged.py" + (" --quick" if args.quick else ""),
        "steps": args.steps, "batch_size": args.batch_size, "crop_seconds": args.crop_seconds,
        "hidden_size": args.hidden_size, "seeds": list(args.seeds), "val_every": args.val_every,
        "val_clips": args.val_clips, "max_eval_clips": args.max_eval_clips, "max_val_clips": args.max_val_clips,
        "init_frames": args.init_frames, "replay_frames": args.replay_frames, "freeze_steps": args.freeze_steps,
        "restart_interval": args.restart_interval,
        "min_usage_window": args.min_usage_window,
        "total_train_seconds": round(sum(r["train_seconds"] for r in rows), 1),
        "variants": {name: {"method": group[0]["method"], **aggregate(group)} for name, group in by_variant.items()},
        "results": rows, "running": running, "pending": pending, "token_lm": token_lm,
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    with open(os.path.join(args.output_dir, "results.md"), "w") as handle:
        handle.write(to_markdown(summary, by_variant))
    if rows:
        plot(summary, by_variant, histograms, args.output_dir)
    return summary


def to_markdown(summary: dict, by_variant: dict) -> str:
    eval_note = (f"{summary['max_eval_clips']} evenly spaced test clips" if summary["max_eval_clips"]
                 else "the whole test split")
    lines = [f"# Index collapse to convergence ({summary['command']})", "",
             f"{summary['steps']} steps per run, batch {summary['batch_size']} x {summary['crop_seconds']} s, hidden"
             f" {summary['hidden_size']}, seeds {', '.join(map(str, summary['seeds']))} (fewer where stated);"
             f" metrics on {eval_note} (unseen languages and speakers) and"
             f" {'the whole validation split' if not summary['max_val_clips'] else str(summary['max_val_clips']) + ' validation clips'}."
             f" Fair remedies for our VQ / PQ / RVQ: k-means on >= {summary['init_frames']:,} frames, restarts from a"
             f" {summary['replay_frames']:,}-frame replay buffer at 0.2 of the expected uses per codeword, usage"
             f" window max(4 N, {summary['min_usage_window']:,}) frames, no restarts in the last"
             f" {summary['freeze_steps']} steps, no entropy loss. Values are mean ± sample std over the seeds run"
             f" (one value: one seed). Training time: {summary['total_train_seconds'] / 3600:.1f} h of one CPU thread"
             " in total.", "",
             "| variant | seeds | bit/s | used per codebook (%) | perplexity per codebook | composite perplexity |"
             " test mel L1 | val mel L1 | train min / run | ms / step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, group in by_variant.items():
        agg = summary["variants"][name]
        usage = " / ".join(_fmt([100 * r["test"]["codebook_usage_fraction"][i] for r in group], 1)
                           for i in range(len(group[0]["test"]["codebook_usage_fraction"])))
        perplexity = " / ".join(_fmt([r["test"]["codebook_perplexity"][i] for r in group], thousands=True)
                                for i in range(len(group[0]["test"]["codebook_perplexity"])))
        lines.append(
            f"| {name} | {', '.join(map(str, agg['seeds']))} | {group[0]['bits_per_second']:.0f} | {usage} |"
            f" {perplexity if len(group[0]['test']['codebook_perplexity']) > 1 else '-'} |"
            f" {_fmt([r['test']['composite_perplexity'] for r in group], thousands=True)} |"
            f" {_fmt([r['test']['log_mel_l1'] for r in group])} | {_fmt([r['validation']['log_mel_l1'] for r in group])}"
            f" | {_fmt([r['train_seconds'] / 60 for r in group], 1)} |"
            f" {_fmt([r['time_breakdown']['ms_per_step'] for r in group], 0)} |")
    lines += targets(by_variant)
    lines += ["", "## Time per training step, by component (ms, mean over seeds)", "",
              "| variant | quantizer search | EMA + restarts + k-means init | entropy loss | peer quantizer (all) |"
              " backbone fwd/bwd + optimizer | data loading | restart checks / codewords found dead |",
              "|---|---|---|---|---|---|---|---|"]
    for name, group in by_variant.items():
        def ms(key):
            return f"{np.mean([1000 * r['time_breakdown'][key] / r['steps'] for r in group]):.0f}"

        lines.append(f"| {name} | {ms('quantizer_search_s')} | {ms('ema_restarts_init_s')} | {ms('entropy_loss_s')} |"
                     f" {ms('peer_quantizer_s')} | {ms('backbone_and_optimizer_s')} | {ms('data_loading_s')} |"
                     f" {np.mean([r['restart_checks'] for r in group]):.0f} /"
                     f" {np.mean([r['codewords_found_dead'] for r in group]):,.0f} |")
    lines += ["", f"## Validation learning curve ({summary['val_clips']} evenly spaced validation clips)", "",
              "val mel L1 (composite perplexity) at each validation step, mean over seeds.", ""]
    steps = sorted({p["step"] for group in by_variant.values() for r in group for p in r["curve"]})
    lines += ["| variant | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name, group in by_variant.items():
        cells = []
        for step in steps:
            points = [p for r in group for p in r["curve"] if p["step"] == step]
            cells.append(f"{np.mean([p['val_mel_l1'] for p in points]):.3f}"
                         f" ({np.mean([p['composite_perplexity'] for p in points]):,.0f})" if points else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if summary.get("token_lm"):
        lines += ["", "## Token LM (tiny GPT-2 on train-split composite ids, scored on the test split)", "",
                  "| tokenizer | head | sized as | vocabulary | LM width x layers | LM parameters | test bits / frame |"
                  " test bits / s | LM train s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        sized_as = {"factorised-same-width": "the joint LM's width", "factorised-same-parameters":
                    "the joint LM's parameter count", "joint": "-"}
        for row in summary["token_lm"]:
            kind = row.get("head_kind", "joint")
            lines.append(f"| {row['name']} | {row.get('head', 'joint')} | {sized_as.get(kind, kind)} |"
                         f" {row['vocab_size']:,} | {row.get('lm_hidden', '-')} x {row.get('lm_layers', '-')} |"
                         f" {row['lm_parameters'] / 1e6:.2f} M | {row['test_bits_per_frame']:.2f} |"
                         f" {row['test_bits_per_second']:.0f} | {row['lm_train_seconds']:.0f} |")
    lines += ["", "## Not finished yet", ""]
    if summary["running"]:
        lines.append("Running now: " + "; ".join(summary["running"]) + ".")
    if summary["pending"]:
        lines.append("Not run yet: " + "; ".join(summary["pending"]) + ".")
    if not summary["running"] and not summary["pending"]:
        lines.append("Nothing: every (variant, seed) of the grid has finished.")
    return "\n".join(lines) + "\n"


def targets(by_variant: dict) -> list[str]:
    """The earlier issues' targets for PQ-2x256+DD, checked on the seed means (only against rows that ran)."""
    main = by_variant.get("PQ-2x256+DD")
    if not main:
        return []
    lines = ["", "## Targets (PQ-2x256+DD, mean over its seeds)", "", "| target | measured | met |", "|---|---|---|"]

    def add(target: str, measured: str, met: bool | str) -> None:
        shown = met if isinstance(met, str) else ("yes" if met else "**no**")
        lines.append(f"| {target} | {measured} | {shown} |")

    n = main[0]["composite_size"] ** 0.5
    usage = [np.mean([r["test"]["codebook_usage_fraction"][i] for r in main]) for i in range(2)]
    add(">= 99 % of every sub-codebook used (test)", " / ".join(f"{100 * u:.1f} %" for u in usage), min(usage) >= 0.99)
    ratios = [np.mean([r["test"]["codebook_perplexity"][i] for r in main]) / n for i in range(2)]
    val_ratios = [np.mean([r["validation"]["codebook_perplexity"][i] for r in main]) / n for i in range(2)]
    add("sub-perplexity >= 0.8 N (test)", " / ".join(f"{r:.2f} N" for r in ratios) + " (validation: " +
        " / ".join(f"{r:.2f} N" for r in val_ratios) + ")", min(ratios) >= 0.8)
    ours = [r["test"]["log_mel_l1"] for r in main]
    for other, rows in by_variant.items():
        if other == "PQ-2x256+DD" or rows[0]["method"] == "plain recipe":
            continue
        theirs = [r["test"]["log_mel_l1"] for r in rows]
        gap = np.mean(ours) - np.mean(theirs)
        spread = max(_mean_std(ours)[1] or 0.0, _mean_std(theirs)[1] or 0.0)
        verdict = "within the seed spread" if spread and abs(gap) <= 2 * spread else (
            "one seed: no spread" if not spread else "beyond 2 x the seed spread")
        # A lower mean inside the seed spread is a tie, not a win.
        met = bool(gap <= 0) if verdict != "within the seed spread" else "tie (not shown either way)"
        add(f"test mel L1 <= {other}", f"{_fmt(ours)} vs {_fmt(theirs)} (gap {gap:+.3f}, {verdict})", met)
    return lines


STYLE_MARKERS = "osD^vP*Xh<>p"
STYLE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                 "#17becf", "#000000"]


def _styles(names: list[str]) -> dict:
    return {name: dict(color=STYLE_COLOURS[i % len(STYLE_COLOURS)], marker=STYLE_MARKERS[i % len(STYLE_MARKERS)])
            for i, name in enumerate(names)}


def plot(summary: dict, by_variant: dict, histograms: dict, output_dir: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(by_variant)
    styles = _styles(names)
    plain = [n for n in names if by_variant[n][0]["method"] == "plain recipe"]
    main = [n for n in names if n not in plain]

    # 1. Headline: test mel L1 against test composite perplexity, error bars over seeds; plain recipe on its own.
    panels = 2 if plain else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 5), constrained_layout=True, squeeze=False)
    for axis, group in zip(axes[0], (main, plain)):
        for name in group:
            agg = summary["variants"][name]
            axis.errorbar(agg["test_composite_perplexity"]["mean"], agg["test_mel_l1"]["mean"],
                          xerr=agg["test_composite_perplexity"]["std"] or 0, yerr=agg["test_mel_l1"]["std"] or 0,
                          linestyle="none", markersize=9, capsize=4, label=f"{name} (n={len(agg['seeds'])})",
                          **styles[name])
        axis.set_xscale("log")
        axis.set_xlabel("composite perplexity (test split, log scale)")
        axis.set_ylabel("log-mel L1 of decoded tokens (test split)")
        axis.grid(alpha=0.3)
    axes[0][0].set_title("fair remedies (mean ± std over seeds)")
    if plain:
        axes[0][1].set_title("plain VQ-VAE recipe (collapsed; own axes)")
    handles, labels = [], []
    for axis in axes[0]:
        h, l = axis.get_legend_handles_labels()
        handles += h
        labels += l
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    fig.savefig(os.path.join(output_dir, "perplexity_vs_l1.png"), dpi=110)
    plt.close(fig)

    # 2. Learning curves: val mel L1 and composite perplexity against step, mean ± std over seeds.
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    for name in names:
        steps = sorted({p["step"] for r in by_variant[name] for p in r["curve"]})
        for axis, key in zip(axes, ("val_mel_l1", "composite_perplexity")):
            means, stds = [], []
            for step in steps:
                values = [p[key] for r in by_variant[name] for p in r["curve"] if p["step"] == step]
                means.append(np.mean(values))
                stds.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
            axis.errorbar(steps, means, yerr=stds, capsize=3, markersize=6,
                          linestyle="--" if name in plain else "-", label=name, **styles[name])
    axes[0].set_ylabel(f"val log-mel L1 ({summary['val_clips']} validation clips)")
    axes[1].set_ylabel("val composite perplexity (log scale)")
    axes[1].set_yscale("log")
    for axis in axes:
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
    if plain and main:  # keep the collapsed runs from squashing the L1 axis
        values = [p["val_mel_l1"] for n in main for r in by_variant[n] for p in r["curve"]]
        axes[0].set_ylim(min(values) - 0.02, max(values) + 0.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle("Validation learning curves, mean ± std over seeds" +
                 (" (plain recipe dashed; L1 axis clipped to the remedied runs)" if plain and main else ""))
    fig.savefig(os.path.join(output_dir, "learning_curves.png"), dpi=110)
    plt.close(fig)

    # 3. Time per step by component.
    components = [("quantizer_search_s", "quantizer search"), ("ema_restarts_init_s", "EMA + restarts + init"),
                  ("entropy_loss_s", "entropy loss"), ("peer_quantizer_s", "peer quantizer (all)"),
                  ("backbone_and_optimizer_s", "backbone fwd/bwd + optimizer"), ("data_loading_s", "data loading")]
    fig, axis = plt.subplots(figsize=(max(7, 1.3 * len(names)), 4.8), constrained_layout=True)
    bottom = np.zeros(len(names))
    hatches = ["", "//", "xx", "..", "", "\\\\"]
    for (key, label), hatch, colour in zip(components, hatches, STYLE_COLOURS):
        values = np.array([np.mean([1000 * r["time_breakdown"][key] / r["steps"] for r in by_variant[n]])
                           for n in names])
        axis.bar(range(len(names)), values, bottom=bottom, label=label, hatch=hatch, color=colour, alpha=0.8)
        bottom += values
    axis.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    axis.set_ylabel("ms per training step (one CPU thread)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    fig.savefig(os.path.join(output_dir, "time_breakdown.png"), dpi=110)
    plt.close(fig)

    if histograms:
        fig, axes = plt.subplots(1, len(histograms), figsize=(5 * len(histograms), 3.5), constrained_layout=True,
                                 squeeze=False)
        for axis, (name, counts) in zip(axes[0], histograms.items()):
            counts = np.sort(np.asarray(counts["counts"]))[::-1]
            axis.plot(np.arange(1, len(counts) + 1), counts, **{**styles.get(name, {}), "markersize": 0})
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_title(f"{name}: {len(counts):,} composite codes used")
            axis.set_xlabel("code rank")
            axis.set_ylabel("test-split count")
        fig.savefig(os.path.join(output_dir, "usage_histogram.png"), dpi=110)
        plt.close(fig)


# --------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny model, few steps, small eval subsets, scaled-down remedies")
    parser.add_argument("--stage", choices=("grid", "token_lm", "report"), default="grid",
                        help="grid: train/evaluate pairs, then report; token_lm: the token-LM check; report: only"
                             " rebuild results.json / results.md / plots from the JSONs there")
    parser.add_argument("--report_only", action="store_true", help="same as --stage report")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 2000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    parser.add_argument("--variants", nargs="*", default=None, help="only these variant names")
    parser.add_argument("--max_pairs", type=int, default=None, help="run at most this many (variant, seed) pairs")
    parser.add_argument("--batch_size", type=int, default=None, help="default 16 (quick: 4)")
    parser.add_argument("--crop_seconds", type=float, default=None, help="default 2.0 (quick: 1.0)")
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--val_every", type=int, default=None, help="validation + checkpoint interval (default 250)")
    parser.add_argument("--val_clips", type=int, default=None, help="validation clips of the curve (default 64)")
    parser.add_argument("--max_eval_clips", type=int, default=None, help="final test clips (default: all)")
    parser.add_argument("--max_val_clips", type=int, default=None, help="final validation clips (default: all)")
    parser.add_argument("--init_frames", type=int, default=None, help="k-means init frames (default 65536)")
    parser.add_argument("--replay_frames", type=int, default=None, help="restart replay buffer (default 65536)")
    parser.add_argument("--min_usage_window", type=int, default=None, help="usage window floor (default 131072)")
    parser.add_argument("--freeze_steps", type=int, default=None, help="no restarts in these last steps (default 200)")
    parser.add_argument("--restart_interval", type=int, default=None, help="steps between restarts (default 50)")
    parser.add_argument("--lm_steps", type=int, default=None, help="token-LM steps (default 300)")
    parser.add_argument("--max_lm_train_clips", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (use 1 per process)")
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.report_only:
        args.stage = "report"
    quick = args.quick
    defaults = dict(batch_size=4 if quick else 16, crop_seconds=1.0 if quick else 2.0,
                    restart_interval=4 if quick else 50, steps=16 if quick else 2000, seeds=default_seeds(quick), val_every=8 if quick else 250,
                    val_clips=6 if quick else 64, init_frames=256 if quick else 65536,
                    replay_frames=1024 if quick else 65536, min_usage_window=512 if quick else 131072,
                    freeze_steps=4 if quick else 200, lm_steps=10 if quick else 300,
                    max_eval_clips=8 if quick else None, max_val_clips=8 if quick else None,
                    max_lm_train_clips=40 if quick else None)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if quick:
        args.hidden_size = min(args.hidden_size, 64)
    for key in ("steps", "val_every", "val_clips", "init_frames", "replay_frames", "batch_size", "restart_interval"):
        if getattr(args, key) <= 0:
            parser.error(f"--{key} must be > 0, got {getattr(args, key)}")
    if not 0 <= args.freeze_steps < args.steps:
        parser.error(f"--freeze_steps must be in [0, --steps), got {args.freeze_steps} with --steps {args.steps}")
    known = [v[0] for v in variants(args)]
    if args.variants is not None and not set(args.variants) <= set(known):
        parser.error(f"unknown variant names {sorted(set(args.variants) - set(known))}; known: {known}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.time()
    if args.stage == "grid":
        run_grid(args)
    elif args.stage == "token_lm":
        from token_lm import run_token_lm_stage

        run_token_lm_stage(args, TOKEN_LM_VARIANTS)
    summary = report(args)
    print(f"[converged] {len(summary['results'])} runs reported, {len(summary['running'])} running,"
          f" {len(summary['pending'])} pending; this call took {time.time() - start:.0f} s", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
