"""Merge a trained tokenizer and a trained vocoder into one shippable folder, evaluate it, write its model card.

    python -m pqvae_hf.assemble_checkpoint --tokenizer runs/pq2x256 --vocoder runs/vocoder/vocoder.safetensors \
        --corpus_dir corpus --output checkpoints/pqvae-speech-small

The folder gets: config.json (vocoder="neural"), model.safetensors (tokenizer + vocoder), processor, model code,
the corpus licence files, eval_results.json (from pqvae_hf.evaluation on the test split) and README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import torch

from . import PQVAEConfig, PQVAEFeatureExtractor, PQVAEModel, PQVAEProcessor
from .evaluation import main as evaluate_main
from .model_card import write_model_card
from .packed_training import load_tokenizer, load_vocoder_weights, parse_overrides


def _vocoder_fields(vocoder: str) -> dict:
    """The `vocoder_*` config fields a vocoder was trained with, from its run folder's config.json ({} for a file or
    a folder without one). They say how its weights are read: the weights of a vocoder with a magnitude prior have
    the same shapes as without, so a wrong prior would load silently and sound wrong."""
    if os.path.isdir(vocoder) and os.path.isfile(os.path.join(vocoder, "config.json")):
        with open(os.path.join(vocoder, "config.json")) as handle:
            return {k: v for k, v in json.load(handle).items() if k.startswith("vocoder_")}
    return {}


def assemble(tokenizer_dir: str, vocoder: str, output: str, vocoder_overrides: dict | None = None,
             mel_vocoder: str | None = None, mel_vocoder_overrides: dict | None = None) -> PQVAEModel:
    """Tokenizer folder (`pqvae-train` or `pqvae_hf.packed_training` output) + vocoder weights (anything
    `load_vocoder_weights` reads: a `packed_training vocoder` output folder, a `PQVAEVocoder` `.safetensors`, or a
    checkpoint whose vocoder is taken) -> one model saved in `output`.
    `vocoder_overrides`: the vocoder's fields (size, magnitude prior) when they differ from the tokenizer config's,
    and decode-time settings such as `decoded_mel_contrast`; a vocoder folder's own config.json supplies its
    `vocoder_*` fields first.
    `mel_vocoder`: weights of a second vocoder (read the same way, the same size as `vocoder`) for mels computed from
    audio (`PQVAEConfig.mel_vocoder`); its folder's magnitude prior and phase refinement become the config's
    `mel_vocoder_*` fields, then `mel_vocoder_overrides` (e.g. `{"mel_vocoder_phase_refinement_iters": 32}`)."""
    tokenizer = load_tokenizer(tokenizer_dir)
    fields = {**tokenizer.config.to_dict(), **_vocoder_fields(vocoder), **(vocoder_overrides or {}), "vocoder": "neural"}
    if mel_vocoder is not None:
        mel_fields = _vocoder_fields(mel_vocoder)
        for size in ("vocoder_hidden_size", "vocoder_intermediate_size", "vocoder_num_layers"):
            if size in mel_fields and mel_fields[size] != fields[size]:
                raise ValueError(f"--mel_vocoder {mel_vocoder} has {size}={mel_fields[size]}, the vocoder"
                                 f" {fields[size]}: the two vocoders must have the same size.")
        fields.update({f"mel_{key}": mel_fields[key] for key in
                       ("vocoder_magnitude_prior", "vocoder_phase_refinement_iters") if key in mel_fields})
        fields.update({**(mel_vocoder_overrides or {}), "mel_vocoder": "neural"})
    elif mel_vocoder_overrides:
        raise ValueError("mel_vocoder_overrides without a mel_vocoder: name the mel vocoder's weights too.")
    else:  # (a tokenizer taken from a checkpoint that had one keeps no untrained mel vocoder)
        fields["mel_vocoder"] = "none"
    config = PQVAEConfig.from_dict(fields)
    model = PQVAEModel(config)
    state = {k: v for k, v in tokenizer.state_dict().items() if not k.startswith(("vocoder.", "mel_vocoder."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith(("vocoder.", "mel_vocoder.")) for key in missing):
        raise ValueError(f"Tokenizer weights do not fit: missing {missing}, unexpected {unexpected}.")
    model.vocoder.load_state_dict(load_vocoder_weights(vocoder), strict=True)
    if mel_vocoder is not None:
        model.mel_vocoder.load_state_dict(load_vocoder_weights(mel_vocoder), strict=True)
    model.eval()
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output)
    PQVAEProcessor(PQVAEFeatureExtractor(sampling_rate=config.sampling_rate), num_codebooks=config.num_codebooks,
                   codebook_size=config.codebook_size).save_pretrained(output)
    return model


def _card_sections(evaluation: dict, vocoder_metrics: dict | None, corpus_licenses: list[str], notes: dict) -> str:
    tokens = evaluation["tokens"]
    lines = ["## Test split (unseen languages and speakers), measured by `pqvae_hf.evaluation`", "",
             f"{tokens['clips']} clips, {tokens['audio_seconds'] / 60:.1f} min of audio, {tokens['frames']:,} frames"
             f" ({evaluation['decoding']}).", "",
             "| metric | value |", "|---|---|",
             f"| log-mel L1 (tokens -> mel) | {tokens['log_mel_l1']:.4f} |",
             f"| log-mel L2 | {tokens['log_mel_l2']:.4f} |",
             f"| bits per second | {tokens['bits_per_second']:g} |"]
    for index, (usage, fraction, perplexity) in enumerate(zip(
            tokens["codebook_usage"], tokens["codebook_usage_fraction"], tokens["codebook_perplexity"])):
        lines.append(f"| codebook {index}: used / perplexity | {usage} ({fraction:.1%}) / {perplexity:.1f} |")
    lines += [f"| composite: used / perplexity | {tokens['composite_usage']:,} / {tokens['composite_perplexity']:,.0f} |",
              f"| product of sub-perplexities | {tokens['product_of_codebook_perplexities']:,.0f} |"]
    if "waveforms" in evaluation:
        lines += ["", f"Waveforms ({evaluation['waveform_selection']}); tokens -> mel -> vocoder:", "",
                  "| vocoder | STOI | PESQ-WB | waveform log-mel L1 |", "|---|---|---|---|"]
        for name, scores in evaluation["waveforms"].items():
            stoi = f"{scores['stoi']:.3f}" if scores["stoi"] is not None else "n/a"
            pesq = f"{scores['pesq_wb']:.2f}" if scores["pesq_wb"] is not None else "n/a"
            lines.append(f"| {name} | {stoi} | {pesq} | {scores['log_mel_l1']:.3f} |")
    if vocoder_metrics:
        keep = ("steps", "train_wall_time_s", "num_parameters", "num_threads", "command")
        summary = {key: vocoder_metrics[key] for key in keep if key in vocoder_metrics}
        summary["train_data"] = vocoder_metrics.get("train_data", {}).get("selection")
        summary["test (from ground-truth mel)"] = {
            name: {k: v for k, v in scores.items() if k in ("mel_l1", "mr_stft", "stoi", "pesq_wb")}
            for name, scores in vocoder_metrics.get("test", {}).items() if isinstance(scores, dict) and "stoi" in scores}
        lines += ["", "## Vocoder training (`pqvae_hf.vocoder_training`, from its vocoder_metrics.json)", "",
                  "```json", json.dumps(summary, indent=1), "```"]
    lines += ["", "## Data and licences", "",
              "Trained on the `train` split of the speech corpus built by `shared/data/fetch_speech_corpus.sh`: about"
              " 384 minutes of real recordings from Debian packages (asterisk prompts, fillets-ng voices, klettres,"
              " ktuberling, gcin-voice, ...), many languages, mixed sample rates resampled to 16 kHz. The packages'"
              " licences (GPL, LGPL, CC-BY, CC-BY-SA) are copied in `licenses/`; weights trained on them should be"
              " redistributed under terms compatible with those licences.", ""]
    lines += [f"- `licenses/{name}`" for name in corpus_licenses]
    if notes:
        lines += ["", "## How it was made", ""] + [f"- {key}: {value}" for key, value in notes.items()]
    return "\n".join(lines)


def _rounded(value, digits: int = 4):
    """Floats of a nested dict/list rounded for the model card."""
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return round(value, digits) if isinstance(value, float) else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="trained tokenizer folder (pqvae-train output)")
    parser.add_argument("--vocoder", required=True,
                        help="vocoder.safetensors (pqvae_hf.vocoder_training), a packed_training vocoder folder, or a"
                             " checkpoint folder whose vocoder is taken")
    parser.add_argument("--vocoder_config_overrides", default=None,
                        help="vocoder size when not the default, e.g. 'vocoder_hidden_size=320,vocoder_num_layers=8'")
    parser.add_argument("--decoded_mel_contrast", type=float, default=None,
                        help="the decoded mel's post-filter factor (config.decoded_mel_contrast), tuned on validation"
                             " by scripts/mel_postfilter_sweep.sh; default: the tokenizer config's")
    parser.add_argument("--mel_vocoder", default=None,
                        help="a second vocoder for mels computed from audio (config.mel_vocoder), read like --vocoder:"
                             " e.g. scripts/true_mel_vocoder.sh's runs/cpu/voc_true_mel_refine8_prior")
    parser.add_argument("--mel_vocoder_phase_refinement_iters", type=int, default=None,
                        help="Griffin-Lim projections of the mel vocoder at inference (default: as it was trained)")
    parser.add_argument("--vocoder_metrics", default=None, help="vocoder_metrics.json from the vocoder run")
    parser.add_argument("--corpus_dir", required=True, help="speech corpus (for the test split and licences)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--codec_quality", default=None,
                        help="results.md of benchmarks/codec_quality.py for this checkpoint: added to the model card")
    parser.add_argument("--training_logs", action="append", default=[],
                        help="summary.json of scripts/gpu_train.sh stages: copied into training_logs.json, summarised")
    parser.add_argument("--waveform_clips", type=int, default=40)
    parser.add_argument("--note", action="append", default=[], metavar="KEY=VALUE",
                        help="facts for the model card, e.g. 'training command=...'")
    args = parser.parse_args(argv)

    overrides = parse_overrides(args.vocoder_config_overrides)
    if args.decoded_mel_contrast is not None:
        overrides["decoded_mel_contrast"] = args.decoded_mel_contrast
    mel_overrides = ({"mel_vocoder_phase_refinement_iters": args.mel_vocoder_phase_refinement_iters}
                     if args.mel_vocoder_phase_refinement_iters is not None else None)
    assemble(args.tokenizer, args.vocoder, args.output, overrides, args.mel_vocoder, mel_overrides)
    evaluation = evaluate_main(["--model", args.output, "--dataset_dir", args.corpus_dir, "--split", "test",
                                "--split_column", "split", "--waveform_clips", str(args.waveform_clips),
                                "--output", os.path.join(args.output, "eval_results.json")])
    licenses_src = os.path.join(args.corpus_dir, "licenses")
    licenses = sorted(os.listdir(licenses_src)) if os.path.isdir(licenses_src) else []
    if licenses:
        shutil.copytree(licenses_src, os.path.join(args.output, "licenses"), dirs_exist_ok=True)
    vocoder_metrics = None
    if args.vocoder_metrics and os.path.isfile(args.vocoder_metrics):
        with open(args.vocoder_metrics) as handle:
            vocoder_metrics = json.load(handle)
    notes = dict(item.split("=", 1) for item in args.note)
    runs = {}
    for path in args.training_logs:
        with open(path) as handle:
            logged = json.load(handle)
        if "final_eval" in logged:  # one run's log.json (pqvae_hf.packed_training), named by its folder
            runs[os.path.basename(os.path.dirname(os.path.abspath(path)))] = logged
        else:  # a stage summary of scripts/gpu_train.sh: {run name: run}
            runs.update({k: v for k, v in logged.items() if isinstance(v, dict) and "final_eval" in v})
    if runs:
        with open(os.path.join(args.output, "training_logs.json"), "w") as handle:
            json.dump(runs, handle, indent=1)
        for name, run in runs.items():
            final = {k: v for k, v in (run.get("final_eval") or {}).items()
                     if k in ("mel_l1", "composite_perplexity", "true_mel", "token_mel")}
            notes[f"run {name}"] = (f"{run.get('steps')} steps in {run.get('train_wall_time_s')} s,"
                                    f" validation at the end: {json.dumps(_rounded(final))}")
    model = PQVAEModel.from_pretrained(args.output)
    parameters = {"tokenizer parameters": sum(p.numel() for n, p in model.named_parameters()
                                              if not n.startswith(("vocoder.", "mel_vocoder."))),
                  "vocoder parameters": sum(p.numel() for p in model.vocoder.parameters())}
    if model.mel_vocoder is not None:
        parameters["mel vocoder parameters"] = sum(p.numel() for p in model.mel_vocoder.parameters())
    # The weights are trained on GPL / CC-BY-SA recordings: not simply Apache-2.0 (see "Data and licences").
    sections = _card_sections(evaluation, vocoder_metrics, licenses, notes)
    if args.codec_quality:
        with open(args.codec_quality) as handle:
            # Demote its headings one level so they sit under this card's own.
            sections += "\n\n" + handle.read().replace("\n## ", "\n### ").replace("# Codec quality", "## Codec quality", 1)
    write_model_card(args.output, model.config, model_name=os.path.basename(os.path.normpath(args.output)),
                     training={**parameters}, extra_sections=sections, license="other")
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(args.output) for f in files)
    print(f"wrote {args.output} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
