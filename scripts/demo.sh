#!/usr/bin/env bash
# The main job on the embedded default: embedder, trainer and hub_gateway in one process on
# loopback ports, state under .data/tunewire. Trains a spam classifier on frozen MiniLM embeddings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python clients/cli.py train \
  --config examples/sms_spam.yaml \
  --dataset .data/examples/sms_spam.csv \
  --data_dir .data/tunewire "$@"
