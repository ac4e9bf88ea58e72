#!/usr/bin/env bash
# Sets up the environment (idempotent) and runs the test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Real speech for the tests that check the shipped checkpoint against its model card (skipped if unavailable).
if [ -f ../shared/data/fetch_speech_corpus.sh ] && [ ! -f data/speech_corpus/metadata.csv ]; then
  bash ../shared/data/fetch_speech_corpus.sh data/speech_corpus >/tmp/pqvae-corpus.log 2>&1 \
    || echo "[test] speech corpus could not be built (see /tmp/pqvae-corpus.log); its tests will be skipped"
fi
# transformers' own generic model tests come from its sdist on PyPI (tests/test_transformers_generic.py).
.venv/bin/python tests/transformers_suite.py \
  || echo "[test] transformers' test suite could not be fetched; tests/test_transformers_generic.py will be skipped"
export PQVAE_CORPUS_DIR="$PWD/data/speech_corpus"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
