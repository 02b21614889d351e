"""ERNIE-4.5-VL's text tower (an mRoPE whose pairs alternate height and width, then follow time:
``RopeSpec.mrope_axes``) through ``ropekit.hf.patch`` and ``ropekit.RotaryEmbedding``, with 3-axis
position ids that differ per axis, against the family's own modules."""

from __future__ import annotations

import pytest
import torch

import ropekit as rk

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import tiny_models as tm  # noqa: E402

pytestmark = pytest.mark.skipif(not tm.has_family("ernie4_5_vl_moe"), reason="ERNIE-4.5-VL is in transformers 5.x")


def _positions(batch: int, seq: int) -> torch.Tensor:
    """[3, batch, seq] (time, height, width) ids that differ between the axes at almost every token,
    as an image's patches have them."""
    t = torch.arange(seq)
    return torch.stack([t, (t * 5) % 7, (t * 3 + 2) % 11])[:, None].expand(3, batch, seq).contiguous()


def _hidden(model, ids, pos):
    return model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state


def _rel(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _qk_grads(model, ids, pos) -> dict:
    model.zero_grad(set_to_none=True)
    _hidden(model, ids, pos).pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n}


def test_patched_ernie_equals_unpatched_with_per_axis_positions():
    model, ids = tm.build("ernie4_5_vl_moe")
    pos = _positions(*ids.shape)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        reference, text_reference = _hidden(model, ids, pos), tm.output(model, ids)
    reference_grads = _qk_grads(model, ids, pos)
    report = rk.hf.patch(model)
    assert report.layout == "interleaved" and report.specs[None].mrope_axes == (1, 2, 1, 2, 1, 2, 0, 0)
    assert any(c.what == "rotary module" and "duplicate='repeat'" in c.detail for c in report.changes)
    with torch.no_grad():
        assert _rel(_hidden(model, ids, pos), reference) <= 1e-5
        assert _rel(tm.output(model, ids), text_reference) <= 1e-5
    grads = _qk_grads(model, ids, pos)
    assert max(_rel(grads[n], reference_grads[n]) for n in grads) <= 1e-4
    rk.hf.unpatch(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(_hidden(model, ids, pos), reference)


def test_a_wrong_axis_map_fails_the_same_tolerance_and_is_refused_at_patch_time(monkeypatch):
    """Height and width swapped: the logits tolerance catches it, and patch() refuses such a reading
    (its tables are proven at positions that differ per axis), changing nothing."""
    import ropekit.dialects as dialects

    model, ids = tm.build("ernie4_5_vl_moe")
    pos = _positions(*ids.shape)
    with torch.no_grad():
        reference = _hidden(model, ids, pos)
    right = rk.from_config(model.config)
    swapped = right.replace(mrope_axes=tuple({1: 2, 2: 1}.get(a, a) for a in right.mrope_axes))
    original = model.rotary_emb
    model.rotary_emb = rk.RotaryEmbedding(spec=swapped, duplicate="repeat")
    with torch.no_grad():
        assert _rel(_hidden(model, ids, pos), reference) > 1e-3
    model.rotary_emb = original
    monkeypatch.setattr(dialects, "from_config", lambda *a, **k: swapped)
    with pytest.raises(rk.RopeError, match="computes other tables"):
        rk.hf.patch(model)
    assert model.rotary_emb is original and not rk.hf.is_patched(model)


@pytest.mark.parametrize("precision", ["hf", "exact"])
def test_rotary_embedding_from_the_text_config_is_a_drop_in(precision):
    model, ids = tm.build("ernie4_5_vl_moe")
    pos = _positions(*ids.shape)
    theirs = model.rotary_emb
    ours = rk.RotaryEmbedding(model.config, precision=precision)
    x = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        for p in (pos, pos[0], torch.arange(300)[None]):
            want, got = theirs(x, p), ours(x, p)
            assert all(a.shape == b.shape for a, b in zip(want, got))
            err = max((a - b).abs().max().item() for a, b in zip(want, got))
            assert err == 0.0 if precision == "hf" else err <= 1e-4, err  # exact: fp64 vs their fp32 angles
        reference = _hidden(model, ids, pos)
        model.rotary_emb = ours
        assert _rel(_hidden(model, ids, pos), reference) <= 1e-5


def test_the_whole_vision_language_model_gets_its_text_tower_patched():
    """Ernie4_5_VLMoeForConditionalGeneration (a one-block vision tower): the text rotary and attention
    are patched from the composite config, the vision tower's attention is left alone (its axial rotary
    module gets ropekit's tables), logits equal."""
    from transformers import Ernie4_5_VLMoeConfig, Ernie4_5_VLMoeForConditionalGeneration

    text = {k: v for k, v in tm.config_for("ernie4_5_vl_moe").to_dict().items() if k != "model_type"}
    config = Ernie4_5_VLMoeConfig(
        text_config=text, vision_config=dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64)
    )
    for part in (config, config.text_config, config.vision_config):
        part._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Ernie4_5_VLMoeForConditionalGeneration(config).eval()
    ids = torch.randint(3, tm.VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    pos = _positions(*ids.shape)
    with torch.no_grad():
        reference = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        report = rk.hf.patch(model)
        patched = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert any("vision" in path for path, _ in report.skipped)
    swapped = [c.path for c in report.changes if c.what == "rotary module"]
    assert swapped == ["model.language_model.rotary_emb", "model.vision_tower.rotary_pos_emb"]
    assert _rel(patched, reference) <= 1e-5
    rk.hf.unpatch(model)


def test_the_module_compiles_without_a_graph_break_and_gives_its_eager_tables():
    """fullgraph=True: the axis map is fixed at construction, nothing is read back per call."""
    spec = rk.from_config(tm.config_for("ernie4_5_vl_moe"))
    pos = _positions(1, 40)
    x = torch.zeros(1, 8)
    for precision in ("exact", "hf"):
        module = rk.RotaryEmbedding(spec=spec, precision=precision, duplicate="repeat")
        eager = module(x, pos)
        traced = torch.compile(module, fullgraph=True, backend="eager")(x, pos)
        torch._dynamo.reset()
        assert all(torch.equal(a, b) for a, b in zip(eager, traced)), precision
