"""Token-LM check: what a large composite vocabulary costs and buys a language model over speech tokens.

The same tiny causal LM (transformers `GPT2LMHeadModel`, CPU-sized) is trained on the train-split composite-id
sequences of each tokenizer and scored on the test split: cross-entropy per frame (nats and bits) and per second of
audio (bits/s, comparable across tokenizers with different vocabularies because the frame rate is the same). Also
reported: a smoothed unigram model (context-free baseline) and the share of test tokens never seen in training.

Called by `index_collapse.py` for VQ-2^10, VQ-2^16 and PQ-2x256+DD; runnable alone on saved tokenizers:

    .venv/bin/python benchmarks/token_lm.py --corpus_dir data/speech_corpus \
        --tokenizers benchmarks/results/index_collapse/runs/VQ-2^10 ...
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
sys.path.insert(0, HERE)

from pqvae_hf.modeling.quantization_pqvae import composite_to_codes  # noqa: E402


@torch.no_grad()
def composite_sequences(tokenizer, audios: list[np.ndarray]) -> list[np.ndarray]:
    """One int64 array of composite ids per clip (every frame of the clip, none dropped)."""
    sequences = []
    for audio in audios:
        codes = tokenizer.encode(torch.from_numpy(audio)[None, None]).audio_codes
        sequences.append(tokenizer.codes_to_composite(codes)[0].numpy())
    return sequences


def _windows(sequences: list[np.ndarray], context: int, bos: int) -> list[np.ndarray]:
    """Every clip cut into consecutive windows of <= `context` tokens, each prefixed with BOS."""
    windows = []
    for sequence in sequences:
        for start in range(0, len(sequence), context):
            windows.append(np.concatenate([[bos], sequence[start:start + context]]).astype(np.int64))
    return windows


def _batch(windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(w) for w in windows)
    input_ids = torch.zeros(len(windows), length, dtype=torch.long)
    attention_mask = torch.zeros(len(windows), length, dtype=torch.long)
    for row, window in enumerate(windows):
        input_ids[row, : len(window)] = torch.from_numpy(window)
        attention_mask[row, : len(window)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, 0] = -100  # BOS is given, never predicted
    return input_ids, attention_mask, labels


def _fit(lm, train_windows, train_loss, *, steps: int, batch_size: int, learning_rate: float, rng,
         label: str) -> float:
    """The one training loop of both LM heads: AdamW, one-cycle cosine schedule, clipping, `steps` random batches of
    windows; `train_loss(windows)` is the head's mean cross-entropy. Returns the wall seconds it took."""
    optimizer = torch.optim.AdamW(lm.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps,
                                                   pct_start=0.05, anneal_strategy="cos")
    start = time.time()
    lm.train()
    for step in range(steps):
        picks = rng.integers(len(train_windows), size=batch_size)
        loss = train_loss([train_windows[i] for i in picks])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"[token-lm] {label} step {step + 1}/{steps} train CE {float(loss.detach()):.3f} nats",
                  file=sys.stderr, flush=True)
    return time.time() - start


@torch.no_grad()
def _test_nats(lm, test_windows, summed_nats) -> float:
    """Mean cross-entropy over the test windows, 64 at a time: `summed_nats(windows)` -> (summed nats, count)."""
    lm.eval()
    total_nats, total_count = 0.0, 0
    for first in range(0, len(test_windows), 64):
        nats, count = summed_nats(test_windows[first:first + 64])
        total_nats += float(nats)
        total_count += count
    return total_nats / total_count


