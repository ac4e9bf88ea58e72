#!/usr/bin/env bash
# Re-creates checkpoints/pqvae-speech-small. Stage 2 needs one CUDA GPU (it ran on one H100); everything else runs on
# this project's 2-core CPU, one thread per process. Usage: bash scripts/train_shipped_checkpoint.sh [CORPUS_DIR]
#
# 1. (CPU, ~5 min) Pack the train/validation splits as 11 kbit/s Opus shards (data/packed, 35 MB: small enough to
#    travel to a GPU machine) and as FLAC: data/packed_flac16 (16-bit, what steps 3, 4a and 4b ran on) and
#    data/packed_flac (24-bit, 560 MB; see 3b).
# 2. (GPU, 470 s of training) scripts/gpu_train.sh stage1: four tokenizer variants side by side (the previous
#    architecture; 6 encoder + 8 decoder blocks; the same with codebook_dim=16; the same without dual decoding) and two
#    adversarial vocoders. The tokenizer with the lowest validation log-mel L1 (6+8 blocks, codebook_dim=16) is kept.
#    Its vocoders are not shipped: trained on Opus-coded audio, they lose to the previous vocoder on real audio.
# 3. (CPU, 2,400 s) That tokenizer fine-tuned on the lossless train split: Opus fills 6.5-8 kHz with noise that the
#    real recordings do not have; 1,526 steps bring validation log-mel L1 on the pack to 0.443.
# 3b. (CPU, 1,200 s) The same on the 24-bit pack: at 16 bits the rounding noise fills the empty 4-8 kHz band of the
#    8 kHz recordings, so after step 3 the tokenizer decoded that noise floor and scored log-mel L1 0.97 on the
#    original validation files (0.44 on the pack); this step teaches it the true floor.
# 3c. (CPU, 2,700 s) 3b continued on the 24-bit pack: validation log-mel L1 on the pack 0.485 -> 0.470.
# 3d. (CPU, 2,700 s) 3c continued the same way (its training loss was still falling): 0.470 -> 0.462.
# 3e. (CPU, 4,200 s) 3d continued once more, one longer schedule: 0.462 -> 0.450.
# 3f. (CPU, 3,900 s) 3e continued the same way: 0.450 -> 0.443.
# 3g. (CPU, 4,200 s) 3f continued the same way at peak learning rate 2e-4 (was 1e-4): 0.443 -> 0.438.
# 4. (CPU, 1,800 s + 2,100 s + 600 s + 900 s x 5, 4a beside 3) The previous checkpoint's vocoder fine-tuned on mels
#    decoded from tokens (70 % of examples; 30 % true mels): on the previous tokenizer's codes (4a), then on step 3's
#    (4b), then on step 3b's on the 24-bit pack (4c), then on 3c's (4d), 3d's (4e), 3e's (4f), 3f's (4g), 3g's (4h).
#    Stages 3h-3k and 4i-4l continue the same way (comments at each below).
# M.  (CPU, 3,600 s + 3,600 s) The mel vocoder for true mels (config.mel_vocoder): 4i with the magnitude prior trained
#    through 8 Griffin-Lim projections, then on true mels only; 32 projections at inference.
# 5. (CPU) Merge with the decoded mel's post-filter factor chosen on validation (decoded_mel_contrast=1.1,
#    scripts/mel_postfilter_sweep.sh), evaluate on the test split, write the model card.
# Runs stop on a time budget, so step counts depend on the machine; the shipped run's are in training_logs.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CORPUS=${1:-data/speech_corpus}
[ -f "$CORPUS/metadata.csv" ] || bash ../shared/data/fetch_speech_corpus.sh "$CORPUS"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
PY=.venv/bin/python
TRAIN="$PY -m pqvae_hf.packed_training"
mkdir -p runs/gpu runs/cpu

# 1. Pack.
[ -f data/packed/index.json ] || $PY -m pqvae_hf.packed_corpus --corpus_dir "$CORPUS" --output_dir data/packed \
  --splits validation train --bitrate 11k
[ -f data/packed_flac16/index.json ] || $PY -m pqvae_hf.packed_corpus --corpus_dir "$CORPUS" \
  --output_dir data/packed_flac16 --splits validation train --codec flac --pcm_bits 16 --num_shards 4
