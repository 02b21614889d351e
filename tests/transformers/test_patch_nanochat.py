"""NanoChat at the transformers boundary: a family that turns pairs by -angle (angle_sign=-1).

Its rotary module returns +angle tables and its apply function (rotate_half with sin negated) does
the turning back.  ``RotaryEmbedding(config)`` must hand over what NanoChat's own module does;
``ropekit.hf.patch`` measures the direction of the apply function and runs ropekit's inverse
rotation.  Every check is against NanoChat's own module and apply function (transformers 5.x).
"""

from __future__ import annotations

import pytest
import torch

import ropekit as rk

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

import tiny_models as tm  # noqa: E402

pytestmark = pytest.mark.skipif(not tm.has_family("nanochat"), reason="this transformers release has no nanochat")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return tm.output(model, ids)


def test_rotary_embedding_from_config_is_nanochats_own_module_bit_for_bit():
    model, _ = tm.build("nanochat")
    theirs = model.model.rotary_emb
    ours = rk.RotaryEmbedding(model.config, precision="hf")
    assert ours.spec.angle_sign == -1
    x, pos = torch.zeros(1), torch.arange(0, 4000, 7)[None]
    for a, b in zip(ours(x, pos), theirs(x, pos)):
        assert torch.equal(a, b)  # +angle tables, as NanoChat's module returns them
    # without the family (spec=), the tables carry the direction: sin negated, exactly
    cos, sin = rk.RotaryEmbedding(spec=ours.spec, precision="hf")(x, pos)
    assert torch.equal(cos, theirs(x, pos)[0]) and torch.equal(sin, -theirs(x, pos)[1])


def test_the_wrong_direction_fails_the_logit_tolerance():
    """The deliberately wrong variant: tables that carry -angle fed to NanoChat's apply, which turns
    them once more (a rotation by +angle overall): logits are far outside 1e-5."""
    model, ids = tm.build("nanochat")
    reference = _logits(model, ids)
    spec = rk.from_config(model.config)
    model.model.rotary_emb = rk.RotaryEmbedding(spec=spec)  # no family form: sin negated
    assert _rel(_logits(model, ids), reference) > 1e-3


def test_patch_runs_the_inverse_rotation_and_says_so():
    model, ids = tm.build("nanochat")
    reference = _logits(model, ids)
    report = rk.hf.patch(model)
    applied = [c.detail for c in report.changes if c.what == "apply function"]
    assert applied == ["qk layout=half tables=cat by -angle"]
    assert report.specs[None].angle_sign == -1
    assert _rel(_logits(model, ids), reference) <= 1e-5
    rk.hf.unpatch(model)


def test_patch_refuses_a_reading_in_the_other_direction(monkeypatch):
    """Had ropekit read NanoChat as +angle, patch would refuse at patch() time (nothing changed)."""
    from ropekit.transformers import patch as patching

    model, ids = tm.build("nanochat")
    reference = _logits(model, ids)
    wrong = {None: rk.from_config(model.config).turning_forward()}
    monkeypatch.setattr(patching, "_read_specs", lambda m: wrong)
    with pytest.raises(rk.RopeError, match=r"turns by -angle, but ropekit reads this config as angle_sign=\[1\]"):
        rk.hf.patch(model)
    assert not rk.hf.is_patched(model)
    assert torch.equal(_logits(model, ids), reference)


def test_converted_to_interleaved_keeps_the_direction():
    """A NanoChat checkpoint whose q/k rows were permuted to the interleaved layout (what ``ropekit
    convert --layout interleaved`` writes, marker included) still turns by -angle: patched, it gives
    the logits of the original model."""
    model, ids = tm.build("nanochat")
    reference = _logits(model, ids)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            for proj, heads in ((attn.q_proj, cfg.num_attention_heads), (attn.k_proj, cfg.num_key_value_heads)):
                proj.weight.copy_(rk.permute_qk(proj.weight, heads, head_dim, src="half", dst="interleaved"))
    assert _rel(_logits(model, ids), reference) > 1e-3  # stock transformers now runs it wrong
    cfg.ropekit_layout = "interleaved"
    spec = rk.from_config(cfg)
    assert (spec.layout, spec.angle_sign) == ("interleaved", -1)
    report = rk.hf.patch(model)
    assert report.layout == "interleaved"
    assert _rel(_logits(model, ids), reference) <= 1e-5
    rk.hf.unpatch(model)
