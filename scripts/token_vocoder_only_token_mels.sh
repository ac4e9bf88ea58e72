#!/usr/bin/env bash
# With true mels rendered by their own vocoder (config.mel_vocoder, scripts/true_mel_vocoder.sh), the token vocoder
# (`vocoder`, what `decode` uses) no longer has to render true mels at all. Does it do better on the tokens trained on
# token mels only? The recipe's vocoder stages train on 70 % token mels and 30 % true mels. This repeats stage 4k
# (vocoder 4j fine-tuned on tokenizer 3j's decoded mels, one thread, decoded_mel_contrast=1.0; its 900 s gave 1,307
# steps, and this runs the same 1,307 steps whatever the machine's load) with decoded_mel_fraction 1.0 into runs/cpu/voc_tok24j_tokonly, merges it with 3j (post-filter 1.1, as shipped) into
# runs/cand_tok24j_vk_tokonly and scores tokens -> neural vocoder on the validation split beside 3j + 4k
# (runs/cand_tok24j_vk, whose scores are cached) into benchmarks/results/codec_quality_validation_tok24j_tokonly.
# Resumable: a finished run is skipped, cached scores are reused.
# Usage: bash scripts/token_vocoder_only_token_mels.sh [CORPUS_DIR]   (~25 min)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/speech_corpus}
TOKENIZER=runs/cpu/tok_lr4e4_24j
source scripts/vocoder_ablation_common.sh
ablation_vocoder voc_tok24j_tokonly --init_vocoder runs/cpu/voc_tok24i_finetune/vocoder --max_steps 1307 \
  --eval_steps 100000 --time_budget_s 3000 --decoded_mel_fraction 1.0 --config_overrides decoded_mel_contrast=1.0
keep_run_log runs/cpu/voc_tok24j_tokonly cpu_voc_tok24j_tokonly cpu_vocoder_k_tok24j_tokonly
assemble_candidate $TOKENIZER runs/cpu/voc_tok24j_tokonly runs/cand_tok24j_vk_tokonly 1.1
OUT=benchmarks/results/codec_quality_validation_tok24j_tokonly
mkdir -p $OUT/systems
cp -n benchmarks/results/codec_quality_validation_tok24j/systems/PQ-VAE_cand_tok24j_vk__tokens_-__neural_vocoder.json \
  $OUT/systems/ 2>/dev/null || true
score_tokens_on_validation $OUT benchmarks/results/codec_quality_validation_tok24j runs/cand_tok24j_vk \
  runs/cand_tok24j_vk_tokonly