[ -f data/packed_flac/index.json ] || $PY -m pqvae_hf.packed_corpus --corpus_dir "$CORPUS" \
  --output_dir data/packed_flac --splits validation train --codec flac --pcm_bits 24 --num_shards 4

# 2. GPU stage (on this machine if it has CUDA; else copy data/packed and .whl/ to a GPU machine, run
#    `bash scripts/gpu_train.sh stage1 OUT` there and copy OUT back to runs/gpu/stage1).
[ -f runs/gpu/stage1/summary.json ] || PY=$PY bash scripts/gpu_train.sh stage1 runs/gpu/stage1

# The previous checkpoint (its vocoder starts stage 4), from git history: needs a full clone, not a shallow one.
[ -f runs/previous_model.safetensors ] || \
  git show b69a51c:checkpoints/pqvae-speech-small/model.safetensors > runs/previous_model.safetensors

# A finished run has "final_eval" in its log.json; re-running the recipe skips it. A cut tokenizer run continues from
# its training_state.pt (--resume); a cut vocoder run starts again.
finished() { grep -q '"final_eval"' "$1/log.json" 2>/dev/null; }
COMMON="--pack_dir data/packed_flac16 --cache_dir runs/cpu/decoded --device cpu --num_workers 1 --max_steps 100000"
# 3. Tokenizer on real audio (one thread) ...
finished runs/cpu/tok_real_finetune || \
  $TRAIN tokenizer $COMMON --resume --output_dir runs/cpu/tok_real_finetune --init_from runs/gpu/stage1/tokenizer \
  --time_budget_s 2400 --batch_size 16 --crop_seconds 2.0 --learning_rate 3e-4 --warmup_steps 100 \
  --logging_steps 100 --eval_steps 1000 &
TOKENIZER=$!
# 4a. ... beside the vocoder on the previous tokenizer's decoded mels (the other thread).
mkdir -p runs/previous && cp runs/previous_model.safetensors runs/previous/model.safetensors
git show b69a51c:checkpoints/pqvae-speech-small/config.json > runs/previous/config.json
VOCODER_ARGS="--decoded_mel_fraction 0.7 --adversarial_start_step 100000000 --batch_size 16 --segment_seconds 1.0 \
  --warmup_steps 50 --logging_steps 100 --eval_steps 100000 --eval_clips 64"
finished runs/cpu/voc_shipped_tok_finetune || \
  $TRAIN vocoder $COMMON $VOCODER_ARGS --output_dir runs/cpu/voc_shipped_tok_finetune --tokenizer runs/previous \
  --init_vocoder runs/previous_model.safetensors --time_budget_s 1800 --learning_rate 2e-4
wait $TOKENIZER
# 4b. The vocoder continued on the new tokenizer's decoded mels.
finished runs/cpu/voc_new_tok_finetune || \
  $TRAIN vocoder $COMMON $VOCODER_ARGS --output_dir runs/cpu/voc_new_tok_finetune \
  --tokenizer runs/cpu/tok_real_finetune \
  --init_vocoder runs/cpu/voc_shipped_tok_finetune/vocoder --time_budget_s 2100 --learning_rate 1.5e-4

