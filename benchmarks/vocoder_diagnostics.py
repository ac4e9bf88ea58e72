"""Why the neural vocoder loses to Griffin-Lim on the true mel: its magnitude, its phase, or both?

    .venv/bin/python benchmarks/vocoder_diagnostics.py --corpus_dir data/speech_corpus            # 48 validation clips
    .venv/bin/python benchmarks/vocoder_diagnostics.py --corpus_dir DIR --clips 4 --output_dir /tmp/diag

Crosses the two halves of each vocoder, on the true log-mel and on the log-mel decoded from tokens, and scores every
combination on the same clips (STOI, PESQ-WB, the benchmark's independent log-mel distance; pqvae_hf.metrics):

| system | magnitude | phase |
|---|---|---|
| neural vocoder | the network's | the network's |
| Griffin-Lim | mel pseudo-inverse | Griffin-Lim from random phases |
| neural magnitude + Griffin-Lim phase | the network's | Griffin-Lim started from the network's phase |
| mel-inverse magnitude + neural phase | mel pseudo-inverse | the network's, no iterations |
| mel-inverse magnitude + Griffin-Lim from neural phase | mel pseudo-inverse | Griffin-Lim started from the network's |

and how close each magnitude is to the clip's true STFT magnitude |X| (spectral convergence ||M - |X|||_F / |||X|||_F,
energy-weighted; log-mel L1 through the model's filterbank): the pseudo-inverse of the mel, the network's predicted
magnitude, and the magnitude of the waveform the network actually outputs (its predicted magnitude and phase are not
consistent, so the two differ). Griffin-Lim is the model's own `GriffinLim` (same iterations, same momentum).
Each system's phase is scored too: the instantaneous-frequency and group-delay errors of its output waveform's STFT
phase against the clip's (`PhaseDerivativeLoss`, the vocoder's phase training loss, energy weighted).
Validation split by default: this is a tuning tool, not a report on the test split.
Outputs in `--output_dir`: results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from codec_quality import DEFAULT_CHECKPOINT, load_clips  # noqa: E402

from pqvae_hf.metrics import independent_log_mel_distance, intelligibility_and_quality  # noqa: E402
from pqvae_hf.vocoder_training import PhaseDerivativeLoss  # noqa: E402

DEFAULT_OUTPUT = os.path.join(HERE, "results", "vocoder_diagnostics")
SYSTEMS = ("neural vocoder", "Griffin-Lim", "neural magnitude + Griffin-Lim phase",
           "mel-inverse magnitude + neural phase", "mel-inverse magnitude + Griffin-Lim from neural phase")
MAGNITUDES = ("mel pseudo-inverse", "network's predicted magnitude", "magnitude of the network's output")
INPUTS = ("true mel", "token mel")
METRICS = ("stoi", "pesq_wb", "log_mel_db")


def magnitude_errors(front_end, estimate: torch.Tensor, target: torch.Tensor, log_floor: float) -> dict:
    """Spectral convergence and log-mel L1 of a magnitude estimate (1, K, F) against the true magnitude (1, K, F)."""
    frames = min(estimate.shape[-1], target.shape[-1])
    estimate, target = estimate[..., :frames], target[..., :frames]
    convergence = torch.linalg.norm(estimate - target) / torch.linalg.norm(target).clamp_min(1e-12)

    def log_mel(magnitude):
        return torch.log((front_end.mel_filters @ magnitude).clamp_min(log_floor))

    return {"spectral_convergence": float(convergence), "log_mel_l1": float((log_mel(estimate) - log_mel(target)).abs().mean())}


def phase_errors(phase_loss: PhaseDerivativeLoss, waveform: torch.Tensor, audio: np.ndarray) -> dict:
    """Instantaneous-frequency and group-delay errors of a waveform's own STFT phase (1, T) against the clip's, energy
    weighted and anti-wrapped (0 = the true phase derivatives; independent noise scores ~1.1 rad on speech, not pi / 2,
    because with overlapping frames every signal's phase advances by about its bin's centre frequency per hop)."""
    target = torch.from_numpy(audio[: waveform.shape[-1]])[None]
    frequency, delay = phase_loss(phase_loss.stft(waveform).angle(), target)
    return {"inst_freq_error": float(frequency), "group_delay_error": float(delay)}


@torch.no_grad()
def diagnose_clip(model, griffin_lim, phase_loss, audio: np.ndarray, log_mel: torch.Tensor) -> tuple[dict, dict, dict]:
    """One clip, one input mel (1, M, F): the waveform of every system in SYSTEMS, the error of every magnitude in
    MAGNITUDES against the clip's true STFT magnitude, and the phase-derivative errors of every system's waveform."""
    front_end, vocoder = model.front_end, model.vocoder
    length = (log_mel.shape[-1] - 1) * front_end.hop_length
    neural_magnitude, neural_phase = vocoder.magnitude_and_phase(log_mel)
    mel_inverse = griffin_lim.magnitude(log_mel)
    neural_output = vocoder(log_mel)
    waveforms = {
        "neural vocoder": neural_output,
        "Griffin-Lim": griffin_lim(log_mel),
        "neural magnitude + Griffin-Lim phase": griffin_lim.retrieve_phase(neural_magnitude, length, neural_phase),
        "mel-inverse magnitude + neural phase": torch.istft(
            torch.polar(mel_inverse, neural_phase), front_end.n_fft, hop_length=front_end.hop_length,
            win_length=front_end.win_length, window=front_end.window, center=True, length=length),
        "mel-inverse magnitude + Griffin-Lim from neural phase": griffin_lim.retrieve_phase(mel_inverse, length,
                                                                                            neural_phase),
    }
    true_magnitude = front_end.magnitude(torch.from_numpy(audio)[None])  # the STFT the mel is made from
    magnitudes = {"mel pseudo-inverse": mel_inverse, "network's predicted magnitude": neural_magnitude,
                  "magnitude of the network's output": front_end.magnitude(neural_output)}
    floor = model.config.log_floor
    errors = {name: magnitude_errors(front_end, value, true_magnitude, floor) for name, value in magnitudes.items()}
    phases = {name: phase_errors(phase_loss, waveform, audio) for name, waveform in waveforms.items()}
    return {name: w[0].numpy().astype(np.float32) for name, w in waveforms.items()}, errors, phases


def score(reference: np.ndarray, estimate: np.ndarray, sampling_rate: int) -> dict:
    length = min(len(reference), len(estimate))  # every system here has zero delay and (F - 1) * hop samples
    reference, estimate = reference[:length], estimate[:length]
    return {**intelligibility_and_quality(reference, estimate, sampling_rate),
            **independent_log_mel_distance(reference, estimate, sampling_rate)}


def summarize(per_clip: dict, errors: dict, phases: dict) -> dict:
    """Means over the clips where every system of an input has the metric (a clip PESQ or STOI cannot score is
    excluded for all systems of that input, and counted)."""
    summary = {}
    for source in INPUTS:
        systems = per_clip[source]
        rows = {}
        for metric in METRICS:
            clips = [i for i in range(len(systems[SYSTEMS[0]]))
                     if all(systems[name][i].get(metric) is not None for name in SYSTEMS)]
            for name in SYSTEMS:
                values = [systems[name][i][metric] for i in clips]
                rows.setdefault(name, {})[metric] = float(np.mean(values)) if values else None
                rows[name][f"{metric}_clips"] = len(clips)
        magnitude_rows = {name: {key: float(np.mean([e[key] for e in errors[source][name]]))
                                 for key in ("spectral_convergence", "log_mel_l1")} for name in MAGNITUDES}
        for name in SYSTEMS:
            for key in ("inst_freq_error", "group_delay_error"):
                rows[name][key] = float(np.mean([e[key] for e in phases[source][name]]))
        summary[source] = {"systems": rows, "magnitudes": magnitude_rows}
    return summary


def to_markdown(results: dict) -> str:
    lines = ["# Vocoder diagnostics: magnitude against phase", "",
             f"`{results['command']}`", "",
             f"Checkpoint `{results['checkpoint']}`, {results['selection']}; Griffin-Lim {results['griffin_lim_iters']}"
             " iterations (momentum 0.99). Means over the clips every system of an input could score "
             "(count in brackets).", ""]
    for source in INPUTS:
        block = results["summary"][source]
        lines += [f"## {source}", "", "| system | STOI | PESQ-WB | log-mel distance (dB) | phase error: inst. "
                  "frequency / group delay (rad) |", "|---|---|---|---|---|"]
        for name in SYSTEMS:
            row = block["systems"][name]
            cells = [("-" if row[m] is None else f"{row[m]:.3f}") + f" ({row[m + '_clips']})" for m in METRICS]
            phase = (f"{row['inst_freq_error']:.3f} / {row['group_delay_error']:.3f}" if "inst_freq_error" in row
                     else "-")  # results.json written before the phase columns existed
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {phase} |")
        lines += ["", "| magnitude against the true STFT magnitude | spectral convergence | log-mel L1 |", "|---|---|---|"]
        for name in MAGNITUDES:
            row = block["magnitudes"][name]
            lines.append(f"| {name} | {row['spectral_convergence']:.3f} | {row['log_mel_l1']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus_dir", required=True)
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--split_column", default="split")
    parser.add_argument("--clips", type=int, default=48, help="evenly spaced clips of the split (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from pqvae_hf.inference import decode_long, encode_long, load_model
    from pqvae_hf.modeling.modeling_pqvae import GriffinLim

    model = load_model(args.checkpoint).eval()
    if model.config.vocoder != "neural":
        raise SystemExit(f"{args.checkpoint} has no neural vocoder (config.vocoder={model.config.vocoder!r}); "
                         "pass a checkpoint trained with one.")
    rate = model.config.sampling_rate
    if rate != 16000:
        raise SystemExit(f"STOI / PESQ-WB are scored at 16 kHz; {args.checkpoint} runs at {rate} Hz.")
    clips = load_clips(args.corpus_dir, args.split, args.split_column, args.clips or None)
    griffin_lim = GriffinLim(model.config, model.front_end)
    phase_loss = PhaseDerivativeLoss(model.config)
    per_clip = {source: {name: [] for name in SYSTEMS} for source in INPUTS}
    errors = {source: {name: [] for name in MAGNITUDES} for source in INPUTS}
    phases = {source: {name: [] for name in SYSTEMS} for source in INPUTS}
    start = time.time()
    with torch.no_grad():
        for audio in tqdm(clips.audios, desc="Diagnosing"):
            true_mel = model.front_end(torch.from_numpy(audio)[None])
            codes = encode_long(model, audio)
            token_mel, _ = decode_long(model, codes, return_waveform=False)
            token_mel = model.postfilter_mel(token_mel[None])[0]  # the vocoder's input in `decode`
            for source, log_mel in (("true mel", true_mel), ("token mel", token_mel[None])):
                waveforms, magnitude_error, phase_error = diagnose_clip(model, griffin_lim, phase_loss, audio, log_mel)
                for name, waveform in waveforms.items():
                    per_clip[source][name].append(score(audio, waveform, rate))
                for name, error in magnitude_error.items():
                    errors[source][name].append(error)
                for name, error in phase_error.items():
                    phases[source][name].append(error)
    results = {
        "command": "python benchmarks/vocoder_diagnostics.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "checkpoint": os.path.basename(os.path.normpath(args.checkpoint)),
        "split": args.split, "selection": clips.selection, "griffin_lim_iters": griffin_lim.num_iters,
        "seconds": round(time.time() - start, 1),
        "summary": summarize(per_clip, errors, phases),
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1)
    markdown = to_markdown(results)
    with open(os.path.join(args.output_dir, "results.md"), "w") as handle:
        handle.write(markdown + "\n")
    print(markdown)
    return results


if __name__ == "__main__":
    main()
