#!/usr/bin/env bash
# Is the CPU stages' peak learning rate (1e-4 since stage 3b) too cautious? Stage 3g of
# scripts/train_shipped_checkpoint.sh (3f continued 4,200 s at 2e-4, the winner, shipped) against the same 4,200 s
# from 3f at 1e-4, the rate of stages 3b-3f (same settings otherwise, one thread each; the two ran side by side).
# Each tokenizer with vocoder 4g (trained on 3f's mels) at the shipped post-filter factor 1.1, scored on the
# validation split (tokens -> neural vocoder) into benchmarks/results/codec_quality_validation_tok24g, with the
# stop-23 checkpoint (3f + 4g) beside them.
# Needs the recipe's runs/cpu up to 3g / 4g. (As run at stop 25, both tokenizers started from the stop-23 checkpoint
# folder, which holds 3f's weights, into runs/cpu/tok_lr2e4_24g and tok_real_finetune24g (the 1e-4 one), and
# vocoder 4g was read from that folder too.)
# Usage: bash scripts/tokenizer_lr_ablation.sh [CORPUS_DIR]   (~80 min)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/speech_corpus}
source scripts/vocoder_ablation_common.sh
ablation_tokenizer tok_lr1e4_24g --time_budget_s 4200 --learning_rate 1e-4
keep_run_log runs/cpu/tok_lr1e4_24g cpu_tok_lr1e4_24g cpu_tokenizer_24bit_g_lr1e4
$PY - <<'EOF'
from pqvae_hf.assemble_checkpoint import assemble

for tokenizer, candidate in (("tok_real_finetune24g", "cand_tok24g_vg"),
                              ("tok_lr1e4_24g", "cand_tok24g_lr1e4_vg")):
    assemble(f"runs/cpu/{tokenizer}", "runs/cpu/voc_tok24e_finetune", f"runs/{candidate}",
             {"decoded_mel_contrast": 1.1})
EOF
# The stop-23 checkpoint (3f + 4g, factor 1.1), from git: the baseline both are scored beside.
STOP23=runs/pqvae-speech-small-stop23
[ -f $STOP23/model.safetensors ] || { mkdir -p $STOP23; git archive 463b01b checkpoints/pqvae-speech-small | \
  tar -x -C $STOP23 --strip-components=2; }
score_tokens_on_validation benchmarks/results/codec_quality_validation_tok24g \
  benchmarks/results/codec_quality_validation_tok24f $STOP23 runs/cand_tok24g_lr1e4_vg runs/cand_tok24g_vg
