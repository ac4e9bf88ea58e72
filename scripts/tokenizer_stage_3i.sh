#!/usr/bin/env bash
# Stage 3i: stage 3h continued 4,500 s at peak learning rate 4e-4 (the rate that won scripts/tokenizer_lr_ablation_3h.sh),
# one thread, the recipe's settings otherwise. Scored on the validation split (tokens -> neural vocoder, factor 1.1)
# with vocoder 4i as it is (cand_tok24i_vi), then with 4i fine-tuned 900 s on 3i's decoded mels (vocoder 4j,
# cand_tok24i_vj), beside the shipped checkpoint (runs/cand_tok24h_lr4e4: 3h + 4i), into
# benchmarks/results/codec_quality_validation_tok24i. Resumable: a finished run is skipped, a cut tokenizer continues.
# Needs the recipe's runs/cpu up to 3h / 4i (scripts/tokenizer_lr_ablation_3h.sh's runs).
# Usage: bash scripts/tokenizer_stage_3i.sh [CORPUS_DIR]   (~100 min)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/speech_corpus}
TOKENIZER=runs/cpu/tok_lr4e4_24i
source scripts/vocoder_ablation_common.sh
OUT=benchmarks/results/codec_quality_validation_tok24i
score() {  # CHECKPOINT...: tokens -> neural vocoder on validation, beside the shipped weights (scores cached)
  mkdir -p $OUT/systems
  cp -n benchmarks/results/codec_quality_validation_tok24h/systems/{Codec2,Opus}_*.json \
    benchmarks/results/codec_quality_validation_tok24h/systems/PQ-VAE_cand_tok24h_lr4e4__tokens_-__neural_vocoder.json \
    $OUT/systems/ 2>/dev/null || true
  score_tokens_on_validation $OUT benchmarks/results/codec_quality_validation_tok24h runs/cand_tok24h_lr4e4 "$@"
}
ablation_tokenizer tok_lr4e4_24i --init_from runs/cpu/tok_real_finetune24h --time_budget_s 4500 --learning_rate 4e-4
keep_run_log $TOKENIZER cpu_tok_lr4e4_24i cpu_tokenizer_24bit_i_lr4e4
assemble_candidate $TOKENIZER runs/cpu/voc_tok24h_finetune runs/cand_tok24i_vi 1.1
score runs/cand_tok24i_vi
# 4j: vocoder 4i fine-tuned 900 s on 3i's decoded mels (the recipe's vocoder step).
ablation_vocoder voc_tok24i_finetune --init_vocoder runs/cpu/voc_tok24h_finetune/vocoder --max_steps 100000 \
  --eval_steps 100000 --time_budget_s 900 --config_overrides decoded_mel_contrast=1.0
keep_run_log runs/cpu/voc_tok24i_finetune cpu_voc_tok24i_finetune cpu_vocoder_i_tok24i
assemble_candidate $TOKENIZER runs/cpu/voc_tok24i_finetune runs/cand_tok24i_vj 1.1
score runs/cand_tok24i_vi runs/cand_tok24i_vj