def train_and_score(train_sequences, test_sequences, vocab_size: int, *, steps: int = 300, batch_size: int = 8,
                    context: int = 128, hidden: int = 128, layers: int = 3, heads: int = 4,
                    learning_rate: float = 2e-3, seed: int = 0, frame_rate: float = 62.5) -> dict:
    """Train the tiny GPT-2 on train windows; return test cross-entropy and baselines (nats/bits per frame, bit/s)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bos = vocab_size
    config = GPT2Config(vocab_size=vocab_size + 1, n_positions=context + 1, n_embd=hidden, n_layer=layers,
                        n_head=heads, bos_token_id=bos, eos_token_id=bos, tie_word_embeddings=True)
    lm = GPT2LMHeadModel(config)

    def train_loss(windows):
        input_ids, attention_mask, labels = _batch(windows)
        return lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    def summed_nats(windows):
        input_ids, attention_mask, labels = _batch(windows)
        logits = lm(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        targets = labels[:, 1:]
        nats = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        return nats, int((targets != -100).sum())

    train_seconds = _fit(lm, _windows(train_sequences, context, bos), train_loss, steps=steps, batch_size=batch_size,
                         learning_rate=learning_rate, rng=rng, label=f"vocab {vocab_size:,}")
    lm_nats = _test_nats(lm, _windows(test_sequences, context, bos), summed_nats)

    # Context-free baseline: add-one smoothed unigram of the train tokens over the full vocabulary.
    train_tokens = np.concatenate(train_sequences)
    test_tokens = np.concatenate(test_sequences)
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    unigram_nats = float(-np.log(counts[test_tokens] / counts.sum()).mean())
    seen = np.bincount(train_tokens, minlength=vocab_size) > 0
    return {
        "vocab_size": vocab_size,
        "lm_hidden": hidden, "lm_layers": layers,
        "train_tokens": int(train_tokens.size),
        "test_tokens": int(test_tokens.size),
        "distinct_train_tokens": int(seen.sum()),
        "test_tokens_unseen_in_train": float((~seen[test_tokens]).mean()),
        "lm_parameters": int(sum(p.numel() for p in lm.parameters())),
        "lm_steps": steps,
        "lm_train_seconds": round(train_seconds, 1),
        "test_nats_per_frame": lm_nats,
        "test_bits_per_frame": lm_nats / math.log(2),
        "test_bits_per_second": lm_nats / math.log(2) * frame_rate,
        "unigram_bits_per_frame": unigram_nats / math.log(2),
        "max_bits_per_frame": math.log2(vocab_size),
    }


class FactorisedTokenLM(torch.nn.Module):
    """A causal LM over PQ tokens built as one would build it for them: a frame's input embedding is the sum of its M
    sub-code embeddings, and the output is M softmaxes of N words each (one per sub-codebook, tied to the input
    embeddings), so p(frame | context) = prod_m p(code_m | context). Vocabulary parameters grow with M x N (512 for
    2 x 256), not with N^M (65,536)."""

    def __init__(self, num_codebooks: int, codebook_size: int, *, context: int, hidden: int, layers: int, heads: int):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.num_codebooks, self.codebook_size = num_codebooks, codebook_size
        self.bos = num_codebooks * codebook_size  # the BOS frame uses this row in slot 0 and the zero row elsewhere
        self.blank = self.bos + 1
        self.embedding = torch.nn.Embedding(self.blank + 1, hidden, padding_idx=self.blank)
        torch.nn.init.normal_(self.embedding.weight[: self.blank], std=0.02)
        # vocab_size=1: GPT2Model's own token table is unused (we pass inputs_embeds); positions and blocks are GPT-2's.
        self.body = GPT2Model(GPT2Config(vocab_size=1, n_positions=context + 1, n_embd=hidden, n_layer=layers,
                                         n_head=heads, bos_token_id=None, eos_token_id=None))
        self.register_buffer("offsets", torch.arange(num_codebooks) * codebook_size, persistent=False)

    def rows(self, codes: torch.Tensor, is_bos: torch.Tensor) -> torch.Tensor:
        """codes (B, L, M) sub-codes, is_bos (B, L) -> embedding rows (B, L, M)."""
        rows = codes + self.offsets
        bos_rows = torch.full_like(rows, self.blank)
        bos_rows[..., 0] = self.bos
        return torch.where(is_bos[..., None], bos_rows, rows)

    def forward(self, codes, is_bos, attention_mask) -> torch.Tensor:
        """-> logits (B, L, M, N): the distribution of each sub-code of the *next* frame."""
        hidden = self.body(inputs_embeds=self.embedding(self.rows(codes, is_bos)).sum(-2),
                           attention_mask=attention_mask).last_hidden_state
        table = self.embedding.weight[: self.bos].view(self.num_codebooks, self.codebook_size, -1)
        return torch.einsum("blh,mnh->blmn", hidden, table)


def factorised_parameters(num_codebooks: int, codebook_size: int, *, context: int, hidden: int, layers: int,
                          heads: int) -> int:
    model = FactorisedTokenLM(num_codebooks, codebook_size, context=context, hidden=hidden, layers=layers, heads=heads)
    return sum(p.numel() for p in model.parameters())


def width_for_parameters(target: int, num_codebooks: int, codebook_size: int, *, context: int, layers: int,
                         heads: int) -> int:
    """The hidden width (a multiple of 4 x heads) whose factorised LM has the parameter count closest to `target`.
    Parameters grow as 12 x layers x width^2, so the closed form gives the start and a few neighbours are counted."""
    step = 4 * heads
    guess = max(step, int(round(math.sqrt(target / (12 * layers)) / step)) * step)
    candidates = [w for w in range(guess - 2 * step, guess + 3 * step, step) if w >= step]
    return min(candidates, key=lambda w: abs(factorised_parameters(num_codebooks, codebook_size, context=context,
                                                                   hidden=w, layers=layers, heads=heads) - target))


def _code_windows(sequences: list[np.ndarray], context: int) -> list[np.ndarray]:
    """Sub-code sequences (M, T) cut into windows (<= context + 1, M) whose row 0 is the BOS frame (all -1)."""
    windows = []
    for sequence in sequences:
        for start in range(0, sequence.shape[1], context):
            chunk = sequence[:, start:start + context].T
            windows.append(np.concatenate([np.full((1, chunk.shape[1]), -1), chunk]).astype(np.int64))
    return windows


def _code_batch(windows: list[np.ndarray]):
    length, m = max(len(w) for w in windows), windows[0].shape[1]
    codes = torch.zeros(len(windows), length, m, dtype=torch.long)
    mask = torch.zeros(len(windows), length, dtype=torch.long)
    for row, window in enumerate(windows):
        codes[row, : len(window)] = torch.from_numpy(window)
        mask[row, : len(window)] = 1
    is_bos = codes[..., 0] < 0
    return codes.clamp_min(0), is_bos, mask


def _factorised_nats(model, codes, is_bos, mask) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy (nats) of every predicted frame (all M sub-codes) and the number of frames."""
    logits = model(codes, is_bos, mask)[:, :-1]  # predicts frames 1..L-1
    targets = codes[:, 1:]
    valid = mask[:, 1:].bool()
    nats = torch.nn.functional.cross_entropy(logits[valid].reshape(-1, logits.shape[-1]), targets[valid].reshape(-1),
                                             reduction="sum")
    return nats, int(valid.sum())


