"""Evaluate a checkpoint on a speech split: token metrics on every clip, waveform metrics on a fixed subset.

    python -m pqvae_hf.evaluation --model checkpoints/pqvae-speech-small --dataset_dir corpus \
        --split test --split_column split --output results.json

Token metrics (all clips, whole length, valid frames only): log-mel L1/L2 of the decoded tokens against the input's
log-mel, usage and perplexity per sub-codebook and composite, bits per second. Waveform metrics (clips of at least
`--min_waveform_seconds`, the first `--waveform_clips` of them in dataset order): STOI and wideband PESQ of
tokens -> mel -> neural vocoder, and of the same mel through Griffin-Lim, plus the log-mel L1 of each waveform.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from . import CodebookStatistics
from .data import AudioDecodeNotes, decode_audio, load_audio_dataset, pad_batch
from .inference import load_model
from .metrics import intelligibility_and_quality, log_mel_distances


@torch.no_grad()
def evaluate_tokens(model, audios: list[np.ndarray], batch_size: int = 8, progress: bool = True) -> dict:
    config = model.config
    stats = CodebookStatistics(config.num_codebooks, config.codebook_size)
    frames = l1 = l2 = 0.0
    order = np.argsort([len(a) for a in audios])  # similar lengths together: less padding, same results
    for start in tqdm(range(0, len(order), batch_size), desc="Tokens", disable=not progress):
        chunk = [audios[i] for i in order[start : start + batch_size]]
        values, mask = pad_batch(chunk)
        encoded = model.encode(values, mask)
        mel = model.decode(encoded.audio_codes, mask, return_waveform=False).mel
        target = model.front_end(values[:, 0] * mask)
        weights = encoded.frame_mask[:, None, :].float()
        error = (mel - target) * weights
        frames += float(encoded.frame_mask.sum())
        l1 += float(error.abs().sum()) / config.num_mel_bins
        l2 += float((error**2).sum()) / config.num_mel_bins
        stats.update(encoded.audio_codes, encoded.frame_mask)
    result = stats.compute()
    return {
        "clips": len(audios),
        "audio_seconds": round(sum(len(a) for a in audios) / config.sampling_rate, 2),
        "frames": int(frames),
        "log_mel_l1": l1 / max(frames, 1),
        "log_mel_l2": l2 / max(frames, 1),
        "bits_per_second": config.bits_per_second,
        **result,
    }


@torch.no_grad()
def evaluate_waveforms(model, audios: list[np.ndarray], progress: bool = True) -> dict:
    """Mean STOI / PESQ-WB / waveform log-mel L1 of the neural vocoder and of Griffin-Lim on the tokens' mel."""
    from .modeling.modeling_pqvae import GriffinLim

    config = model.config
    vocoders = {"griffin_lim": GriffinLim(config, model.front_end)}
    if config.vocoder == "neural":
        vocoders = {"neural": model.vocoder, **vocoders}
    scores = {name: {"stoi": [], "pesq_wb": [], "log_mel_l1": []} for name in vocoders}
    for audio in tqdm(audios, desc="Waveforms", disable=not progress):
        codes = model.encode(torch.from_numpy(audio)[None, None]).audio_codes
        mel = model.decode(codes, return_waveform=False).mel
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
    parser.add_argument("--waveform_clips", type=int, default=40)
    parser.add_argument("--min_waveform_seconds", type=float, default=2.0)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    start = time.time()
    model = load_model(args.model)
    data = load_audio_dataset(dataset_name=args.dataset_name, dataset_dir=args.dataset_dir, split=args.split,
                              split_column=args.split_column, audio_column=args.audio_column,
                              max_samples=args.max_clips)
    notes = AudioDecodeNotes()
    audios = [decode_audio(cell, model.config.sampling_rate, notes) for cell in
              tqdm(data[args.audio_column], desc="Decoding")]
    results = {"split": args.split, "decoding": notes.summary(), "tokens": evaluate_tokens(model, audios,
                                                                                             args.batch_size)}
    long_enough = [a for a in audios if len(a) >= args.min_waveform_seconds * model.config.sampling_rate]
    if args.waveform_clips > 0:
        results["waveform_selection"] = (f"first {min(args.waveform_clips, len(long_enough))} of the"
                                         f" {len(long_enough)} clips >= {args.min_waveform_seconds} s, dataset order")
        results["waveforms"] = evaluate_waveforms(model, long_enough[: args.waveform_clips])
    results["wall_seconds"] = round(time.time() - start, 1)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    return results


if __name__ == "__main__":
    main()
