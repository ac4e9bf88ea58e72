#!/usr/bin/env bash
# The magnitude-prior ablation of the vocoder (issue 11), on the shipped tokenizer (stage 3d of
# scripts/train_shipped_checkpoint.sh) and starting from the shipped vocoder (stage 4e); needs that recipe's runs/cpu.
#   prior:   vocoder_magnitude_prior=mel_pseudo_inverse, magnitude rows zeroed (starts from the mel's pseudo-inverse
#            magnitude and the shipped vocoder's phase), 6,000 steps
#   control: the same 6,000 steps without the prior (what more training alone does)
# Each run is one thread (run both at once on two cores, ~80 min); then each vocoder is merged with the tokenizer into
# runs/cand_{prior,control}24c and scored on the validation split by benchmarks/codec_quality.py (its systems cache is
# benchmarks/results/codec_quality_validation), and the prior candidate by benchmarks/vocoder_diagnostics.py.
# Usage: bash scripts/vocoder_magnitude_prior_ablation.sh [CORPUS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/speech_corpus}
source scripts/vocoder_ablation_common.sh
vocoder() {  # OUTPUT EXTRA_ARGS...: 6,000 steps from the shipped vocoder unless EXTRA_ARGS say otherwise
  local out=$1; shift
  ablation_vocoder "$out" --max_steps 6000 --eval_steps 1500 --init_vocoder runs/cpu/voc_tok24c_finetune/vocoder "$@"
}
vocoder voc_prior24c --config_overrides vocoder_magnitude_prior=mel_pseudo_inverse --restart_magnitude_from_prior &
PRIOR=$!
vocoder voc_control24c
wait $PRIOR
# The prior run continued 1,600 steps on 90 % token-decoded mels (does more token data win back the tokens' score?).
vocoder voc_prior24c_tok90 --config_overrides vocoder_magnitude_prior=mel_pseudo_inverse \
  --init_vocoder runs/cpu/voc_prior24c/vocoder --max_steps 1600 --decoded_mel_fraction 0.9 --eval_steps 1600
for run in prior24c control24c prior24c_tok90; do
  merge_candidate "$run" f
done
# The shipped checkpoint merged the same way (its validation scores are cached under this name).
[ -f runs/cand_tok24c_ve/config.json ] || $PY -c "from pqvae_hf.assemble_checkpoint import assemble; \
assemble('runs/cpu/tok_real_finetune24c', 'runs/cpu/voc_tok24c_finetune', 'runs/cand_tok24c_ve')"
# Earlier candidates, where this machine still has them, share the table (their scores are cached).
EARLIER=()
for earlier in cand_tok24b_vd pqvae-speech-small-previous; do
  [ -f "runs/$earlier/config.json" ] && EARLIER+=(--checkpoint "runs/$earlier")
done
$PY benchmarks/codec_quality.py --corpus_dir "$CORPUS" --split validation --skip_baselines \
  --checkpoint runs/cand_tok24c_ve "${EARLIER[@]}" \
  --checkpoint runs/cand_prior24c --checkpoint runs/cand_control24c --checkpoint runs/cand_prior24c_tok90
$PY benchmarks/vocoder_diagnostics.py --corpus_dir "$CORPUS" --checkpoint runs/cand_prior24c \
  --output_dir benchmarks/results/vocoder_diagnostics/magnitude_prior
$PY benchmarks/recipe_ablation.py
