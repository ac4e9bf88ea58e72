#!/usr/bin/env bash
# Does the vocoder gain from learning on post-filtered token mels? Since decoded_mel_contrast=1.1 shipped, `decode`
# feeds the vocoder band-stretched mels, while stage 4f learnt from the tokenizer's raw ones. Two 900 s runs from the
# shipped vocoder (4f) on the shipped tokenizer's (3e) decoded mels, the shipped recipe's settings otherwise:
#   postfilter11_finetune:  token mels post-filtered with factor 1.1 (--config_overrides decoded_mel_contrast=1.1)
#   postfilter10_finetune:  the control, raw token mels (factor 1.0): the same extra training without the post-filter
# Both are merged with factor 1.1 (what decode applies) and scored on the validation split, tokens -> neural vocoder
# and true mel -> neural vocoder (Griffin-Lim does not change with the vocoder), into
# benchmarks/results/vocoder_postfilter_training. Runs need scripts/train_shipped_checkpoint.sh's runs/cpu.
# (As run, both started from checkpoints/pqvae-speech-small: the same tokenizer and vocoder weights as 3e's and 4f's runs.)
# Usage: bash scripts/vocoder_postfilter_training_ablation.sh [CORPUS_DIR]     (~35 min: the two runs one after another)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/speech_corpus}
TOKENIZER=runs/cpu/tok_real_finetune24d
source scripts/vocoder_ablation_common.sh
for factor in 1.1 1.0; do
  run="postfilter${factor/./}_finetune"  # postfilter11_finetune, postfilter10_finetune
  ablation_vocoder "voc_$run" --init_vocoder runs/cpu/voc_tok24d_finetune/vocoder \
    --time_budget_s 900 --max_steps 100000 --eval_steps 100000 --config_overrides "decoded_mel_contrast=$factor"
  merge_candidate "$run" h 1.1
done
# The shipped weights' and Codec2's rows come from the post-filter sweep's cache (same clips, same folder).
mkdir -p benchmarks/results/vocoder_postfilter_training/systems
cp -n benchmarks/results/mel_postfilter_validation_tok24d/systems/{*cand_tok24d_vf_contrast1.1*neural*,Codec2_*} \
  benchmarks/results/vocoder_postfilter_training/systems/ 2>/dev/null || true
$PY benchmarks/codec_quality.py --corpus_dir "$CORPUS" --split validation --skip_baselines --num_workers ${NUM_WORKERS:-2} \
  --checkpoint_vocoders neural --output_dir benchmarks/results/vocoder_postfilter_training \
  --checkpoint runs/mel_postfilter/cand_tok24d_vf_contrast1.1 \
  --checkpoint runs/cand_postfilter11_finetune --checkpoint runs/cand_postfilter10_finetune
$PY benchmarks/recipe_ablation.py
