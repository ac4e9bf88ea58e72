#!/usr/bin/env bash
# Does a GAN on the decoded mel beat the L1-only decoder? The decoder predicts a flattened mel (what 16 bits per frame
# leave open, averaged); the shipped post-filter stretches it back by a fixed factor. Here a MelDiscriminator learns
# to tell decoded from true mels and the tokenizer gets its least-squares loss (weight 0.1) and feature matching
# (0.1) on top of the L1 loss (`packed_training tokenizer --mel_adversarial_weight`). Time-matched against its control
# "3g" (the same 2,400 s from 3f of scripts/train_shipped_checkpoint.sh, same settings, no GAN; the recipe's stage 3g
# until stop 24, since replaced there by a longer one) and "4h" (4g fine-tuned 900 s on the control's mels):
#   melgan24f + 4g (factor 1.0 and 1.1)   vs  3g + 4g (1.0 and 1.1)      the vocoder stage 4f->4g left as it was
#   melgan24f + 4g fine-tuned 900 s on its mels (1.1)  vs  3g + 4h (1.1)  each with the recipe's vocoder step
# all scored on the validation split (tokens -> neural vocoder) into benchmarks/results/codec_quality_validation_tok24f.
# Needs the recipe's runs/cpu up to 3f / 4g. Usage: bash scripts/mel_gan_ablation.sh [CORPUS_DIR]   (~60 min)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/speech_corpus}
TOKENIZER=runs/cpu/tok_melgan24f
source scripts/vocoder_ablation_common.sh
# The control: 3f continued 2,400 s without the GAN, and 4g fine-tuned 900 s on its mels.
ablation_tokenizer tok_real_finetune24f --time_budget_s 2400
TOKENIZER=runs/cpu/tok_real_finetune24f ablation_vocoder voc_tok24f_finetune \
  --init_vocoder runs/cpu/voc_tok24e_finetune/vocoder --time_budget_s 900 --max_steps 100000 --eval_steps 100000
ablation_tokenizer tok_melgan24f --time_budget_s 2400 \
  --mel_adversarial_weight 0.1 --mel_feature_matching_weight 0.1 --mel_adversarial_start_step 200
keep_run_log "$TOKENIZER" cpu_tok_melgan24f cpu_tokenizer_24bit_melgan
ablation_vocoder voc_melgan24f_finetune --init_vocoder runs/cpu/voc_tok24e_finetune/vocoder --time_budget_s 900 \
  --max_steps 100000 --eval_steps 100000
merge_candidate melgan24f_finetune j_melgan 1.1
# The GAN tokenizer and stage 3g, each with vocoder 4g (trained on 3f's mels) at both factors; 3g with 4h.
$PY - <<'EOF'
from pqvae_hf.assemble_checkpoint import assemble

for factor in (1.0, 1.1):
    assemble("runs/cpu/tok_melgan24f", "runs/cpu/voc_tok24e_finetune", f"runs/cand_melgan24f_vg_contrast{factor}",
             {"decoded_mel_contrast": factor})
    assemble("runs/cpu/tok_real_finetune24f", "runs/cpu/voc_tok24e_finetune", f"runs/cand_tok24f_vg_contrast{factor}",
             {"decoded_mel_contrast": factor})
assemble("runs/cpu/tok_real_finetune24f", "runs/cpu/voc_tok24f_finetune", "runs/cand_tok24f_vh",
         {"decoded_mel_contrast": 1.1})
EOF
score_tokens_on_validation benchmarks/results/codec_quality_validation_tok24f \
  benchmarks/results/codec_quality_validation_tok24e runs/cand_tok24f_vg_contrast1.0 runs/cand_tok24f_vg_contrast1.1 \
  runs/cand_tok24f_vh runs/cand_melgan24f_vg_contrast1.0 runs/cand_melgan24f_vg_contrast1.1 runs/cand_melgan24f_finetune
