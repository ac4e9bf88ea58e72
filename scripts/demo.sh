#!/usr/bin/env bash
# The main job: tokenize and reconstruct a real speech clip with the shipped checkpoint (offline, CPU).
# Sets up .venv first (idempotent). Outputs: outputs/demo/{codes.json,reconstruction.wav,mel_comparison.png,summary.json}
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec .venv/bin/pqvae demo --out-dir outputs/demo "$@"