# Stages 3b-3d and 4c-4e all run on the 24-bit pack and differ only in the run they continue and their time budget.
# tokenizer24 OUTPUT INIT_FROM SECONDS [LEARNING_RATE]: the tokenizer continued (its final evaluation also reads the
# original validation files; peak learning rate 1e-4 unless given). vocoder24 OUTPUT TOKENIZER INIT_VOCODER SECONDS:
# the vocoder on that tokenizer's decoded mels.
COMMON24="--pack_dir data/packed_flac --cache_dir runs/cpu/decoded24 --device cpu --num_workers 1 --max_steps 100000"
tokenizer24() {
  finished "runs/cpu/$1" || \
    $TRAIN tokenizer $COMMON24 --resume --output_dir "runs/cpu/$1" --init_from "runs/cpu/$2" \
    --time_budget_s "$3" --batch_size 16 --crop_seconds 2.0 --learning_rate "${4:-1e-4}" --warmup_steps 50 \
    --logging_steps 100 --eval_steps 100000 --corpus_dir "$CORPUS"
}
vocoder24() {
  finished "runs/cpu/$1" || \
    $TRAIN vocoder $COMMON24 $VOCODER_ARGS --output_dir "runs/cpu/$1" --tokenizer "runs/cpu/$2" \
    --init_vocoder "runs/cpu/$3/vocoder" --time_budget_s "$4" --learning_rate 1e-4
}
# 3b. The tokenizer on the 24-bit pack; 4c. the vocoder on its decoded mels.
tokenizer24 tok_real_finetune24 tok_real_finetune 1200
vocoder24 voc_tok24_finetune tok_real_finetune24 voc_new_tok_finetune 600
# 3c. The tokenizer continued (3b's training loss was still falling); 4d. the vocoder on its decoded mels.
tokenizer24 tok_real_finetune24b tok_real_finetune24 2700
vocoder24 voc_tok24b_finetune tok_real_finetune24b voc_tok24_finetune 900
# 3d. The tokenizer continued once more (3c's training loss was still falling); 4e. the vocoder on its decoded mels.
tokenizer24 tok_real_finetune24c tok_real_finetune24b 2700
vocoder24 voc_tok24c_finetune tok_real_finetune24c voc_tok24b_finetune 900
# 3e. The tokenizer continued in one longer schedule; 4f. the vocoder on its decoded mels. (As run, 3e started from the
# shipped checkpoint folder and 4f from its model.safetensors: the same weights as 3d's and 4e's runs.)
tokenizer24 tok_real_finetune24d tok_real_finetune24c 4200
vocoder24 voc_tok24d_finetune tok_real_finetune24d voc_tok24c_finetune 900
# 3f. Once more from 3e (its loss was still falling); 4g. the vocoder on 3f's decoded mels.
tokenizer24 tok_real_finetune24e tok_real_finetune24d 3900
vocoder24 voc_tok24e_finetune tok_real_finetune24e voc_tok24d_finetune 900
# 3g. Once more from 3f at twice the peak learning rate (scripts/tokenizer_lr_ablation.sh: it beat 1e-4 on validation);
# 4h. the vocoder on 3g's decoded mels. As run at stop 25: 3g started from the stop-23 checkpoint folder (3f's
# weights) into runs/cpu/tok_lr2e4_24g, and 4h from that folder's vocoder (4g) with decoded_mel_contrast=1.0 given.
tokenizer24 tok_real_finetune24g tok_real_finetune24e 4200 2e-4
vocoder24 voc_tok24g_finetune tok_real_finetune24g voc_tok24e_finetune 900
# 3h. Once more from 3g, 4,500 s at peak learning rate 4e-4 (scripts/tokenizer_lr_ablation_3h.sh: with its own vocoder
# it beat 2e-4 on validation PESQ-WB at equal STOI); 4i. 4h on 3h's decoded mels. As run at stop 26, into
# runs/cpu/tok_lr4e4_24h and voc_tok24h_lr4e4 (4i given decoded_mel_contrast=1.0, as 4h); the recipe's names below are
# links to them.
tokenizer24 tok_real_finetune24h tok_real_finetune24g 4500 4e-4
vocoder24 voc_tok24h_finetune tok_real_finetune24h voc_tok24g_finetune 900
# 3i. Once more from 3h, 4,500 s at 4e-4; 4j. 4i on 3i's decoded mels (scripts/tokenizer_stage_3i.sh: on validation
# 3i + 4j beat 3h + 4i by +0.003 STOI, +0.012 PESQ-WB paired). As run at stop 27, into runs/cpu/tok_lr4e4_24i (the
# recipe's name below is a link to it) and voc_tok24i_finetune (given decoded_mel_contrast=1.0, as 4h and 4i).
tokenizer24 tok_real_finetune24i tok_real_finetune24h 4500 4e-4
vocoder24 voc_tok24i_finetune tok_real_finetune24i voc_tok24h_finetune 900
# 3j. Once more from 3i, 4,500 s at 4e-4; 4k. 4j on 3j's decoded mels (scripts/tokenizer_stage_next.sh j ...: on
# validation 3j + 4k beat 3i + 4j by +0.001 STOI, +0.007 PESQ-WB, -0.02 dB paired). As run at stop 28, into
# runs/cpu/tok_lr4e4_24j (the recipe's name below is a link to it) and voc_tok24j_finetune (4k given
# decoded_mel_contrast=1.0, as 4h-4j).
tokenizer24 tok_real_finetune24j tok_real_finetune24i 4500 4e-4
vocoder24 voc_tok24j_finetune tok_real_finetune24j voc_tok24i_finetune 900
# 3k. Once more from 3j, 4,500 s at 4e-4; 4l. 4k on 3k's decoded mels (scripts/tokenizer_stage_next.sh k ...: on
# validation 3k + 4l beat 3j + 4k by +0.002 STOI, +0.035 PESQ-WB, -0.03 dB paired). As run at stop 29, into
# runs/cpu/tok_lr4e4_24k (the recipe's name below is a link to it) and voc_tok24k_finetune (4l given
# decoded_mel_contrast=1.0, as 4h-4k).
tokenizer24 tok_real_finetune24k tok_real_finetune24j 4500 4e-4
vocoder24 voc_tok24k_finetune tok_real_finetune24k voc_tok24j_finetune 900

