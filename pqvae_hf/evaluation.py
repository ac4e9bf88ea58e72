"""Evaluate a checkpoint on a speech split: token metrics on every clip, waveform metrics on a fixed subset.

    python -m pqvae_hf.evaluation --model checkpoints/pqvae-speech-small --dataset_dir corpus \
        --split test --split_column split --output results.json

Token metrics (all clips, whole length, valid frames only): log-mel L1/L2 of the decoded tokens against the input's
log-mel, usage and perplexity per sub-codebook and composite, bits per second. Clips are decoded as needed, sorted by
length and batched; clips longer than `--chunk_seconds` are streamed from the file and evaluated in chunks with
context, so peak memory does not depend on clip lengths (a 60-minute file included). Waveform metrics (clips of
`--min_waveform_seconds` to `--max_waveform_seconds`, the first `--waveform_clips` of them in dataset order): STOI
and wideband PESQ of tokens -> mel -> neural vocoder, and of the same mel through Griffin-Lim, plus the log-mel L1
of each waveform.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import CodebookStatistics
from .data import (AudioDecodeNotes, audio_num_samples, decode_audio, iter_audio_blocks, load_audio_dataset,
                   pad_batch)
from .inference import _chunks, decoder_context_frames, encoder_context_frames, load_model
from .metrics import intelligibility_and_quality, log_mel_distances

# --------------------------------------------------------------------------------------------------------------------
# Clips to evaluate: in memory, or rows of a dataset decoded on demand (never the whole split at once)
# --------------------------------------------------------------------------------------------------------------------


class ArrayClips:
    """Mono clips already in memory at the model's rate."""

    def __init__(self, audios: list[np.ndarray]):
        self.audios = audios

    def __len__(self) -> int:
        return len(self.audios)

    def num_samples(self, i: int) -> int:
        return len(self.audios[i])

    def load(self, i: int) -> np.ndarray:
        return np.asarray(self.audios[i], dtype=np.float32)

    def blocks(self, i: int, block_samples: int):
        audio = self.load(i)
        return (audio[start : start + block_samples] for start in range(0, len(audio), block_samples))


class DatasetClips:
    """A dataset's audio column, decoded one clip (short) or one block (long, streamed) at a time.

    `crop_seconds` keeps the first N seconds of each clip. Bad files raise `BadAudioError` naming path, row, split.
    """

    def __init__(self, dataset, sampling_rate: int, audio_column: str = "audio", split: str | None = None,
                 crop_seconds: float | None = None, notes: AudioDecodeNotes | None = None,
                 index_column: str = "__index__"):
        self.dataset, self.rate, self.audio_column, self.split = dataset, sampling_rate, audio_column, split
        self.crop = None if crop_seconds is None else int(round(crop_seconds * sampling_rate))
        self.notes = notes if notes is not None else AudioDecodeNotes()
        self.index_column = index_column if index_column in dataset.column_names else None

    def __len__(self) -> int:
        return len(self.dataset)

    def _cell(self, i: int) -> tuple:
        row = self.dataset[int(i)]
        return row[self.audio_column], (row[self.index_column] if self.index_column else int(i))

    def num_samples(self, i: int) -> int:
        cell, row = self._cell(i)
        length = audio_num_samples(cell, self.rate, row, self.split)
        return length if self.crop is None else min(length, self.crop)

    def load(self, i: int) -> np.ndarray:
        cell, row = self._cell(i)
        return decode_audio(cell, self.rate, self.notes, row, self.split)[: self.crop]

    def blocks(self, i: int, block_samples: int):
        cell, row = self._cell(i)
        remaining = self.crop
        for block in iter_audio_blocks(cell, self.rate, block_samples / self.rate, self.notes, row, self.split):
            if remaining is not None:
                block, remaining = block[:remaining], remaining - len(block[:remaining])
            yield block
            if remaining == 0:
                return


