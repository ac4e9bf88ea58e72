#!/usr/bin/env bash
# The true-mel vocoder: a second neural vocoder for mels computed from real audio (not decoded from tokens).
# The token vocoder (shipped `vocoder`) is fine-tuned on the tokens' smoothed mels and loses to Griffin-Lim on true mels;
# the phase-refinement vocoder of scripts/vocoder_phase_refinement_ablation.sh (magnitude prior + Griffin-Lim
# projections trained end to end) beats Griffin-Lim on true mels but loses on the tokens. This continues that run
# (runs/cpu/voc_refine8_prior_24h) on true mels only (decoded_mel_fraction 0), 8 projections in training, one thread,
# the recipe's vocoder settings otherwise, into runs/cpu/voc_true_mel_refine8_prior. Resumable: a finished run is skipped.
# Usage: bash scripts/true_mel_vocoder.sh [SECONDS]   (~1 h with 3,600 s)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-3600}
TOKENIZER=runs/cpu/tok_lr4e4_24j  # unused with decoded_mel_fraction 0, but the vocoder trainer names one
source scripts/vocoder_ablation_common.sh
ablation_vocoder voc_true_mel_refine8_prior --init_vocoder runs/cpu/voc_refine8_prior_24h/vocoder --max_steps 100000 \
  --eval_steps 100000 --time_budget_s "$SECONDS_PER_RUN" --decoded_mel_fraction 0.0 \
  --config_overrides "decoded_mel_contrast=1.0,vocoder_phase_refinement_iters=8,vocoder_magnitude_prior=mel_pseudo_inverse"
keep_run_log runs/cpu/voc_true_mel_refine8_prior cpu_voc_true_mel_refine8_prior cpu_vocoder_true_mel_refine8_prior
