# Shared by the ablation scripts (scripts/*_ablation.sh; source it after `cd` to the repository root). The vocoder
# ablations continue a vocoder on a tokenizer's decoded mels: $TOKENIZER, default stage 3d of
# scripts/train_shipped_checkpoint.sh (set it before sourcing); the tokenizer ablations continue stage 3f. One thread
# per run; they need that recipe's runs/cpu.
TOKENIZER=${TOKENIZER:-runs/cpu/tok_real_finetune24c}
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
PY=.venv/bin/python
finished() { grep -q '"final_eval"' "$1/log.json" 2>/dev/null; }

# ablation_vocoder OUTPUT ARGS...: one vocoder run into runs/cpu/OUTPUT (log: runs/cpu/OUTPUT.log), skipped when it
# has finished. ARGS name at least --init_vocoder, --max_steps and --eval_steps; a flag given twice takes its last value.
ablation_vocoder() {
  local out=$1; shift
  finished "runs/cpu/$out" || $PY -m pqvae_hf.packed_training vocoder \
    --pack_dir data/packed_flac --cache_dir runs/cpu/decoded24 --device cpu --num_workers 1 \
    --decoded_mel_fraction 0.7 --adversarial_start_step 100000000 --batch_size 16 --segment_seconds 1.0 \
    --warmup_steps 50 --logging_steps 100 --eval_clips 64 --learning_rate 1e-4 \
    --output_dir "runs/cpu/$out" --tokenizer "$TOKENIZER" "$@" > "runs/cpu/$out.log" 2>&1
}

# ablation_tokenizer OUTPUT ARGS...: stage 3f (runs/cpu/tok_real_finetune24e) continued into runs/cpu/OUTPUT with the
# recipe's 24-bit-pack settings (log: runs/cpu/OUTPUT.log; $CORPUS: the corpus folder), skipped when it has finished,
# resumed when cut. ARGS name at least --time_budget_s; a flag given twice takes its last value.
ablation_tokenizer() {
  local out=$1; shift
  finished "runs/cpu/$out" || $PY -m pqvae_hf.packed_training tokenizer --pack_dir data/packed_flac \
    --cache_dir runs/cpu/decoded24 --device cpu --num_workers 1 --max_steps 100000 --resume \
    --output_dir "runs/cpu/$out" --init_from runs/cpu/tok_real_finetune24e --batch_size 16 --crop_seconds 2.0 \
    --learning_rate 1e-4 --warmup_steps 50 --logging_steps 100 --eval_steps 100000 --corpus_dir "$CORPUS" "$@" \
    > "runs/cpu/$out.log" 2>&1
}

# keep_run_log RUN_DIR KEY NAME: RUN_DIR/log.json kept as {KEY: log} in benchmarks/results/shipped_recipe/NAME.json
# (read by benchmarks/recipe_ablation.py).
keep_run_log() {
  $PY -c "import json; json.dump({'$2': json.load(open('$1/log.json'))}, \
open('benchmarks/results/shipped_recipe/$3.json', 'w'), indent=1)"
}

# assemble_candidate TOKENIZER_DIR VOCODER_DIR OUTPUT [CONTRAST [EXTRA]]: the two merged into OUTPUT (with
# decoded_mel_contrast=CONTRAST when given, else the tokenizer's; EXTRA: more config fields as Python dict items,
# e.g. "'vocoder_phase_refinement_iters': 32").
assemble_candidate() {
  local overrides="{${4:+'decoded_mel_contrast': $4, }${5:-}}"
  $PY -c "from pqvae_hf.assemble_checkpoint import assemble; assemble('$1', '$2', '$3', $overrides)"
}

# merge_candidate RUN LOG_GROUP [CONTRAST]: runs/cpu/voc_RUN merged with the tokenizer into runs/cand_RUN (with
# decoded_mel_contrast=CONTRAST when given, else the tokenizer's), and its log.json kept as
# benchmarks/results/shipped_recipe/cpu_vocoder_LOG_GROUP_RUN.json.
merge_candidate() {
  assemble_candidate "$TOKENIZER" "runs/cpu/voc_$1" "runs/cand_$1" "${3:-}"
  keep_run_log "runs/cpu/voc_$1" "cpu_voc_$1" "cpu_vocoder_$2_$1"
}

# score_tokens_on_validation OUT BASELINES CHECKPOINT...: tokens -> neural vocoder of each checkpoint folder scored on
# the validation split into OUT ($NUM_WORKERS processes, default 2), with the Codec2 / Opus scores copied from the
# results folder BASELINES (never recomputed: --skip_baselines); then the ablation table is rewritten.
score_tokens_on_validation() {
  local out=$1 baselines=$2; shift 2
  mkdir -p "$out/systems"
  cp -n "$baselines"/systems/{Codec2,Opus}_*.json "$out/systems/" 2>/dev/null || true
  $PY benchmarks/codec_quality.py --corpus_dir "$CORPUS" --split validation --skip_baselines \
    --num_workers "${NUM_WORKERS:-2}" --checkpoint_inputs tokens --checkpoint_vocoders neural --output_dir "$out" \
    $(printf -- '--checkpoint %s ' "$@")
  $PY benchmarks/recipe_ablation.py > /dev/null
}
