#!/usr/bin/env bash
# The true-mel vocoder: a second neural vocoder for mels computed from real audio (not decoded from tokens;
# config.mel_vocoder, PQVAEModel.vocode_mel). The token vocoder (the shipped `vocoder`) is fine-tuned on the tokens'
# smoothed mels and loses to Griffin-Lim on true mels; the phase-refinement vocoder of
# scripts/vocoder_phase_refinement_ablation.sh (magnitude prior + Griffin-Lim projections trained end to end) beats
# Griffin-Lim on true mels but loses on the tokens. This continues that run (runs/cpu/voc_refine8_prior_24h) on true
# mels only (decoded_mel_fraction 0), 8 projections in training, one thread, the recipe's vocoder settings otherwise,
# into runs/cpu/voc_true_mel_refine8_prior; merges it as the mel vocoder beside TOKENIZER and VOCODER (default: stages
# 3j and 4k, shipped when it was run at stop 29; the true-mel scores do not depend on them) with 32 projections at
# inference into runs/cand_true_mel_vocoder; and scores true mel ->
# neural mel vocoder and -> Griffin-Lim on the validation split, beside the run it started from (cached scores of
# runs/cand_refine8_prior_24h_k32), into benchmarks/results/codec_quality_validation_true_mel_vocoder.
# Resumable: a finished run is skipped, cached scores are reused.
# Usage: bash scripts/true_mel_vocoder.sh [SECONDS] [CORPUS_DIR]   (~1 h 15 min with 3,600 s)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-3600}
CORPUS=${2:-data/speech_corpus}
TOKENIZER=${TOKENIZER:-runs/cpu/tok_lr4e4_24j}
VOCODER=${VOCODER:-runs/cpu/voc_tok24j_finetune}
source scripts/vocoder_ablation_common.sh
ablation_vocoder voc_true_mel_refine8_prior --init_vocoder runs/cpu/voc_refine8_prior_24h/vocoder --max_steps 100000 \
  --eval_steps 100000 --time_budget_s "$SECONDS_PER_RUN" --decoded_mel_fraction 0.0 \
  --config_overrides "decoded_mel_contrast=1.0,vocoder_phase_refinement_iters=8,vocoder_magnitude_prior=mel_pseudo_inverse"
keep_run_log runs/cpu/voc_true_mel_refine8_prior cpu_voc_true_mel_refine8_prior cpu_vocoder_true_mel_refine8_prior
$PY -c "from pqvae_hf.assemble_checkpoint import assemble; assemble('$TOKENIZER', '$VOCODER', \
'runs/cand_true_mel_vocoder', {'decoded_mel_contrast': 1.1}, 'runs/cpu/voc_true_mel_refine8_prior', \
{'mel_vocoder_phase_refinement_iters': 32})"
OUT=benchmarks/results/codec_quality_validation_true_mel_vocoder
mkdir -p $OUT/systems
cp -n benchmarks/results/codec_quality_validation_refinement/systems/{Codec2,Opus}_*.json \
  benchmarks/results/codec_quality_validation_refinement/systems/ceiling_cand_refine8_prior_24h_k32__*.json \
  $OUT/systems/ 2>/dev/null || true
$PY benchmarks/codec_quality.py --corpus_dir "$CORPUS" --split validation --skip_baselines \
  --num_workers "${NUM_WORKERS:-2}" --checkpoint_inputs true_mel --checkpoint_vocoders neural griffin_lim \
  --output_dir $OUT --checkpoint runs/cand_refine8_prior_24h_k32 --checkpoint runs/cand_true_mel_vocoder
$PY benchmarks/recipe_ablation.py > /dev/null
