#!/usr/bin/env bash
# Stage 3i: stage 3h continued 4,500 s at peak learning rate 4e-4, then vocoder 4j (4i fine-tuned 900 s on 3i's decoded
# mels), scored on validation beside the stop-26 shipped weights (runs/cand_tok24h_lr4e4: 3h + 4i). Needs the recipe's
# runs/cpu up to 3h / 4i (scripts/tokenizer_lr_ablation_3h.sh's runs). See scripts/tokenizer_stage_next.sh.
# Usage: bash scripts/tokenizer_stage_3i.sh [CORPUS_DIR]   (~100 min)
exec bash "$(dirname "$0")/tokenizer_stage_next.sh" i runs/cpu/tok_real_finetune24h runs/cpu/voc_tok24h_finetune \
  runs/cand_tok24h_lr4e4 benchmarks/results/codec_quality_validation_tok24h "$@"
