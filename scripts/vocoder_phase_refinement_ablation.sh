#!/usr/bin/env bash
# Griffin-Lim projections unrolled inside the neural vocoder (`vocoder_phase_refinement_iters`), trained end to end.
# The diagnosis (benchmarks/README, "Why the vocoder loses to Griffin-Lim on the true mel") left the network's phase
# as what loses on the true mel, while on the tokens' mel its phase beats Griffin-Lim's. Two runs continue the
# shipped vocoder (stage 4i) on the shipped tokenizer's (3h) mels with 8 projections after the network, so training
# learns a magnitude and phase that the projections refine well, one thread each, side by side, the recipe's
# vocoder settings otherwise (70 % token mels, lr 1e-4, mel + multi-resolution STFT loss):
#   refine8:        the network's magnitude as it is
#   refine8_prior:  magnitude rows restarted as a correction to the mel's pseudo-inverse (Griffin-Lim's magnitude)
# Each is merged with the tokenizer (post-filter 1.1, as shipped) and scored on the validation split, tokens and
# true mel, each through its neural vocoder and Griffin-Lim, beside the shipped checkpoint (runs/cand_tok24h_lr4e4 of
# scripts/tokenizer_lr_ablation_3h.sh: the same weights and config; its tokens -> neural vocoder scores are reused
# from that script's results). The prior run is also scored with 16 and 32 projections at inference (the same weights,
# trained with 8). Then, as the prior run loses on the tokens, it is continued 1,500 s on 90 % token mels
# (refine8_prior_24h_b) and scored again with 32 projections (tokens and true mel, neural vocoder only) into
# benchmarks/results/codec_quality_validation_refinement_b. Resumable: a finished run is skipped, cached scores are
# reused.
# Usage: bash scripts/vocoder_phase_refinement_ablation.sh [CORPUS_DIR] [SECONDS]   (~2.5 h with 3,600 s)
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-data/speech_corpus}
SECONDS_PER_RUN=${2:-3600}
TOKENIZER=runs/cpu/tok_real_finetune24h
source scripts/vocoder_ablation_common.sh
REFINE="decoded_mel_contrast=1.0,vocoder_phase_refinement_iters=8"
refine_run() {  # OUTPUT EXTRA_ARGS...
  local out=$1; shift
  ablation_vocoder "$out" --init_vocoder runs/cpu/voc_tok24h_finetune/vocoder --max_steps 100000 \
    --eval_steps 100000 --time_budget_s "$SECONDS_PER_RUN" "$@"
}
refine_run voc_refine8_24h --config_overrides "$REFINE" &
refine_run voc_refine8_prior_24h --config_overrides "$REFINE,vocoder_magnitude_prior=mel_pseudo_inverse" \
  --restart_magnitude_from_prior &
wait
for run in refine8_24h refine8_prior_24h; do
  merge_candidate "$run" h 1.1
done
for iters in 16 32; do
  assemble_candidate $TOKENIZER runs/cpu/voc_refine8_prior_24h runs/cand_refine8_prior_24h_k$iters 1.1 \
    "'vocoder_phase_refinement_iters': $iters"
done
OUT=benchmarks/results/codec_quality_validation_refinement
mkdir -p $OUT/systems
cp -n benchmarks/results/codec_quality_validation_tok24h/systems/{Codec2,Opus}_*.json \
  benchmarks/results/codec_quality_validation_tok24h/systems/PQ-VAE_cand_tok24h_lr4e4__tokens_-__neural_vocoder.json \
  $OUT/systems/ 2>/dev/null || true
$PY benchmarks/codec_quality.py --corpus_dir "$CORPUS" --split validation --skip_baselines \
  --num_workers "${NUM_WORKERS:-2}" --checkpoint_inputs tokens true_mel --checkpoint_vocoders neural griffin_lim \
  --output_dir $OUT --checkpoint runs/cand_tok24h_lr4e4 --checkpoint runs/cand_refine8_24h \
  --checkpoint runs/cand_refine8_prior_24h --checkpoint runs/cand_refine8_prior_24h_k16 \
  --checkpoint runs/cand_refine8_prior_24h_k32
$PY benchmarks/recipe_ablation.py > /dev/null
# The prior run continued on 90 % token mels: does more training on the tokens close their gap?
ablation_vocoder voc_refine8_prior_24h_b --init_vocoder runs/cpu/voc_refine8_prior_24h/vocoder --max_steps 100000 \
  --eval_steps 100000 --time_budget_s 1500 --decoded_mel_fraction 0.9 \
  --config_overrides "$REFINE,vocoder_magnitude_prior=mel_pseudo_inverse"
keep_run_log runs/cpu/voc_refine8_prior_24h_b cpu_voc_refine8_prior_24h_b cpu_vocoder_h_refine8_prior_24h_b
assemble_candidate $TOKENIZER runs/cpu/voc_refine8_prior_24h_b runs/cand_refine8_prior_24h_b_k32 1.1 \
  "'vocoder_phase_refinement_iters': 32"
OUT_B=benchmarks/results/codec_quality_validation_refinement_b
mkdir -p $OUT_B/systems
cp -n $OUT/systems/{Codec2,Opus}_*.json $OUT/systems/*cand_tok24h_lr4e4*neural_vocoder.json \
  $OUT/systems/*cand_refine8_prior_24h_k32*neural_vocoder.json $OUT_B/systems/ 2>/dev/null || true
$PY benchmarks/codec_quality.py --corpus_dir "$CORPUS" --split validation --skip_baselines \
  --num_workers "${NUM_WORKERS:-2}" --checkpoint_inputs tokens true_mel --checkpoint_vocoders neural \
  --output_dir $OUT_B --checkpoint runs/cand_tok24h_lr4e4 --checkpoint runs/cand_refine8_prior_24h_k32 \
  --checkpoint runs/cand_refine8_prior_24h_b_k32
$PY benchmarks/recipe_ablation.py > /dev/null
