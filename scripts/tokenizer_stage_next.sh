#!/usr/bin/env bash
# One more tokenizer stage of the recipe, scored on validation: the previous tokenizer continued TIME_BUDGET_S seconds
# (default 4,500) at peak learning rate LEARNING_RATE (default 4e-4, the rate that won
# scripts/tokenizer_lr_ablation_3h.sh), one thread, the recipe's 24-bit-pack settings otherwise, into
# runs/cpu/tok_lr4e4_24<STAGE> (another rate: its own names throughout, e.g. tok_lr8e4_24<STAGE>, runs/cand_tok24<STAGE>_lr8e4_v*). It is scored on the validation split
# (tokens -> neural vocoder, decoded_mel_contrast 1.1) with the previous vocoder as it is (runs/cand_tok24<STAGE>_v<STAGE>),
# then with that vocoder fine-tuned 900 s on the new tokenizer's decoded mels (runs/cpu/voc_tok24<STAGE>_finetune,
# runs/cand_tok24<STAGE>_v<next letter>), beside BASELINE_CANDIDATE (the shipped weights), into
# benchmarks/results/codec_quality_validation_tok24<STAGE>. Resumable: a finished run is skipped, a cut tokenizer
# continues, cached scores are reused.
# Usage: bash scripts/tokenizer_stage_next.sh STAGE PREV_TOKENIZER PREV_VOCODER BASELINE_CANDIDATE BASELINE_RESULTS \
#          [CORPUS_DIR]   (~100 min)
# e.g. stage 3j: bash scripts/tokenizer_stage_next.sh j runs/cpu/tok_lr4e4_24i runs/cpu/voc_tok24i_finetune \
#          runs/cand_tok24i_vj benchmarks/results/codec_quality_validation_tok24i
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=$1 PREV_TOKENIZER=$2 PREV_VOCODER=$3 BASELINE=$4 BASELINE_RESULTS=$5
CORPUS=${6:-data/speech_corpus}
TIME_BUDGET_S=${TIME_BUDGET_S:-4500}
LEARNING_RATE=${LEARNING_RATE:-4e-4}
RATE=${LEARNING_RATE//-/}  # 4e4
VARIANT=$([ "$LEARNING_RATE" = 4e-4 ] || echo "_lr$RATE")  # the recipe's rate keeps the recipe's names
NEXT=$(echo "$STAGE" | tr 'a-y' 'b-z')  # the vocoder fine-tuned on stage 3<x> is 4<x+1>
TOKENIZER=runs/cpu/tok_lr${RATE}_24$STAGE
CANDIDATE=runs/cand_tok24$STAGE$VARIANT
VOCODER=voc_tok24$STAGE${VARIANT}_finetune
OUT=benchmarks/results/codec_quality_validation_tok24$STAGE$VARIANT
source scripts/vocoder_ablation_common.sh
mkdir -p $OUT/systems
cp -n "$BASELINE_RESULTS/systems/PQ-VAE_$(basename "$BASELINE")__tokens_-__neural_vocoder.json" $OUT/systems/ \
  2>/dev/null || true
ablation_tokenizer "tok_lr${RATE}_24$STAGE" --init_from "$PREV_TOKENIZER" --time_budget_s "$TIME_BUDGET_S" \
  --learning_rate "$LEARNING_RATE"
keep_run_log $TOKENIZER "cpu_tok_lr${RATE}_24$STAGE" "cpu_tokenizer_24bit_${STAGE}_lr$RATE"
assemble_candidate $TOKENIZER "$PREV_VOCODER" "${CANDIDATE}_v$STAGE" 1.1
score_tokens_on_validation $OUT "$BASELINE_RESULTS" "$BASELINE" "${CANDIDATE}_v$STAGE"
ablation_vocoder $VOCODER --init_vocoder "$PREV_VOCODER/vocoder" --max_steps 100000 --eval_steps 100000 \
  --time_budget_s 900 --config_overrides decoded_mel_contrast=1.0
keep_run_log runs/cpu/$VOCODER "cpu_$VOCODER" "cpu_vocoder_${STAGE}_tok24$STAGE$VARIANT"
assemble_candidate $TOKENIZER runs/cpu/$VOCODER "${CANDIDATE}_v$NEXT" 1.1
score_tokens_on_validation $OUT "$BASELINE_RESULTS" "$BASELINE" "${CANDIDATE}_v$STAGE" "${CANDIDATE}_v$NEXT"
