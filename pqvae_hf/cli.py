"""`pqvae` command line: tokenize, reconstruct, inspect a model, and the demo (the README's main job).

    pqvae info [MODEL]
    pqvae tokenize AUDIO [--model M] [--out codes.npy|codes.json]
    pqvae reconstruct AUDIO -o out.wav [--model M] [--plot cmp.png] [--compare-griffin-lim]
    pqvae tokenize-dataset --dataset_dir DIR [--split test --split_column split] --output_dir tokens/
    pqvae tokenize-dataset --dataset_name ORG/NAME --split train --streaming --output_dir tokens/
    pqvae demo [--out-dir outputs/demo]

MODEL defaults to the checkpoint shipped in checkpoints/pqvae-speech-small (or $PQVAE_MODEL).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import soundfile as sf
import torch

from .data import require_audio_file
from .inference import REPO_ROOT, decode_long, encode_long, load_audio, load_model

DEMO_CLIP = os.path.join(REPO_ROOT, "assets", "speech_orig_16k.flac")


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_info(args) -> dict:
    model = load_model(args.model_path or args.model)
    config = model.config
    info = {
        "model": args.model_path or args.model or "shipped default",
        "sampling_rate": config.sampling_rate,
        "frame_rate": config.frame_rate,
        "quantizer": config.quantizer_type,
        "num_codebooks (M)": config.num_codebooks,
        "codebook_size (N)": config.codebook_size,
        "composite_codebook_size (N^M)": config.composite_codebook_size,
        "bits_per_second": config.bits_per_second,
        "dual_decoding_weight": config.dual_decoding_weight,
        "vocoder": config.vocoder,
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameters_vocoder": sum(p.numel() for p in model.vocoder.parameters()) if model.vocoder is not None else 0,
        "mel_vocoder": config.mel_vocoder,
        "parameters_mel_vocoder": (sum(p.numel() for p in model.mel_vocoder.parameters())
                                   if model.mel_vocoder is not None else 0),
    }
    for key, value in info.items():
        print(f"{key:32s} {value:,}" if isinstance(value, int) else f"{key:32s} {value}")
    return info


def cmd_tokenize(args) -> dict:
    require_audio_file(args.audio)  # before the slow model load
    model = load_model(args.model)
    audio = load_audio(args.audio, model.config.sampling_rate, log=_log)
    start = time.time()
    codes = encode_long(model, audio, chunk_seconds=args.chunk_seconds, progress=True)
    elapsed = time.time() - start
    composite = model.codes_to_composite(codes[None])[0]
    seconds = len(audio) / model.config.sampling_rate
    summary = {
        "audio_seconds": round(seconds, 3),
        "frames": codes.shape[-1],
        "tokens_per_second": round(codes.shape[-1] / seconds, 2),
        "bits_per_second": model.config.bits_per_second,
        "encode_seconds": round(elapsed, 3),
        "realtime_factor": round(seconds / max(elapsed, 1e-9), 1),
    }
    if args.out:
        if args.out.endswith(".json"):
            with open(args.out, "w") as handle:
                json.dump({"audio_codes": codes.tolist(), "composite_ids": composite.tolist(),
                           "num_codebooks": model.config.num_codebooks,
                           "codebook_size": model.config.codebook_size, **summary}, handle)
        elif args.out.endswith(".npy"):
            np.save(args.out, codes.numpy())
        else:
            raise SystemExit(f"--out must end in .npy or .json, got {args.out}")
        _log(f"wrote {args.out} (codes of shape {tuple(codes.shape)})")
    else:
        print(" ".join(map(str, composite.tolist()[:50])) + (" ..." if len(composite) > 50 else ""))
    print(json.dumps(summary))
    return summary


def plot_mels(reference_mel: np.ndarray, reconstructed_mel: np.ndarray, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True, constrained_layout=True)
    low, high = float(np.percentile(reference_mel, 1)), float(reference_mel.max())
    for axis, mel, name in zip(axes, (reference_mel, reconstructed_mel), ("input", "reconstruction")):
        image = axis.imshow(mel, origin="lower", aspect="auto", vmin=low, vmax=high, cmap="magma")
        axis.set_ylabel(f"{name}\nmel bin")
    axes[-1].set_xlabel("frame")
    fig.colorbar(image, ax=axes, label="log magnitude")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def waveform_metrics(model, reference: np.ndarray, waveform: np.ndarray) -> dict:
    """The log-mel distance of a vocoded waveform to the input (`waveform_mel_l1/l2`), plus STOI and PESQ."""
    from .metrics import intelligibility_and_quality, log_mel_distances

    distances = log_mel_distances(model, reference, waveform)
    return {"waveform_mel_l1": distances["log_mel_l1"], "waveform_mel_l2": distances["log_mel_l2"],
            **intelligibility_and_quality(reference, waveform, model.config.sampling_rate)}


def cmd_reconstruct(args) -> dict:
    require_audio_file(args.audio)
    model = load_model(args.model)
    config = model.config
    audio = load_audio(args.audio, config.sampling_rate, log=_log)
    start = time.time()
    codes = encode_long(model, audio, chunk_seconds=args.chunk_seconds, progress=True)
    encode_seconds = time.time() - start
    start = time.time()
    mel, waveform = decode_long(model, codes, num_samples=len(audio), chunk_seconds=args.chunk_seconds,
                                progress=True)
    decode_seconds = time.time() - start
    if waveform is None:
        raise SystemExit("This model has vocoder='none'; nothing to write. Load it with vocoder='griffin_lim'.")
    if len(audio) < config.hop_length:
        _log(f"{args.audio} is shorter than one frame hop ({len(audio)} < {config.hop_length} samples): the vocoder"
             " makes no samples from a single frame, so the output is silence")
    reconstruction = waveform.numpy()
    peak = float(np.abs(reconstruction).max())
    if peak > 1.0:  # writing PCM would clip; scale down and say so rather than distort silently
        _log(f"reconstruction peaks at {peak:.2f}; scaled to 0.99 before writing")
        reconstruction = reconstruction * (0.99 / peak)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    sf.write(args.output, reconstruction, config.sampling_rate)
    seconds = len(audio) / config.sampling_rate
    with torch.no_grad():
        input_mel = model.front_end(torch.from_numpy(audio)[None].to(model.device))[0].cpu()
    summary = {
        "input": args.audio,
        "output": args.output,
        "audio_seconds": round(seconds, 3),
        "tokens": int(codes.shape[-1]),
        "tokens_per_second": round(codes.shape[-1] / seconds, 2),
        "bits_per_second": config.bits_per_second,
        "composite_codebook_size": config.composite_codebook_size,
        "vocoder": config.vocoder,
        "encode_realtime_factor": round(seconds / max(encode_seconds, 1e-9), 1),
        "decode_realtime_factor": round(seconds / max(decode_seconds, 1e-9), 1),
        # Two different mel distances to the input's log-mel: the decoder's output (what the tokens carry) and the
        # log-mel of the written waveform (what the vocoder made of it).
        "decoded_mel_l1": float((mel - input_mel).abs().mean()),
        **waveform_metrics(model, audio, waveform.numpy()),
    }
    if args.compare_griffin_lim and config.vocoder != "griffin_lim":
        from .modeling.modeling_pqvae import GriffinLim

        griffin_lim = GriffinLim(config, model.front_end)
        with torch.no_grad():
            baseline = griffin_lim(mel[None].to(model.device))[0].cpu().numpy() if mel.shape[-1] > 1 else np.zeros(0)
        baseline = np.pad(baseline, (0, max(0, len(audio) - len(baseline))))[: len(audio)]
        summary["griffin_lim"] = waveform_metrics(model, audio, baseline)
        if args.output.endswith(".wav"):
            summary["griffin_lim_output"] = args.output[:-4] + "_griffin_lim.wav"
            sf.write(summary["griffin_lim_output"], np.clip(baseline, -1, 1), config.sampling_rate)
    if args.plot:
        plot_mels(input_mel.numpy(), mel.numpy(), args.plot,
                  f"{os.path.basename(args.audio)}: {config.num_codebooks} x {config.codebook_size} codes,"
                  f" {config.bits_per_second:g} bit/s, decoded log-mel L1 {summary['decoded_mel_l1']:.3f}")
        summary["plot"] = args.plot
    print(json.dumps(summary, indent=2))
    return summary


def cmd_demo(args) -> dict:
    """The README's main job: tokenize and reconstruct a real speech clip with the shipped checkpoint."""
    out_dir = args.out_dir
    os.makedirs(out_dir, exist_ok=True)
    _log(f"Demo: {DEMO_CLIP} (real speech, codec2-examples, LGPL-2.1; test split, unseen in training)")
    tokenize_args = argparse.Namespace(model=args.model, audio=DEMO_CLIP, out=os.path.join(out_dir, "codes.json"),
                                       chunk_seconds=60.0)
    cmd_tokenize(tokenize_args)
    reconstruct_args = argparse.Namespace(model=args.model, audio=DEMO_CLIP,
                                          output=os.path.join(out_dir, "reconstruction.wav"),
                                          plot=os.path.join(out_dir, "mel_comparison.png"), chunk_seconds=60.0,
                                          compare_griffin_lim=True)
    summary = cmd_reconstruct(reconstruct_args)
    with open(os.path.join(out_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    written = [tokenize_args.out, summary["output"], summary.get("griffin_lim_output"), summary.get("plot"),
               os.path.join(out_dir, "summary.json")]
    _log(f"Demo outputs in {out_dir}: {', '.join(os.path.basename(path) for path in written if path)}")
    _log("decoded_mel_l1: log-mel L1 of the decoder's output (the tokens) vs the input; waveform_mel_l1: of the"
         " written waveform (after the vocoder) vs the input")
    return summary


def cmd_tokenize_dataset(args) -> dict:
    """A whole corpus -> token dataset (save_to_disk and/or push_to_hub), with a summary."""
    from .data import load_audio_dataset
    from .dataset_tokenization import shard_for_this_process, tokenize_dataset
    from .inference import default_model_path

    output_dir = args.output_dir
    if args.push_to_hub and not output_dir:  # save first: a failed push must not lose the work
        output_dir = os.path.join("outputs", "tokens", args.push_to_hub.replace("/", "__"))
        _log(f"--push_to_hub without --output_dir: the tokens are saved to {output_dir} first")
    report = args.bad_audio_report or (os.path.join(output_dir, "bad_audio.json") if output_dir else "bad_audio.json")
    dataset = load_audio_dataset(dataset_name=args.dataset_name, dataset_dir=args.dataset_dir, split=args.split,
                                 split_column=args.split_column, audio_column=args.audio_column,
                                 max_samples=args.max_samples, streaming=args.streaming)
    dataset = shard_for_this_process(dataset, args.shard_index, args.num_shards)
    tokens, summary = tokenize_dataset(
        dataset, args.model or default_model_path(), audio_column=args.audio_column, batch_size=args.batch_size,
        num_proc=args.num_proc, device=args.device, chunk_seconds=args.chunk_seconds,
        lm_token_offset=args.lm_token_offset, add_boundary_tokens=args.add_boundary_tokens, split=args.split,
        column_prefix=args.column_prefix, skip_bad_audio=args.skip_bad_audio,
        bad_audio_report=report if args.skip_bad_audio else None, log_summary=False, return_summary=True)
    if output_dir:
        tokens.save_to_disk(output_dir)
        summary["saved_to"] = output_dir
    if args.push_to_hub:
        try:
            tokens.push_to_hub(args.push_to_hub)
        except Exception as error:  # network, auth, offline mode: the saved copy is what matters now
            summary["push_failed"] = f"{type(error).__name__}: {str(error).rstrip('.')}"
            print(json.dumps(summary, indent=2))
            raise SystemExit(
                f"pqvae tokenize-dataset: pushing to {args.push_to_hub} failed ({summary['push_failed']})."
                f" Nothing is lost: the tokens are saved in {output_dir}; push them later with"
                f" python -c \"from datasets import load_from_disk; load_from_disk('{output_dir}')"
                f".push_to_hub('{args.push_to_hub}')\"")
        summary["pushed_to"] = args.push_to_hub
    print(json.dumps(summary, indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pqvae", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="config summary of a model")
    info.add_argument("model_path", nargs="?", default=None)
    info.add_argument("--model", default=None)
    info.set_defaults(func=cmd_info)

    tokenize = sub.add_parser("tokenize", help="audio file -> codes")
    tokenize.add_argument("audio")
    tokenize.add_argument("--model", default=None)
    tokenize.add_argument("--out", default=None, help="codes.npy (M x frames) or codes.json")
    tokenize.add_argument("--chunk-seconds", type=float, default=60.0, help="bounded-memory chunk length")
    tokenize.set_defaults(func=cmd_tokenize)

    reconstruct = sub.add_parser("reconstruct", help="audio file -> codes -> audio file")
    reconstruct.add_argument("audio")
    reconstruct.add_argument("-o", "--output", required=True)
    reconstruct.add_argument("--model", default=None)
    reconstruct.add_argument("--plot", default=None, help="PNG comparing input and reconstructed log-mel")
    reconstruct.add_argument("--compare-griffin-lim", action="store_true",
                             help="also vocode the same mel with Griffin-Lim and report its metrics")
    reconstruct.add_argument("--chunk-seconds", type=float, default=60.0)
    reconstruct.set_defaults(func=cmd_reconstruct)

    corpus = sub.add_parser("tokenize-dataset", help="tokenize a whole dataset with datasets.map")
    source = corpus.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset_dir", help="audiofolder (metadata.csv), save_to_disk folder or parquet files")
    source.add_argument("--dataset_name", help="Hub dataset id")
    corpus.add_argument("--split", default="train")
    corpus.add_argument("--split_column", default=None, help="select rows by this column's value (e.g. split)")
    corpus.add_argument("--audio_column", default="audio")
    corpus.add_argument("--max_samples", type=int, default=None)
    corpus.add_argument("--streaming", action="store_true",
                        help="read the audio as a stream (datasets' streaming=True: a Hub dataset's audio is never\n"
                             "downloaded whole); only the tokens are written locally. Not with --num_proc > 1 or\n"
                             "--skip_bad_audio")
    corpus.add_argument("--model", default=None)
    corpus.add_argument("--output_dir", default=None, help="save_to_disk folder for the token dataset")
    corpus.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="push the token dataset to the Hub"
                        " (saved locally first: to --output_dir, default outputs/tokens/REPO_ID)")
    corpus.add_argument("--batch_size", type=int, default=16)
    corpus.add_argument("--num_proc", type=int, default=None, help="worker processes (each loads the model once)")
    corpus.add_argument("--device", default="cpu", help="cpu or cuda (workers spread over GPUs by rank)")
    corpus.add_argument("--chunk_seconds", type=float, default=60.0, help="longer files are encoded in chunks")
    corpus.add_argument("--lm_token_offset", type=int, default=None, help="also write lm_tokens = id + offset")
    corpus.add_argument("--add_boundary_tokens", action="store_true", help="wrap lm_tokens in begin/end markers")
    corpus.add_argument("--column_prefix", default="", help="prefix of the output columns (e.g. pqvae_), needed when"
                        " the dataset already has a column of an output's name (audio_codes, duration_s, ...)")
    corpus.add_argument("--skip_bad_audio", action="store_true", help="check every file first and skip the bad"
                        " ones (each logged, listed in --bad_audio_report); default: a bad file stops the run")
    corpus.add_argument("--bad_audio_report", default=None,
                        help="where --skip_bad_audio lists skipped files (default OUTPUT_DIR/bad_audio.json)")
    corpus.add_argument("--shard_index", type=int, default=None, help="this node's shard (default $RANK)")
    corpus.add_argument("--num_shards", type=int, default=None, help="number of shards (default $WORLD_SIZE)")
    corpus.set_defaults(func=cmd_tokenize_dataset)

    demo = sub.add_parser("demo", help="tokenize + reconstruct the shipped real speech clip")
    demo.add_argument("--model", default=None)
    demo.add_argument("--out-dir", default="outputs/demo")
    demo.set_defaults(func=cmd_demo)
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Runs one command and returns its summary (what `main` prints)."""
    args = build_parser().parse_args(argv)
    try:
        with torch.no_grad():  # scoped: callers (tests, notebooks) keep their own grad mode
            return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"pqvae {args.command}: {error}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: exit status 0 on success (errors exit non-zero with a message)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