def train_and_score_factorised(train_codes, test_codes, num_codebooks: int, codebook_size: int, *, steps: int = 300,
                               batch_size: int = 8, context: int = 128, hidden: int = 128, layers: int = 3,
                               heads: int = 4, learning_rate: float = 2e-3, seed: int = 0,
                               frame_rate: float = 62.5) -> dict:
    """The factorised LM on sub-code sequences (M, T): the same windows, optimiser and schedule as `train_and_score`;
    cross-entropy per frame = the sum over the M sub-codes, so bits per frame compare with the joint head's."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lm = FactorisedTokenLM(num_codebooks, codebook_size, context=context, hidden=hidden, layers=layers, heads=heads)

    def train_loss(windows):
        nats, frames = _factorised_nats(lm, *_code_batch(windows))
        return nats / max(frames, 1)

    train_seconds = _fit(lm, _code_windows(train_codes, context), train_loss, steps=steps, batch_size=batch_size,
                         learning_rate=learning_rate, rng=rng,
                         label=f"factorised {num_codebooks} x {codebook_size} width {hidden} (per frame)")
    lm_nats = _test_nats(lm, _code_windows(test_codes, context),
                         lambda windows: _factorised_nats(lm, *_code_batch(windows)))
    return {
        "head": f"factorised ({num_codebooks} x {codebook_size} softmax)", "vocab_size": codebook_size ** num_codebooks,
        "lm_hidden": hidden, "lm_layers": layers, "train_frames": int(sum(c.shape[1] for c in train_codes)),
        "test_tokens": int(sum(c.shape[1] for c in test_codes)),
        "lm_parameters": int(sum(p.numel() for p in lm.parameters())), "lm_steps": steps,
        "lm_train_seconds": round(train_seconds, 1), "test_nats_per_frame": lm_nats,
        "test_bits_per_frame": lm_nats / math.log(2), "test_bits_per_second": lm_nats / math.log(2) * frame_rate,
        "max_bits_per_frame": num_codebooks * math.log2(codebook_size),
    }


def joint_parameters(vocab_size: int, *, context: int = 128, hidden: int = 128, layers: int = 3, heads: int = 4) -> int:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size + 1, n_positions=context + 1, n_embd=hidden, n_layer=layers,
                        n_head=heads, tie_word_embeddings=True)
    with torch.device("meta"):
        return sum(p.numel() for p in GPT2LMHeadModel(config).parameters())


def run_token_lm_stage(args, names) -> None:
    """The token-LM check for index_collapse_converged.py: for each saved tokenizer in OUTPUT_DIR/runs, the joint
    65,536-word head and, for PQ tokens, the factorised head at the joint LM's width and at its parameter count.
    One JSON per (tokenizer, head) in OUTPUT_DIR/token_lm, claimed like the grid's pairs."""
    from index_collapse import _claim, _slug, _spread_subset

    from pqvae_hf import PQVAEModel
    from pqvae_hf.data import decode_audio

    lm_dir = os.path.join(args.output_dir, "token_lm")
    os.makedirs(lm_dir, exist_ok=True)
    audio = None
    for name in names:
        folder = os.path.join(args.output_dir, "runs", _slug(name) + "__tokenizer")
        if not os.path.isdir(folder):
            print(f"[token-lm] {name}: no saved tokenizer in {folder} (its seed-0 run has not finished)",
                  file=sys.stderr)
            continue
        tokenizer = PQVAEModel.from_pretrained(folder).eval()
        config = tokenizer.config
        heads = ["joint"] + (["factorised-same-width", "factorised-same-parameters"]
                             if config.quantizer_type == "pq" and config.num_codebooks > 1 else [])
        todo = [h for h in heads if not os.path.exists(os.path.join(lm_dir, f"{_slug(name)}__{h}.json"))]
        if not todo:
            continue
        if audio is None:
            audio = {split: [decode_audio(cell, 16000) for cell in _spread_subset(args, split, limit)["audio"]]
                     for split, limit in (("train", args.max_lm_train_clips), ("test", args.max_eval_clips))}
        sequences = {split: composite_sequences(tokenizer, clips) for split, clips in audio.items()}
        codes = {split: [composite_to_codes(torch.from_numpy(s), config.codebook_size,
                                            config.num_codebooks).numpy() for s in seqs]
                 for split, seqs in sequences.items()}
        joint = joint_parameters(config.composite_codebook_size)
        for head in todo:
            path = os.path.join(lm_dir, f"{_slug(name)}__{head}.json")
            if os.path.exists(path) or not _claim(path):
                continue
            print(f"[token-lm] {name}: {head} head", file=sys.stderr, flush=True)
            options = dict(steps=args.lm_steps, seed=0, frame_rate=config.frame_rate)
            if head == "joint":
                result = train_and_score(sequences["train"], sequences["test"], config.composite_codebook_size,
                                         **options)
                result["head"] = "joint (65,536-word softmax)" if config.composite_codebook_size == 65536 else "joint"
            else:
                width = 128 if head == "factorised-same-width" else width_for_parameters(
                    joint, config.num_codebooks, config.codebook_size, context=128, layers=3, heads=4)
                result = train_and_score_factorised(codes["train"], codes["test"], config.num_codebooks,
                                                    config.codebook_size, hidden=width, **options)
            result["joint_head_parameters"] = joint
            with open(path, "w") as handle:
                json.dump({"name": name, "head_kind": head, **result}, handle, indent=1)
            os.remove(path + ".claim")


