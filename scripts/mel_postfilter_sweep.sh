#!/usr/bin/env bash
# Tunes `decoded_mel_contrast` (the decoded mel's global-variance post-filter, PQVAEModel.postfilter_mel) on the
# validation split: one checkpoint, several factors, everything else identical.
#
#   bash scripts/mel_postfilter_sweep.sh [CHECKPOINT] [FACTOR...]      (defaults: the shipped checkpoint; 1.0 1.1 1.2 1.3)
#   OUT=benchmarks/results/other_dir NUM_WORKERS=1 bash scripts/mel_postfilter_sweep.sh runs/cand_x 1.0 1.1
#   VOCODERS=neural bash scripts/mel_postfilter_sweep.sh ...      (only tokens -> neural vocoder and true mel -> neural)
#
# Each factor gets a folder runs/mel_postfilter/<checkpoint>_contrast<FACTOR>: the checkpoint's files linked, its
# config.json rewritten with that factor. All of them are scored by benchmarks/codec_quality.py on the validation split
# into $OUT, default benchmarks/results/mel_postfilter_validation (Codec2 / Opus reused from codec_quality_validation's cache: the
# same 528 clips). Tokens -> vocoder rows differ by the factor only; the true-mel rows never see the post-filter.
# Validation only: the factor is chosen here, the test split reports it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
CHECKPOINT=${1:-checkpoints/pqvae-speech-small}
shift || true
FACTORS=("$@")
[ ${#FACTORS[@]} -gt 0 ] || FACTORS=(1.0 1.1 1.2 1.3)
CORPUS=${PQVAE_CORPUS_DIR:-data/speech_corpus}
[ -f "$CORPUS/metadata.csv" ] || bash ../shared/data/fetch_speech_corpus.sh "$CORPUS"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
PY=.venv/bin/python
OUT=${OUT:-benchmarks/results/mel_postfilter_validation}
mkdir -p "$OUT/systems"
cp -n benchmarks/results/codec_quality_validation/systems/{Codec2,Opus}_*.json "$OUT/systems/" 2>/dev/null || true

ARGS=()
name=$(basename "$CHECKPOINT")
for factor in "${FACTORS[@]}"; do
  variant="runs/mel_postfilter/${name}_contrast${factor}"
  mkdir -p "$variant"
  for file in "$CHECKPOINT"/*; do
    [ "$(basename "$file")" = config.json ] || ln -sfn "$(realpath "$file")" "$variant/$(basename "$file")"
  done
  $PY - "$CHECKPOINT/config.json" "$variant/config.json" "$factor" <<'EOF'
import json, sys
config = json.load(open(sys.argv[1]))
config["decoded_mel_contrast"] = float(sys.argv[3])
json.dump(config, open(sys.argv[2], "w"), indent=2)
EOF
  ARGS+=(--checkpoint "$variant")
done
$PY benchmarks/codec_quality.py --corpus_dir "$CORPUS" --split validation --skip_baselines \
  --num_workers "${NUM_WORKERS:-2}" --output_dir "$OUT" --checkpoint_vocoders ${VOCODERS:-neural griffin_lim} \
  "${ARGS[@]}"
