#!/usr/bin/env bash
# Re-creates checkpoints/pqvae-speech-small from scratch. The training stages need one CUDA GPU (they ran on one
# H100, about 9 minutes each); packing, assembling and evaluating run on the CPU.
# Usage: bash scripts/train_shipped_checkpoint.sh [CORPUS_DIR]
#
# 1. (CPU, ~5 min) Pack the train and validation splits into 11 kbit/s Opus shards (data/packed, 35 MB), so the corpus
#    can travel to a GPU machine; training reads it into GPU memory once.
# 2. (GPU, 470 s of training per run, run in parallel) scripts/gpu_train.sh stage1: four tokenizer variants (the
#    shipped architecture; 6 encoder + 8 decoder blocks; the same with codebook_dim=16; the same without dual
#    decoding) and two adversarial vocoders on true mel; the tokenizer with the lowest validation log-mel L1 and the
#    vocoder with the lowest validation mel L1 + multi-resolution STFT loss are chosen.
# 3. (GPU, 470 s) scripts/gpu_train.sh stage2: the chosen vocoder fine-tuned on mels decoded from the chosen
#    tokenizer's codes (70 % of examples) and true mels (30 %), with and without the adversarial losses.
# 4. (CPU) Merge tokenizer + vocoder, evaluate on the test split, write the model card.
#
# Runs stop on a time budget (BUDGET seconds), so the step counts depend on the GPU. The shipped run reached: tokenizer
# 4,866 steps (batch 32 x 2 s); stage-1 vocoder 1,301 adversarial steps; stage-2 vocoder 10,403 steps without and
# 3,203 with the adversarial losses (batch 32 x 1 s). The logs are in checkpoints/pqvae-speech-small/training_logs.json.
# On this project's 2-core CPU the same step counts would take many hours (pqvae_hf.packed_training runs there too,
# with --device cpu); use pqvae_hf.train (transformers.Trainer) for CPU-sized runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CORPUS=${1:-data/speech_corpus}
[ -f "$CORPUS/metadata.csv" ] || bash ../shared/data/fetch_speech_corpus.sh "$CORPUS"
export HF_HUB_OFFLINE=1
PY=.venv/bin/python

# 1. Pack.
[ -f data/packed/index.json ] || $PY -m pqvae_hf.packed_corpus --corpus_dir "$CORPUS" --output_dir data/packed \
  --splits validation train --bitrate 11k

# 2-3. Train on the GPU (this machine's own, or run these two lines on a GPU machine with data/packed copied there).
mkdir -p runs/gpu
PY=$PY bash scripts/gpu_train.sh stage1 runs/gpu/stage1
PY=$PY bash scripts/gpu_train.sh stage2 runs/gpu/stage2

# 4. Merge (tokenizer from stage 1, the stage-2 vocoder chosen on the validation split by
#    benchmarks/codec_quality.py), evaluate on the test split, write the model card.
VOCODER=${VOCODER:-runs/gpu/stage2/voc_final_no_gan}
$PY -m pqvae_hf.assemble_checkpoint --tokenizer runs/gpu/stage1/tokenizer --vocoder "$VOCODER" \
  --corpus_dir "$CORPUS" --output checkpoints/pqvae-speech-small \
  --training_logs runs/gpu/stage1/summary.json --training_logs runs/gpu/stage2/summary.json \
  --note "recipe=scripts/train_shipped_checkpoint.sh (pack on CPU, scripts/gpu_train.sh stage1 + stage2 on one H100, assemble)"