# --------------------------------------------------------------------------------------------------------------------
# Reconstruction metrics with bounded memory
# --------------------------------------------------------------------------------------------------------------------


class ReconstructionTotals:
    """Frame-weighted sums over an evaluation set (frames, mel L1 and L2 per bin, dual-decoding loss, loss) and the
    codebook statistics of the same frames."""

    def __init__(self, config):
        self.config = config
        self.sums = torch.zeros(5, dtype=torch.float64)
        self.stats = CodebookStatistics(config.num_codebooks, config.codebook_size)

    def add(self, out, frame_mask: torch.Tensor) -> None:
        """`out`: the model's forward output; `frame_mask` (B, F): the frames of it to count."""
        mask = frame_mask.to(out.mel.dtype)
        error = (out.mel - out.target_mel) * mask[:, None, :]
        frames = float(mask.sum())
        bins = self.config.num_mel_bins
        self.sums += torch.tensor([frames, float(error.abs().sum()) / bins, float((error**2).sum()) / bins,
                                   float(out.dual_reconstruction_loss) * frames, float(out.loss) * frames],
                                  dtype=torch.float64)
        self.stats.update(out.audio_codes.cpu(), frame_mask.cpu())

    @property
    def frames(self) -> int:
        return int(self.sums[0])

    def means(self) -> dict[str, float]:
        frames = max(float(self.sums[0]), 1.0)
        return {"mel_l1": float(self.sums[1]) / frames, "mel_l2": float(self.sums[2]) / frames,
                "dual_reconstruction_loss": float(self.sums[3]) / frames, "loss": float(self.sums[4]) / frames}


