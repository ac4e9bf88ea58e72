#!/usr/bin/env bash
# Stage 3h: stage 3g (peak learning rate 2e-4, the winner of scripts/tokenizer_lr_ablation.sh) continued 4,500 s at
# 2e-4 against the same 4,500 s at 4e-4, one thread each, side by side, the recipe's settings otherwise. Each
# tokenizer with vocoder 4h (trained on 3g's mels) and with its own vocoder (4h fine-tuned 900 s on its mels), at the
# shipped post-filter factor 1.1, scored on the validation split (tokens -> neural vocoder) into
# benchmarks/results/codec_quality_validation_tok24h, with the stop-25 checkpoint (3g + 4h) beside them.
# Resumable: a finished run is skipped, a cut one continues.
# Needs the recipe's runs/cpu up to 3g / 4h.
# Usage: bash scripts/tokenizer_lr_ablation_3h.sh [CORPUS_DIR]   (~85 min)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/speech_corpus}
source scripts/vocoder_ablation_common.sh
RATES="2e-4 4e-4"
for rate in $RATES; do
  ablation_tokenizer "tok_lr${rate/-/}_24h" --init_from runs/cpu/tok_real_finetune24g --time_budget_s 4500 \
    --learning_rate "$rate" &
done
wait
# 4i: vocoder 4h fine-tuned 900 s on each new tokenizer's decoded mels (the recipe's vocoder step), side by side.
for rate in $RATES; do
  TOKENIZER=runs/cpu/tok_lr${rate/-/}_24h ablation_vocoder "voc_tok24h_lr${rate/-/}" \
    --init_vocoder runs/cpu/voc_tok24g_finetune/vocoder --max_steps 100000 --eval_steps 100000 --time_budget_s 900 \
    --config_overrides decoded_mel_contrast=1.0 &
done
wait
for rate in $RATES; do
  run=lr${rate/-/}
  keep_run_log "runs/cpu/tok_${run}_24h" "cpu_tok_${run}_24h" "cpu_tokenizer_24bit_h_$run"
  TOKENIZER=runs/cpu/tok_${run}_24h merge_candidate "tok24h_$run" h 1.1
  assemble_candidate "runs/cpu/tok_${run}_24h" runs/cpu/voc_tok24g_finetune "runs/cand_tok24h_${run}_vh" 1.1
done
# The stop-25 checkpoint (3g + 4h, factor 1.1), from git: the baseline they are scored beside.
STOP25=runs/pqvae-speech-small-stop25
[ -f $STOP25/model.safetensors ] || { mkdir -p $STOP25; git archive f53440f checkpoints/pqvae-speech-small | \
  tar -x -C $STOP25 --strip-components=2; }
score_tokens_on_validation benchmarks/results/codec_quality_validation_tok24h \
  benchmarks/results/codec_quality_validation_tok24g $STOP25 runs/cand_tok24h_lr2e4_vh runs/cand_tok24h_lr4e4_vh \
  runs/cand_tok24h_lr2e4 runs/cand_tok24h_lr4e4