# M. The mel vocoder (config.mel_vocoder: true mels, `PQVAEModel.vocode_mel`; `decode` keeps the vocoder above).
# 4i restarted with the magnitude prior and trained 3,600 s through 8 Griffin-Lim projections on 3h's mels
# (scripts/vocoder_phase_refinement_ablation.sh, as run at stop 27), then continued 3,600 s on true mels only
# (scripts/true_mel_vocoder.sh, stop 29); 32 projections at inference (set at assembly below).
MEL_VOCODER_REFINE="decoded_mel_contrast=1.0,vocoder_phase_refinement_iters=8,vocoder_magnitude_prior=mel_pseudo_inverse"
finished runs/cpu/voc_refine8_prior_24h || \
  $TRAIN vocoder $COMMON24 $VOCODER_ARGS --output_dir runs/cpu/voc_refine8_prior_24h --tokenizer runs/cpu/tok_real_finetune24h \
  --init_vocoder runs/cpu/voc_tok24h_finetune/vocoder --time_budget_s 3600 --learning_rate 1e-4 \
  --config_overrides "$MEL_VOCODER_REFINE" --restart_magnitude_from_prior
finished runs/cpu/voc_true_mel_refine8_prior || \
  $TRAIN vocoder $COMMON24 $VOCODER_ARGS --output_dir runs/cpu/voc_true_mel_refine8_prior \
  --tokenizer runs/cpu/tok_real_finetune24j --init_vocoder runs/cpu/voc_refine8_prior_24h/vocoder --time_budget_s 3600 \
  --learning_rate 1e-4 --decoded_mel_fraction 0.0 --config_overrides "$MEL_VOCODER_REFINE"

# 5. Merge, evaluate on the test split, score against Codec2 / Opus (benchmarks/codec_quality.py; the baselines'
#    cached scores are committed), then write the model card with that section.
LOGS="--training_logs runs/gpu/stage1/summary.json"
for run in tok_real_finetune tok_real_finetune24 tok_real_finetune24b tok_real_finetune24c tok_real_finetune24d \
  tok_real_finetune24e tok_real_finetune24g tok_real_finetune24h tok_real_finetune24i tok_real_finetune24j \
  tok_real_finetune24k voc_shipped_tok_finetune voc_new_tok_finetune \
  voc_tok24_finetune voc_tok24b_finetune voc_tok24c_finetune voc_tok24d_finetune voc_tok24e_finetune \
  voc_tok24g_finetune voc_tok24h_finetune voc_tok24i_finetune voc_tok24j_finetune voc_tok24k_finetune \
  voc_refine8_prior_24h voc_true_mel_refine8_prior; do
  LOGS="$LOGS --training_logs runs/cpu/$run/log.json"
done
ASSEMBLE="$PY -m pqvae_hf.assemble_checkpoint --tokenizer runs/cpu/tok_real_finetune24k \
  --vocoder runs/cpu/voc_tok24k_finetune --mel_vocoder runs/cpu/voc_true_mel_refine8_prior \
  --mel_vocoder_phase_refinement_iters 32 --decoded_mel_contrast 1.1 --corpus_dir $CORPUS \
  --output checkpoints/pqvae-speech-small $LOGS"
NOTE="recipe=scripts/train_shipped_checkpoint.sh (GPU stage 2 on one H100, then CPU fine-tuning on real audio)"
rm -rf checkpoints/pqvae-speech-small
$ASSEMBLE --note "$NOTE"
$PY benchmarks/codec_quality.py --corpus_dir "$CORPUS" --checkpoint checkpoints/pqvae-speech-small
$ASSEMBLE --note "$NOTE" --codec_quality benchmarks/results/codec_quality/results.md
