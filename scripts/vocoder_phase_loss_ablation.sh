#!/usr/bin/env bash
# The phase-loss ablation of the vocoder (issue 11). Its diagnosis was that on the true mel the magnitude-prior
# vocoder's magnitude is as good as Griffin-Lim's and its phase is what loses; the magnitude-only losses leave the
# phase free. Four runs of 4,000 steps add APNet's instantaneous-frequency + group-delay losses (`--phase_weight`):
#   phase3 / phase10:          on the predicted phase, weight 3 / 10, from the prior vocoder
#                              (runs/cpu/voc_prior24c_tok90 of scripts/vocoder_magnitude_prior_ablation.sh)
#   outphase3_prior24c:        on the output waveform's phase (--phase_loss_on output), weight 3, from the same
#   outphase3_24c:             the same from the shipped vocoder (stage 4e, no prior)
#   outphase3_prior24c_b:      outphase3_prior24c continued 4,000 more steps the same way (does it keep improving?)
# Each run is one thread (two at once on two cores, ~45 min); each vocoder is then merged with the tokenizer into
# runs/cand_<run> and scored on the validation split by benchmarks/codec_quality.py (cached systems:
# benchmarks/results/codec_quality_validation).
# Usage: bash scripts/vocoder_phase_loss_ablation.sh [CORPUS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/speech_corpus}
source scripts/vocoder_ablation_common.sh
phase_run() {  # OUTPUT INIT_VOCODER_RUN EXTRA_ARGS...: 4,000 steps
  local out=$1 init=$2; shift 2
  ablation_vocoder "$out" --max_steps 4000 --eval_steps 1000 --init_vocoder "runs/cpu/$init/vocoder" "$@"
}
PRIOR="--config_overrides vocoder_magnitude_prior=mel_pseudo_inverse"
phase_run voc_phase3_24c voc_prior24c_tok90 $PRIOR --phase_weight 3 &
FIRST=$!
phase_run voc_phase10_24c voc_prior24c_tok90 $PRIOR --phase_weight 10
wait $FIRST
phase_run voc_outphase3_prior24c voc_prior24c_tok90 $PRIOR --phase_weight 3 --phase_loss_on output &
FIRST=$!
phase_run voc_outphase3_24c voc_tok24c_finetune --phase_weight 3 --phase_loss_on output
wait $FIRST
phase_run voc_outphase3_prior24c_b voc_outphase3_prior24c $PRIOR --phase_weight 3 --phase_loss_on output --eval_steps 2000
for run in phase3_24c phase10_24c outphase3_prior24c outphase3_24c outphase3_prior24c_b; do
  merge_candidate "$run" g
done
# The table keeps the shipped vocoder and the prior run this continues (scores cached by the prior ablation).
$PY benchmarks/codec_quality.py --corpus_dir "$CORPUS" --split validation --skip_baselines \
  --checkpoint runs/cand_tok24c_ve --checkpoint runs/cand_prior24c_tok90 \
  --checkpoint runs/cand_phase3_24c --checkpoint runs/cand_phase10_24c --checkpoint runs/cand_outphase3_prior24c \
  --checkpoint runs/cand_outphase3_24c --checkpoint runs/cand_outphase3_prior24c_b
$PY benchmarks/vocoder_diagnostics.py --corpus_dir "$CORPUS" --checkpoint runs/cand_phase10_24c \
  --output_dir benchmarks/results/vocoder_diagnostics/phase_loss
$PY benchmarks/vocoder_diagnostics.py --corpus_dir "$CORPUS" --checkpoint runs/cand_outphase3_prior24c \
  --output_dir benchmarks/results/vocoder_diagnostics/phase_loss_output
$PY benchmarks/recipe_ablation.py
