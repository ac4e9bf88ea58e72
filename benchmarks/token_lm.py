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
    train_windows = _windows(train_sequences, context, bos)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps,
                                                   pct_start=0.05, anneal_strategy="cos")
    start = time.time()
    lm.train()
    for step in range(steps):
        picks = rng.integers(len(train_windows), size=batch_size)
        input_ids, attention_mask, labels = _batch([train_windows[i] for i in picks])
        loss = lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"[token-lm] vocab {vocab_size:,} step {step + 1}/{steps} train CE {float(loss):.3f} nats",
                  file=sys.stderr, flush=True)
    train_seconds = time.time() - start

    lm.eval()
    test_windows = _windows(test_sequences, context, bos)
    total_nats, total_tokens = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(test_windows), 64):
            input_ids, attention_mask, labels = _batch(test_windows[first:first + 64])
            logits = lm(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
            targets = labels[:, 1:]
            nats = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
            total_nats += float(nats)
            total_tokens += int((targets != -100).sum())
    lm_nats = total_nats / total_tokens

    # Context-free baseline: add-one smoothed unigram of the train tokens over the full vocabulary.
    train_tokens = np.concatenate(train_sequences)
    test_tokens = np.concatenate(test_sequences)
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64) + 1.0
    unigram_nats = float(-np.log(counts[test_tokens] / counts.sum()).mean())
    seen = np.bincount(train_tokens, minlength=vocab_size) > 0
    return {
        "vocab_size": vocab_size,
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
