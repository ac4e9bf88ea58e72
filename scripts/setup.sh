#!/usr/bin/env bash
# Creates ./.venv with everything pqvae-hf needs, from a fresh machine with only python3 and apt-get.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
# Codec2 and Opus command-line codecs: the baselines of benchmarks/codec_quality.py
{ command -v c2enc >/dev/null 2>&1 && command -v c2dec >/dev/null 2>&1; } || need_apt+=(codec2)
{ command -v opusenc >/dev/null 2>&1 && command -v opusdec >/dev/null 2>&1; } || need_apt+=(opus-tools)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "[setup] apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || { echo "[setup] creating .venv"; python3 -m venv .venv; }
PY=.venv/bin/python
stamp=.venv/.pqvae-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "[setup] installing Python packages into .venv"
  $PY -m pip install -q --upgrade pip
  # torch first, pinned to the CPU build: anything else pulls a multi-GB CUDA wheel.
  $PY -m pip install -q torch==2.13.0
  $PY -m pip install -q torch==2.13.0 "torchcodec==0.13.0" -e ".[dev,eval]"
  touch "$stamp"
fi
echo "[setup] ready: $($PY -c 'import torch, transformers, datasets; print("torch", torch.__version__, "transformers", transformers.__version__, "datasets", datasets.__version__)')"