def _load_batch(clips, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_batch([clips.load(i) for i in indices])


def _forward(model, values: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor, totals: ReconstructionTotals):
    out = model(values.to(model.device), mask.to(model.device))
    totals.add(out, out.frame_mask * keep.to(out.frame_mask.device))


def _accumulate_long_clip(model, blocks, num_samples: int, chunk_frames: int, batch_size: int,
                          totals: ReconstructionTotals) -> None:
    """One long clip, streamed: chunks of `chunk_frames` frames, each run with enough context frames on both sides
    to cover the encoder's and the decoder's receptive fields (and the STFT), and only its own frames counted. The
    mel and codes of the counted frames equal whole-clip evaluation (up to float near-ties in the code search);
    memory holds `batch_size` chunks, whatever the clip's length. The loss terms are those of the chunk forwards."""
    config = model.config
    hop = config.hop_length
    num_frames = num_samples // hop + 1
    context = encoder_context_frames(config) + decoder_context_frames(config) + 1
    blocks = iter(blocks)
    buffer, base = np.zeros(0, np.float32), 0  # buffer holds samples [base, base + len(buffer))
    pending = []
    for start, end in _chunks(num_frames, chunk_frames):
        first, last = max(0, start - context), min(num_frames, end + context)
        low, high = first * hop, ((last - 1) * hop + 1 if last < num_frames else num_samples)
        parts = [buffer]
        available = base + buffer.shape[0]
        while available < high:
            block = next(blocks, None)
            if block is None:  # the header promised more than the stream gave: pad (never seen; kept safe)
                parts.append(np.zeros(high - available, np.float32))
                break
            parts.append(block)
            available += block.shape[0]
        buffer = np.concatenate(parts) if len(parts) > 1 else buffer
        pending.append((buffer[low - base : high - base].copy(), start - first, end - first))
        drop = max(0, max(0, end - context) * hop - base)  # samples before the next chunk's context
        buffer, base = buffer[drop:], base + drop
        if len(pending) == batch_size or end == num_frames:
            values, mask = pad_batch([piece for piece, _, _ in pending])
            keep = torch.zeros(len(pending), values.shape[-1] // hop + 1, dtype=torch.long)
            for row, (_, keep_start, keep_end) in enumerate(pending):
                keep[row, keep_start:keep_end] = 1
            _forward(model, values, mask, keep, totals)
            pending = []


@torch.no_grad()
def accumulate_reconstruction(model, clips, batch_size: int = 8, chunk_seconds: float = 30.0, num_workers: int = 0,
                              progress: bool = True, totals: ReconstructionTotals | None = None,
                              lengths: list[int] | None = None) -> ReconstructionTotals:
    """Runs the model's forward over every clip and sums reconstruction and codebook metrics over valid frames.

    Clips are sorted by length and batched `batch_size` at a time (little padding); clips longer than
    `chunk_seconds` are streamed and evaluated in chunks with context (`_accumulate_long_clip`). Peak memory is
    bounded by `batch_size` x `chunk_seconds` of audio (plus one streamed block), not by the longest clip.
    """
    totals = totals or ReconstructionTotals(model.config)
    rate, hop = model.config.sampling_rate, model.config.hop_length
    chunk_samples = max(hop, int(chunk_seconds * rate))
    lengths = lengths if lengths is not None else [clips.num_samples(i) for i in range(len(clips))]
    order = sorted(range(len(clips)), key=lengths.__getitem__)
    short = [i for i in order if lengths[i] <= chunk_samples]
    long = [i for i in order if lengths[i] > chunk_samples]
    batches = [short[start : start + batch_size] for start in range(0, len(short), batch_size)]
    loader = DataLoader(batches, batch_size=None, collate_fn=functools.partial(_load_batch, clips),
                        num_workers=num_workers)
    bar = tqdm(total=len(batches) + len(long), desc="Evaluating", disable=not progress, leave=False)
    for values, mask in loader:
        _forward(model, values, mask, torch.ones(values.shape[0], values.shape[-1] // hop + 1, dtype=torch.long),
                 totals)
        bar.update()
    for i in long:
        _accumulate_long_clip(model, clips.blocks(i, chunk_samples), lengths[i], chunk_samples // hop, batch_size,
                              totals)
        bar.update()
    bar.close()
    return totals


def token_metrics(model, totals: ReconstructionTotals, clips: int, audio_samples: int) -> dict:
    config = model.config
    means = totals.means()
    return {
        "clips": clips,
        "audio_seconds": round(audio_samples / config.sampling_rate, 2),
        "frames": totals.frames,
        "log_mel_l1": means["mel_l1"],
        "log_mel_l2": means["mel_l2"],
        "bits_per_second": config.bits_per_second,
        **totals.stats.compute(),
    }


@torch.no_grad()
def evaluate_tokens(model, audios: list[np.ndarray], batch_size: int = 8, progress: bool = True,
                    chunk_seconds: float = 30.0) -> dict:
    """Token metrics of in-memory clips (see `accumulate_reconstruction`)."""
    clips = ArrayClips(audios)
    totals = accumulate_reconstruction(model, clips, batch_size, chunk_seconds, progress=progress)
    return token_metrics(model, totals, len(audios), sum(len(a) for a in audios))


@torch.no_grad()
def evaluate_waveforms(model, audios, progress: bool = True, total: int | None = None) -> dict:
    """Mean STOI / PESQ-WB / waveform log-mel L1 of the neural vocoder and of Griffin-Lim on the tokens' mel.
    `audios`: any iterable of clips (a generator keeps one clip in memory at a time)."""
    from .modeling.modeling_pqvae import GriffinLim

    config = model.config
    vocoders = {"griffin_lim": GriffinLim(config, model.front_end)}
    if config.vocoder == "neural":
        vocoders = {"neural": model.vocoder, **vocoders}
    scores = {name: {"stoi": [], "pesq_wb": [], "log_mel_l1": []} for name in vocoders}
    for audio in tqdm(audios, desc="Waveforms", disable=not progress, total=total):
        codes = model.encode(torch.from_numpy(audio)[None, None]).audio_codes
        mel = model.postfilter_mel(model.decode(codes, return_waveform=False).mel)  # what `decode` vocodes
        for name, vocoder in vocoders.items():
            waveform = vocoder(mel)[0].numpy()
            waveform = np.pad(waveform, (0, max(0, len(audio) - len(waveform))))[: len(audio)]
            quality = intelligibility_and_quality(audio, waveform, config.sampling_rate)
            for key in ("stoi", "pesq_wb"):
                if quality.get(key) is not None:
                    scores[name][key].append(quality[key])
            scores[name]["log_mel_l1"].append(log_mel_distances(model, audio, waveform)["log_mel_l1"])
    return {name: {key: (float(np.mean(values)) if values else None) for key, values in metrics.items()}
            | {"clips_scored": {key: len(values) for key, values in metrics.items()}}
            for name, metrics in scores.items()}


def evaluate_split_tokens(model, dataset_dir: str | None = None, dataset_name: str | None = None, split: str = "test",
                          split_column: str | None = None, audio_column: str = "audio", max_clips: int | None = None,
                          batch_size: int = 8, chunk_seconds: float = 30.0, progress: bool = True):
    """Token metrics of `model` on a dataset split read from its original files (the one path every trainer's final
    evaluation and the model card use). -> ({"split", "decoding", "tokens"}, clips, clip lengths in samples)."""
    was_training = model.training
    model.eval()
    data = load_audio_dataset(dataset_name=dataset_name, dataset_dir=dataset_dir, split=split,
                              split_column=split_column, audio_column=audio_column, max_samples=max_clips)
    clips = DatasetClips(data, model.config.sampling_rate, audio_column, split=split)
    lengths = [clips.num_samples(i) for i in tqdm(range(len(clips)), desc="Reading headers", disable=not progress)]
    totals = accumulate_reconstruction(model, clips, batch_size, chunk_seconds, progress=progress, lengths=lengths)
    model.train(was_training)
    results = {"split": split, "decoding": clips.notes.summary(),
               "tokens": token_metrics(model, totals, len(clips), sum(lengths))}
    return results, clips, lengths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint folder or Hub id (default: shipped checkpoint)")
    parser.add_argument("--dataset_dir", default=None)
    parser.add_argument("--dataset_name", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--split_column", default=None)
    parser.add_argument("--audio_column", default="audio")
    parser.add_argument("--max_clips", type=int, default=None, help="token metrics on the first N clips only")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--chunk_seconds", type=float, default=30.0,
                        help="longer clips are evaluated in chunks (bounded memory whatever the clip length)")
    parser.add_argument("--waveform_clips", type=int, default=40)
    parser.add_argument("--min_waveform_seconds", type=float, default=2.0)
    parser.add_argument("--max_waveform_seconds", type=float, default=120.0,
                        help="longer clips are left out of the waveform metrics (STOI/PESQ run on whole clips)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    start = time.time()
    model = load_model(args.model)
    rate = model.config.sampling_rate
    results, clips, lengths = evaluate_split_tokens(
        model, dataset_dir=args.dataset_dir, dataset_name=args.dataset_name, split=args.split,
        split_column=args.split_column, audio_column=args.audio_column, max_clips=args.max_clips,
        batch_size=args.batch_size, chunk_seconds=args.chunk_seconds)
    if args.waveform_clips > 0:
        eligible = [i for i, n in enumerate(lengths)
                    if args.min_waveform_seconds * rate <= n <= args.max_waveform_seconds * rate]
        chosen = eligible[: args.waveform_clips]
        results["waveform_selection"] = (f"first {len(chosen)} of the {len(eligible)} clips of"
                                         f" {args.min_waveform_seconds}-{args.max_waveform_seconds} s, dataset order")
        results["waveforms"] = evaluate_waveforms(model, (clips.load(i) for i in chosen), total=len(chosen))
    results["wall_seconds"] = round(time.time() - start, 1)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    return results


if __name__ == "__main__":
    main()
