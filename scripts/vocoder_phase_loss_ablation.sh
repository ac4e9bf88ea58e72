#!/usr/bin/env bash
# The phase-loss ablation of the vocoder (issue 11): the magnitude-prior vocoder of
# scripts/vocoder_magnitude_prior_ablation.sh (runs/cpu/voc_prior24c_tok90, needs that script's runs) continued 4,000
# steps with the anti-wrapped instantaneous-frequency + group-delay losses of APNet (`--phase_weight`), at two weights.
# Its diagnosis was that on the true mel the prior vocoder's magnitude is as good as Griffin-Lim's and its phase is
# what loses; the magnitude-only losses leave the phase free.
# Each run is one thread (both at once on two cores, ~45 min); each vocoder is then merged with the tokenizer into
# runs/cand_phase{3,10}_24c and scored on the validation split by benchmarks/codec_quality.py (cached systems:
# benchmarks/results/codec_quality_validation).
# Usage: bash scripts/vocoder_phase_loss_ablation.sh [CORPUS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/speech_corpus}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
PY=.venv/bin/python
finished() { grep -q '"final_eval"' "$1/log.json" 2>/dev/null; }
phase_run() {  # WEIGHT
  local out=voc_phase$1_24c
  finished "runs/cpu/$out" || $PY -m pqvae_hf.packed_training vocoder \
    --pack_dir data/packed_flac --cache_dir runs/cpu/decoded24 --device cpu --num_workers 1 --max_steps 4000 \
    --decoded_mel_fraction 0.7 --adversarial_start_step 100000000 --batch_size 16 --segment_seconds 1.0 \
    --warmup_steps 50 --logging_steps 100 --eval_steps 1000 --eval_clips 64 \
    --output_dir "runs/cpu/$out" --tokenizer runs/cpu/tok_real_finetune24c \
    --config_overrides vocoder_magnitude_prior=mel_pseudo_inverse --init_vocoder runs/cpu/voc_prior24c_tok90/vocoder \
    --learning_rate 1e-4 --phase_weight "$1" > "runs/cpu/$out.log" 2>&1
}
phase_run 3 &
FIRST=$!
phase_run 10
wait $FIRST
for weight in 3 10; do
  $PY -c "from pqvae_hf.assemble_checkpoint import assemble; \
assemble('runs/cpu/tok_real_finetune24c', 'runs/cpu/voc_phase${weight}_24c', 'runs/cand_phase${weight}_24c')"
  $PY -c "import json; json.dump({'cpu_voc_phase${weight}_24c': json.load(open('runs/cpu/voc_phase${weight}_24c/log.json'))}, \
open('benchmarks/results/shipped_recipe/cpu_vocoder_g_phase${weight}.json', 'w'), indent=1)"
done
# The table keeps the shipped vocoder and the prior run this continues (scores cached by the prior ablation).
$PY benchmarks/codec_quality.py --corpus_dir "$CORPUS" --split validation --skip_baselines \
  --checkpoint runs/cand_tok24c_ve --checkpoint runs/cand_prior24c_tok90 \
  --checkpoint runs/cand_phase3_24c --checkpoint runs/cand_phase10_24c
$PY benchmarks/recipe_ablation.py
