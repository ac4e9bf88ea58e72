#!/usr/bin/env bash
# Trains the shipped checkpoint's tokenizer and vocoder on one GPU from a packed corpus, in two stages that each fit
# in 10 minutes (the device machine's limit per command). Run from the repo root on the GPU machine:
#   bash scripts/gpu_train.sh stage1 OUT_DIR   # 4 tokenizer variants + 2 adversarial vocoders (true mel), in parallel
#   bash scripts/gpu_train.sh stage2 OUT_DIR   # best vocoder fine-tuned on mels decoded from the best tokenizer
# Needs: data/packed (python -m pqvae_hf.packed_corpus), torch with CUDA, transformers, soundfile, soxr. Wheels in
# .whl/ are installed to /tmp/site first (for a machine without internet). Work files go to $WORK (/tmp/pqvae-gpu).
# Each stage writes to OUT_DIR only what the next steps need: the chosen weights (in parts <= 15 MB) and summary.json.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=$1
OUT_DIR=$2
WORK=${WORK:-/tmp/pqvae-gpu}
BUDGET=${BUDGET:-470}   # seconds of training per process
PACK=${PACK:-data/packed}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$WORK" "$OUT_DIR"
if [ -z "${SKIP_WHEELS:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1
nvidia-smi -L || true
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

# Decode the pack once; every run memory-maps it.
$PY -c "
from pqvae_hf.packed_corpus import load_split
for split in ('train', 'validation'):
    audio, clips, rate = load_split('$PACK', split, 16, '$WORK/decoded')
    print(split, len(clips), 'clips', round(len(audio) / rate / 60, 1), 'min')
" || exit 1

train() {  # name stage args...
  local name=$1; shift
  $PY -m pqvae_hf.packed_training "$@" --pack_dir "$PACK" --cache_dir "$WORK/decoded" \
    --output_dir "$WORK/$name" --time_budget_s "$BUDGET" --device "$DEVICE" >"$WORK/$name.log" 2>&1 &
}

BIGGER="num_encoder_layers=6,num_decoder_layers=8"
if [ "$STAGE" = stage1 ]; then
  TOK="--max_steps 100000 --batch_size 32 --crop_seconds 2.0 --learning_rate 1e-3 --warmup_steps 500 --eval_steps 2000 --logging_steps 500"
  train tok_shipped_arch tokenizer $TOK
  train tok_bigger tokenizer $TOK --config_overrides "$BIGGER"
  train tok_bigger_dim16 tokenizer $TOK --config_overrides "$BIGGER,codebook_dim=16"
  train tok_bigger_no_dd tokenizer $TOK --config_overrides "$BIGGER,dual_decoding_weight=0"
  VOC="--max_steps 100000 --batch_size 32 --segment_seconds 1.0 --eval_steps 2000 --logging_steps 500"
  train voc_shipped_gan vocoder $VOC --learning_rate 2e-4 --warmup_steps 100 \
    --init_vocoder checkpoints/pqvae-speech-small/model.safetensors
  train voc_wide_gan vocoder $VOC --learning_rate 5e-4 --warmup_steps 500 \
    --config_overrides "vocoder_hidden_size=320,vocoder_intermediate_size=960,vocoder_num_layers=8"
  wait
  $PY - "$WORK" "$OUT_DIR" <<'EOF'
import glob, json, os, shutil, sys
work, out = sys.argv[1:]
summary = {}
for log_path in sorted(glob.glob(os.path.join(work, "*", "log.json"))):
    name = os.path.basename(os.path.dirname(log_path))
    log = json.load(open(log_path))
    summary[name] = {k: log.get(k) for k in ("steps", "train_wall_time_s", "num_parameters", "final_eval", "eval", "settings")}
    summary[name]["train_tail"] = log["train"][-3:]
tokenizers = {k: v for k, v in summary.items() if k.startswith("tok_") and v.get("final_eval")}
best = min(tokenizers, key=lambda k: tokenizers[k]["final_eval"]["mel_l1"])
summary["chosen_tokenizer"] = best
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
for f in glob.glob(os.path.join(work, best, "tokenizer-part-*")) + [os.path.join(work, best, "config.json")]:
    shutil.copy(f, os.path.join(out, "tokenizer"))
for name in ("voc_shipped_gan", "voc_wide_gan"):
    os.makedirs(os.path.join(out, name), exist_ok=True)
    for f in glob.glob(os.path.join(work, name, "vocoder-part-*")):
        shutil.copy(f, os.path.join(out, name))
vocoders = {k: v for k, v in summary.items() if k.startswith("voc_") and v.get("final_eval")}
voc = min(vocoders, key=lambda k: vocoders[k]["final_eval"]["true_mel"]["mel_l1"] + vocoders[k]["final_eval"]["true_mel"]["mr_stft"])
overrides = vocoders[voc]["settings"].get("config_overrides") or ""
json.dump({"tokenizer": best, "vocoder": voc, "vocoder_overrides": overrides}, open(os.path.join(work, "stage1_choice.json"), "w"))
summary["chosen_vocoder"] = voc
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print("chosen tokenizer:", best, json.dumps(tokenizers[best]["final_eval"]))
print("chosen vocoder:", voc, json.dumps(vocoders[voc]["final_eval"]))
EOF
elif [ "$STAGE" = stage2 ]; then
  TOKENIZER=${TOKENIZER:-$($PY -c "import json; print('$WORK/' + json.load(open('$WORK/stage1_choice.json'))['tokenizer'])")}
  VOCODER=${VOCODER:-$($PY -c "import json; print('$WORK/' + json.load(open('$WORK/stage1_choice.json'))['vocoder'])")}
  OVERRIDES=${OVERRIDES-$($PY -c "import json; print(json.load(open('$WORK/stage1_choice.json'))['vocoder_overrides'])")}
  VOC="--max_steps 100000 --batch_size 32 --segment_seconds 1.0 --eval_steps 2000 --logging_steps 500 --tokenizer $TOKENIZER --decoded_mel_fraction 0.7 --init_vocoder $VOCODER/vocoder --warmup_steps 100"
  train voc_final_gan vocoder $VOC --learning_rate 2e-4 ${OVERRIDES:+--config_overrides "$OVERRIDES"}
  train voc_final_no_gan vocoder $VOC --learning_rate 2e-4 --adversarial_start_step 100000000 \
    ${OVERRIDES:+--config_overrides "$OVERRIDES"}
  wait
  $PY - "$WORK" "$OUT_DIR" <<'EOF'
import glob, json, os, shutil, sys
work, out = sys.argv[1:]
summary = {}
for name in ("voc_final_gan", "voc_final_no_gan"):
    log = json.load(open(os.path.join(work, name, "log.json")))
    summary[name] = {k: log.get(k) for k in ("steps", "train_wall_time_s", "num_parameters", "final_eval", "eval", "settings")}
    summary[name]["train_tail"] = log["train"][-3:]
    os.makedirs(os.path.join(out, name), exist_ok=True)
    for f in glob.glob(os.path.join(work, name, "vocoder-part-*")):
        shutil.copy(f, os.path.join(out, name))
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps({k: v["final_eval"] for k, v in summary.items()}))
EOF
else
  echo "usage: $0 stage1|stage2 OUT_DIR" >&2; exit 2
fi
for log in "$WORK"/*.log; do echo "== $log"; tail -n 4 "$log"; done
