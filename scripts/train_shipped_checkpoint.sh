#!/usr/bin/env bash
# Re-creates checkpoints/pqvae-speech-small from scratch on a 2-core CPU machine (about 2 h 30 min of wall time:
# the tokenizer and the first vocoder run were trained side by side, one thread each).
# Usage: bash scripts/train_shipped_checkpoint.sh [CORPUS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CORPUS=${1:-data/speech_corpus}
[ -f "$CORPUS/metadata.csv" ] || bash ../shared/data/fetch_speech_corpus.sh "$CORPUS"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=.venv/bin/python

# 1. Tokenizer: PQ 2 x 256, dual decoding, EMA + k-means init + dead-code restarts (config defaults), 3000 steps.
$PY -m pqvae_hf.train --do_train --do_eval --dataset_dir "$CORPUS" --split_column split --eval_split validation \
  --test_split test --output_dir checkpoints/pqvae-speech-small-run --max_steps 3000 --per_device_train_batch_size 16 \
  --per_device_eval_batch_size 8 --learning_rate 1e-3 --lr_scheduler_type cosine --warmup_steps 200 \
  --weight_decay 0.01 --logging_steps 50 --eval_strategy steps --eval_steps 500 --save_steps 500 \
  --save_total_limit 2 --crop_seconds 2.0 --report_to none --seed 0 --dataloader_num_workers 0 --disable_tqdm true &
TOKENIZER=$!

# 2. Vocoder, first run: mel + multi-resolution STFT losses on 120 min of the train split.
$PY -m pqvae_hf.vocoder_training --corpus_dir "$CORPUS" --output_dir checkpoints/vocoder-run --max_steps 6500 \
  --batch_size 16 --segment_seconds 1.0 --num_threads 1 --seed 0 --learning_rate 5e-4 --warmup_steps 200 \
  --grad_clip 10 --mel_weight 45 --stft_weight 5 --train_minutes 120
wait $TOKENIZER

# 3. Vocoder, fine-tuned with magnitude and phase-derivative terms on the whole train split.
$PY -m pqvae_hf.vocoder_training --corpus_dir "$CORPUS" --output_dir checkpoints/vocoder-run2 \
  --init_from checkpoints/vocoder-run/vocoder.safetensors --magnitude_weight 45 --phase_weight 10 \
  --learning_rate 3e-4 --warmup_steps 100 --grad_clip 500 --max_steps 10000 --max_train_minutes 30.5 \
  --batch_size 16 --segment_seconds 1.0 --train_minutes 0 --val_files 16 --val_every 300 --save_every 250 \
  --num_threads 1 --seed 0

# 4. Merge, evaluate on the test split, write the model card.
$PY -m pqvae_hf.assemble_checkpoint --tokenizer checkpoints/pqvae-speech-small-run \
  --vocoder checkpoints/vocoder-run2/vocoder.safetensors --vocoder_metrics checkpoints/vocoder-run2/vocoder_metrics.json \
  --corpus_dir "$CORPUS" --output checkpoints/pqvae-speech-small \
  --note "recipe=scripts/train_shipped_checkpoint.sh (all commands, in order)" \
  --note "tokenizer training=3000 steps, batch 16 x 2 s crops, 2671 s wall on 1 CPU thread (train split, 384 min)" \
  --note "vocoder training=6500 steps (2272 s) on 120 min of the train split, then 4817 fine-tuning steps (1830 s) on all of it, 1 CPU thread" \
  --note "tokenizer eval during training=trainer metrics in checkpoints/pqvae-speech-small-run/all_results.json"