def score_tokenizer(folder: str, audio: dict[str, list[np.ndarray]], **lm_options) -> dict:
    """Tokenize audio["train"] / audio["test"] with the saved tokenizer in `folder`; train and score the LM on them."""
    from pqvae_hf import PQVAEModel

    tokenizer = PQVAEModel.from_pretrained(folder).eval()
    return train_and_score(composite_sequences(tokenizer, audio["train"]), composite_sequences(tokenizer, audio["test"]),
                           tokenizer.config.composite_codebook_size, frame_rate=tokenizer.config.frame_rate,
                           **lm_options)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--tokenizers", nargs="+", required=True, help="saved tokenizer folders")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max_train_clips", type=int, default=None)
    parser.add_argument("--max_test_clips", type=int, default=None)
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    from pqvae_hf.data import decode_audio, load_audio_dataset

    source = dict(dataset_dir=args.corpus_dir, split_column="split")
    audio = {split: [decode_audio(cell, 16000) for cell in load_audio_dataset(
        split=split, max_samples=limit, **source)["audio"]]
        for split, limit in (("train", args.max_train_clips), ("test", args.max_test_clips))}
    results = {os.path.basename(path.rstrip("/")): score_tokenizer(path, audio, steps=args.steps)
               for path in args.tokenizers}
    print(json.dumps(results, indent=2))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
