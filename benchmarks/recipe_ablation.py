"""Ablation table of the shipped checkpoint's recipe: each training choice -> validation numbers and train time.

    .venv/bin/python benchmarks/recipe_ablation.py    # -> benchmarks/results/shipped_recipe/ablation.md

Reads what the recipe's runs wrote (committed in benchmarks/results/shipped_recipe/): the GPU stages' summaries
(`scripts/gpu_train.sh`, validation log-mel L1 on the packed, Opus-coded validation split), the CPU fine-tuning logs
(`pqvae_hf.packed_training` on the lossless pack) and the per-clip scores of `benchmarks/codec_quality.py --split
validation` for each candidate checkpoint (STOI, PESQ-WB and log-mel distance on the original validation files).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "shipped_recipe")
# Validation caches of benchmarks/codec_quality.py: the candidates' runs and scripts/mel_postfilter_sweep.sh's (the
# Codec2 / Opus systems appear in each; a system is read once, by name).
QUALITY = tuple(os.path.join(HERE, "results", name, "systems") for name in (
    "codec_quality_validation", "mel_postfilter_validation", "mel_postfilter_validation_tok24d",
    "vocoder_postfilter_training", "codec_quality_validation_tok24e", "codec_quality_validation_tok24f",
    "codec_quality_validation_tok24g", "codec_quality_validation_tok24h", "codec_quality_validation_refinement",
    "codec_quality_validation_refinement_b", "codec_quality_validation_tok24i",
    "codec_quality_validation_tok24j", "codec_quality_validation_tok24j_lr8e4"))
METRICS = ("stoi", "pesq_wb", "log_mel_db")
# What each candidate checkpoint folder (runs/cand_*, merged with pqvae_hf.assemble_checkpoint.assemble) holds; step
# numbers are those of scripts/train_shipped_checkpoint.sh.
CANDIDATES = {
    "pqvae-speech-small-previous": "the previous shipped checkpoint (git b69a51c): CPU-only, 3,000 steps + 1 h vocoder",
    "cand_s1gan": "step 2's GPU tokenizer + step 2's adversarial vocoder (both on the Opus pack)",
    "cand_gan": "step 2's GPU tokenizer + a longer GPU adversarial vocoder (scripts/gpu_train.sh stage2)",
    "cand_nogan": "step 2's GPU tokenizer + the same GPU vocoder without the GAN losses (stage2)",
    "cand_oldtok_va": "previous tokenizer + vocoder 4a (previous vocoder fine-tuned on its token-decoded mels)",
    "cand_newtok_va": "tokenizer 3 (GPU tokenizer fine-tuned on the 16-bit FLAC pack) + vocoder 4a",
    "cand_newtok_vb": "tokenizer 3 + vocoder 4b (4a fine-tuned on tokenizer 3's decoded mels)",
    "cand_tok24_vb": "tokenizer 3b (3 fine-tuned on the 24-bit pack) + vocoder 4b",
    "cand_tok24_vc": "tokenizer 3b + vocoder 4c (4b fine-tuned on 3b's decoded mels): shipped at stop 16",
    "cand_tok24b_vd": "tokenizer 3c (3b continued on the 24-bit pack) + vocoder 4d (4c fine-tuned on 3c's decoded"
                      " mels): shipped at stop 17",
    "cand_tok24c_ve": "tokenizer 3d (3c continued on the 24-bit pack) + vocoder 4e (4d fine-tuned on 3d's decoded"
                      " mels): shipped at stops 18-21",
    "cand_prior24c": "tokenizer 3d + vocoder 4e with the magnitude prior (vocoder_magnitude_prior=mel_pseudo_inverse,"
                     " magnitude rows zeroed) and 6,000 more steps (scripts/vocoder_magnitude_prior_ablation.sh):"
                     " not shipped",
    "cand_control24c": "tokenizer 3d + vocoder 4e with the same 6,000 more steps, no prior (the ablation's"
                       " control): not shipped",
    "cand_prior24c_tok90": "cand_prior24c's vocoder continued 1,600 steps on 90 % token-decoded mels: not shipped",
    "cand_phase3_24c": "cand_prior24c_tok90's vocoder continued 4,000 steps with APNet's phase-derivative losses,"
                       " weight 3 (scripts/vocoder_phase_loss_ablation.sh)",
    "cand_phase10_24c": "the same with phase-loss weight 10",
    "cand_outphase3_prior24c": "cand_prior24c_tok90's vocoder continued 4,000 steps with the phase losses on the output"
                               " waveform's phase (--phase_loss_on output), weight 3",
    "cand_outphase3_24c": "the shipped vocoder (4e, no prior) continued the same way",
    "cand_outphase3_prior24c_b": "cand_outphase3_prior24c's vocoder continued 4,000 more steps the same way",
    **{f"pqvae-speech-small_contrast{factor}": f"cand_tok24c_ve's weights (shipped at stops 18-21) with"
       f" decoded_mel_contrast={factor} (scripts/mel_postfilter_sweep.sh)" for factor in ("1.0", "1.1", "1.2", "1.3")},
    **{f"cand_tok24d_vf_contrast{factor}": f"tokenizer 3e (3d continued 4,200 s) + vocoder 4f (4e fine-tuned on 3e's"
       f" decoded mels), decoded_mel_contrast={factor}" + (": shipped at stop 22" if factor == "1.1" else "")
       for factor in ("1.0", "1.1")},
    "cand_postfilter11_finetune": "tokenizer 3e + vocoder 4f continued 900 s on token mels post-filtered with factor"
                                  " 1.1 (scripts/vocoder_postfilter_training_ablation.sh), merged with factor 1.1",
    "cand_postfilter10_finetune": "the same 900 s on raw token mels (its control), merged with factor 1.1",
    "cand_tok24e_vf": "tokenizer 3f (3e continued 3,900 s) + vocoder 4f (not yet fine-tuned on 3f's mels),"
                      " decoded_mel_contrast=1.1",
    **{f"cand_tok24e_vg_contrast{factor}": f"tokenizer 3f + vocoder 4g (4f fine-tuned 900 s on 3f's decoded mels),"
       f" decoded_mel_contrast={factor}" + (": shipped at stop 23" if factor == "1.1" else "")
       for factor in ("1.1", "1.2")},
    **{f"cand_tok24f_vg_contrast{factor}": f"3f continued 2,400 s at 1e-4 (the mel-GAN ablation's control, stage 3g"
       f" until stop 24) + vocoder 4g,"
       f" decoded_mel_contrast={factor}" for factor in ("1.0", "1.1")},
    "cand_tok24f_vh": "that tokenizer + 4g fine-tuned 900 s on its decoded mels, decoded_mel_contrast=1.1 (the mel-GAN"
                      " ablation's control)",
    **{f"cand_melgan24f_vg_contrast{factor}": f"3f continued 2,400 s like the control but with a GAN on the decoded mel"
       f" (scripts/mel_gan_ablation.sh) + vocoder 4g, decoded_mel_contrast={factor}: not shipped"
       for factor in ("1.0", "1.1")},
    "cand_melgan24f_finetune": "the mel-GAN tokenizer + vocoder 4g fine-tuned 900 s on its decoded mels (as for the"
                               " control), decoded_mel_contrast=1.1: not shipped",
    "pqvae-speech-small-stop23": "the stop-23 shipped checkpoint (git 463b01b): tokenizer 3f + vocoder 4g,"
                                 " decoded_mel_contrast=1.1 (the same weights as cand_tok24e_vg_contrast1.1)",
    "cand_tok24g_vg": "tokenizer 3g (3f continued 4,200 s at peak learning rate 2e-4) + vocoder 4g,"
                      " decoded_mel_contrast=1.1",
    "cand_tok24g_lr1e4_vg": "3f continued 4,200 s at 1e-4, the rate of stages 3b-3f"
                            " (scripts/tokenizer_lr_ablation.sh) + vocoder 4g, decoded_mel_contrast=1.1: not shipped",
    "cand_tok24g_vh": "tokenizer 3g + vocoder 4h (4g fine-tuned 900 s on 3g's decoded mels), decoded_mel_contrast=1.1:"
                      " the shipped checkpoint (stop 25)",
    "pqvae-speech-small-stop25": "the stop-25 shipped checkpoint (git f53440f): tokenizer 3g + vocoder 4h,"
                                 " decoded_mel_contrast=1.1 (the same weights as cand_tok24g_vh)",
    **{f"cand_tok24h_lr{rate}_vh": f"3g continued 4,500 s at peak learning rate {rate[0]}e-4"
       f" (scripts/tokenizer_lr_ablation_3h.sh) + vocoder 4h, decoded_mel_contrast=1.1" for rate in ("2e4", "4e4")},
    **{f"cand_tok24h_lr{rate}": f"the same tokenizer + 4h fine-tuned 900 s on its decoded mels,"
       f" decoded_mel_contrast=1.1" + (": tokenizer 3h + vocoder 4i, shipped at stop 26" if rate == "4e4" else "")
       for rate in ("2e4", "4e4")},
    "cand_refine8_24h": "tokenizer 3h + vocoder 4i continued with 8 Griffin-Lim projections unrolled after its network"
                        " (vocoder_phase_refinement_iters=8, scripts/vocoder_phase_refinement_ablation.sh),"
                        " decoded_mel_contrast=1.1",
    "cand_refine8_prior_24h": "the same with the magnitude prior (vocoder_magnitude_prior=mel_pseudo_inverse, magnitude"
                              " rows restarted from it)",
    **{f"cand_refine8_prior_24h_k{iters}": f"cand_refine8_prior_24h's weights run with {iters} projections at inference"
       f" (trained with 8)" for iters in (16, 32)},
    "cand_tok24i_vi": "tokenizer 3i (3h continued 4,500 s at peak learning rate 4e-4, scripts/tokenizer_stage_3i.sh)"
                      " + vocoder 4i, decoded_mel_contrast=1.1",
    "cand_tok24i_vj": "tokenizer 3i + vocoder 4j (4i fine-tuned 900 s on 3i's decoded mels), decoded_mel_contrast=1.1:"
                      " shipped at git e732ace (stop 28, replaced by 3j + 4k the same stop)",
    "cand_tok24j_vj": "tokenizer 3j (3i continued 4,500 s at peak learning rate 4e-4, scripts/tokenizer_stage_next.sh)"
                      " + vocoder 4j, decoded_mel_contrast=1.1",
    "cand_tok24j_vk": "tokenizer 3j + vocoder 4k (4j fine-tuned 900 s on 3j's decoded mels), decoded_mel_contrast=1.1:"
                      " shipped at stop 28",
    "cand_tok24j_lr8e4_vj": "tokenizer 3j at peak learning rate 8e-4 instead of 4e-4 (LEARNING_RATE=8e-4"
                            " scripts/tokenizer_stage_next.sh) + vocoder 4j, decoded_mel_contrast=1.1",
    "cand_refine8_prior_24h_b_k32": "cand_refine8_prior_24h's vocoder continued 1,500 s on 90 % token mels, run with 32"
                                    " projections",
}


def quality_table() -> list[str]:
    """Mean STOI / PESQ-WB / log-mel dB of every system in the validation cache, over clips all systems can score."""
    systems = {}
    for path in sorted(path for folder in QUALITY for path in glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as handle:
            data = json.load(handle)
        systems.setdefault(data["name"], data)
    if not systems:
        return ["(no codec_quality validation results found)"]
    common = {m: np.all([[v is not None for v in s["scores"][m]] for s in systems.values()], axis=0) for m in METRICS}
    lines = ["| system | bit/s | STOI | PESQ-WB | log-mel distance (dB) |", "|---|---|---|---|---|"]
    for name, data in sorted(systems.items(), key=lambda item: item[0]):
        means = [np.mean([v for v, keep in zip(data["scores"][m], common[m]) if keep]) for m in METRICS]
        rate = data.get("nominal_bits_per_second")
        lines.append(f"| {name} | {rate if rate else '-'} | {means[0]:.3f} | {means[1]:.2f} | {means[2]:.2f} |")
    counts = ", ".join(f"{m} {int(c.sum())}" for m, c in common.items())
    legend = [f"- `{name}`: {text}" for name, text in CANDIDATES.items()
              if any(f" {name}:" in system for system in systems)]
    return lines + ["", f"Clips every system could score: {counts} (of {len(common['log_mel_db'])}).", "",
                    "Candidates:", "", *legend]


def run_table() -> list[str]:
    lines = ["| run | where | steps | train s | validation at the end |", "|---|---|---|---|---|"]
    for path in sorted(glob.glob(os.path.join(RESULTS, "*.json"))):
        with open(path) as handle:
            runs = json.load(handle)
        where = os.path.splitext(os.path.basename(path))[0]
        for name, run in runs.items():
            if not isinstance(run, dict) or "final_eval" not in run:
                continue
            final = run["final_eval"] or {}
            if "mel_l1" in final:
                shown = f"log-mel L1 {final['mel_l1']:.4f}, composite perplexity {final['composite_perplexity']:,.0f}"
            else:
                shown = "; ".join(f"{kind}: mel L1 {v['mel_l1']:.3f}, MR-STFT {v['mr_stft']:.3f}"
                                  + (f", phase IF / GD error {v['inst_freq_error']:.3f} / {v['group_delay_error']:.3f}"
                                     if "inst_freq_error" in v else "")
                                  for kind, v in final.items() if isinstance(v, dict))
            lines.append(f"| {name} | {where} | {run.get('steps')} | {run.get('train_wall_time_s')} | {shown} |")
    return lines


def main() -> int:
    text = ["# Shipped checkpoint: what each recipe choice did (validation split)", "",
            "Generated by `benchmarks/recipe_ablation.py`. Tokenizer runs report log-mel L1 of decode(encode(x)) on the"
            " validation split as the training process saw it; `gpu_stage*` runs read the 11 kbit/s Opus pack, `cpu_*`"
            " runs the FLAC pack (16-bit for `cpu_tokenizer`, `cpu_vocoder_a`, `cpu_vocoder_b`; 24-bit for the `_24bit*` and"
            " `cpu_vocoder_c` / `_d` / `_e` / `_f_*` / `_g_*` / later runs: 16-bit rounding noise filled the empty 4-8 kHz band of 8 kHz recordings, so pack"
            " numbers of the 16-bit runs are not comparable with the original files). The quality table scores candidate checkpoints on the original"
            " validation files with `benchmarks/codec_quality.py --split validation`. Vocoder runs since `_g_*` also report the"
            " anti-wrapped instantaneous-frequency / group-delay errors of the network's predicted phase (radians,"
            " `PhaseDerivativeLoss`; the output waveform's phase is scored by `benchmarks/vocoder_diagnostics.py`).", "",
            "## Training runs", "", *run_table(), "", "## Candidate checkpoints and baselines (original audio)", "",
            *quality_table(), ""]
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "ablation.md"), "w") as handle:
        handle.write("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
