"""ropekit.hf.patch on every family of the patch list that the installed release has.

CI runs this file once per release (4.37.2, 4.38.1, 4.45.2, 4.57.6, 5.x; ``-m release_matrix``).
Per family, on a tiny model built offline from its config:

* patched logits equal unpatched: fp32 to 1e-5 relative, bf16 within bf16 rounding;
* one training step's gradients equal (the q/k projections among them) to fp32 rounding;
* ``unpatch`` restores the model exactly: the same module objects, the same functions, the same
  state dict, bit-identical logits;
* a deliberately wrong rotation (the other layout) fails the same tolerances.
"""

from __future__ import annotations

import sys

import pytest
import torch

import ropekit as rk

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import tiny_models as tm  # noqa: E402

pytestmark = pytest.mark.release_matrix
FAMILIES = [f for f in tm.PATCH_FAMILIES if tm.has_family(f)]
#: names of the parameters that project q and k, across families (fused projections included)
QK_NAMES = ("q_proj", "k_proj", "qkv", "query_key_value", "query", "key", "kv_a_proj", "q_a_proj", "q_b_proj")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _loss(model, ids):
    out = tm.output(model, ids)
    return (
        out.float().pow(2).mean()
        if out.shape[-1] != tm.VOCAB
        else torch.nn.functional.cross_entropy(out[:, :-1].reshape(-1, out.shape[-1]).float(), ids[:, 1:].reshape(-1))
    )


def _grads(model, ids) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    _loss(model, ids).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _grad_error(ours: dict, theirs: dict) -> float:
    assert ours.keys() == theirs.keys()
    return max(_rel(ours[n], theirs[n]) for n in theirs if theirs[n].abs().max() > 0)


def _snapshot(model):
    """Everything unpatch must restore: module objects by path, tensors, modeling functions."""
    modules = {name: mod for name, mod in model.named_modules(remove_duplicate=False)}
    functions = {}
    for mod in modules.values():
        modeling = sys.modules.get(type(mod).__module__)
        for fn in ("apply_rotary_pos_emb", "apply_rotary_pos_emb_interleave", "apply_multimodal_rotary_pos_emb"):
            if hasattr(modeling, fn):
                functions[(modeling.__name__, fn)] = getattr(modeling, fn)
    tables = {n: m.__dict__.get("embed_positions") for n, m in modules.items() if "embed_positions" in m.__dict__}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    forwards = [n for n, m in modules.items() if "forward" in m.__dict__]
    return modules, functions, tables, state, forwards


def _assert_restored(model, before):
    modules, functions, tables, state, forwards = _snapshot(model)
    assert modules.keys() == before[0].keys() and all(modules[k] is before[0][k] for k in modules)
    assert functions == before[1]
    assert tables.keys() == before[2].keys() and all(tables[k] is before[2][k] for k in tables)
    assert state.keys() == before[3].keys() and all(torch.equal(state[k], before[3][k]) for k in state)
    assert forwards == before[4] == []


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_fp32_logits_grads_and_unpatch(family):
    model, ids = tm.build(family)
    before = _snapshot(model)
    with torch.no_grad():
        reference = tm.output(model, ids)
    reference_grads = _grads(model, ids)
    assert any(any(q in n for q in QK_NAMES) for n in reference_grads), sorted(reference_grads)

    report = rk.hf.patch(model)
    assert {c.what for c in report.changes} >= {"apply function", "attention forward"}
    assert any(c.what in ("rotary module", "position table") for c in report.changes)
    with torch.no_grad():
        patched = tm.output(model, ids)
    assert _rel(patched, reference) <= 1e-5
    assert _grad_error(_grads(model, ids), reference_grads) <= 1e-4

    rk.hf.unpatch(model)
    _assert_restored(model, before)
    with torch.no_grad():
        assert torch.equal(tm.output(model, ids), reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_bf16_within_bf16_rounding(family):
    model, ids = tm.build(family)
    with torch.no_grad():
        truth = tm.output(model, ids).double()  # fp32 model: the reference both bf16 runs are held to
        model.to(torch.bfloat16)
        theirs = tm.output(model, ids)
        rk.hf.patch(model)
        ours = tm.output(model, ids)
    assert next(model.parameters()).dtype == torch.bfloat16  # (older releases upcast logits to float)
    # bf16 rounding through two tiny layers: both runs stay within a few bf16 ulps of the fp32 truth,
    # and within that of each other; ours is never meaningfully worse than transformers' own
    scale = truth.abs().max().item()
    err_ours, err_theirs = (ours.double() - truth).abs().max().item(), (theirs.double() - truth).abs().max().item()
    assert err_ours <= 16 * 2**-8 * scale
    assert (ours.double() - theirs.double()).abs().max().item() <= 16 * 2**-8 * scale
    assert err_ours <= 2 * err_theirs + 2**-8 * scale


@pytest.mark.parametrize("family", ["llama", "glm" if "glm" in FAMILIES else "gptj"])
def test_the_wrong_layout_fails_these_tolerances(family):
    """The converted-checkpoint override run on an unconverted model: logits and grads must differ."""
    model, ids = tm.build(family)
    with torch.no_grad():
        reference = tm.output(model, ids)
    reference_grads = _grads(model, ids)
    own = rk.hf.patch(model).layout
    rk.hf.unpatch(model)
    rk.hf.patch(model, layout="half" if own == "interleaved" else "interleaved")
    with torch.no_grad():
        assert _rel(tm.output(model, ids), reference) > 1e-3
    assert _grad_error(_grads(model, ids), reference_grads) > 1e-2
    rk.hf.unpatch(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_rotary_embedding_from_config_swaps_in_for_the_family_module(family):
    """A user replacing the rotary module(s) with ``RotaryEmbedding(config)``: the family's table form
    (Cohere's repeated columns, Qwen2-VL's per-axis tables before 5.0, GPT-J's (sin, cos)) follows
    from the config, and the logits stay those of the family's own module."""
    from ropekit.transformers import discovery

    model, ids = tm.build(family)
    paths = [p for p, _ in discovery.rotary_modules(model)]
    if not paths:
        pytest.skip("this release keeps GPT-J's table inside the attention (the patcher replaces that)")
    with torch.no_grad():
        reference = tm.output(model, ids)
        for path in paths:
            parent, attr = discovery.owner_of(model, path)
            local = attr.endswith("_local")  # 4.5x Gemma 3: a second module for the sliding layers
            rope = rk.RotaryEmbedding(model.config, layer_type="sliding_attention" if local else None)
            setattr(parent, attr, rope)
        assert _rel(tm.output(model, ids), reference) <= 1e-5
