"""hf.patch swaps a vision tower's axial rotary module for ropekit's exact tables (Qwen2-VL): the
tower's output is unchanged, hf precision is transformers' tables bit for bit, unpatch restores
the module, and after ``model.to(bfloat16)`` the tables stay exact where transformers' are not."""

from __future__ import annotations

import warnings

import pytest
import torch

import ropekit as rk

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Qwen2VLForConditionalGeneration"):
    pytest.skip("this transformers has no Qwen2-VL", allow_module_level=True)


def _model():
    config = transformers.Qwen2VLConfig(
        text_config=dict(
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=200,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        ),
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2
        ),
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.Qwen2VLForConditionalGeneration(config).eval()


def _tower_output(model):
    grid = torch.tensor([[1, 8, 12]])
    pixels = torch.randn(8 * 12, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.model.visual(pixels, grid_thw=grid).last_hidden_state


def _grid_ids(rows=100, cols=100):
    return torch.stack([torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows)], dim=-1)


@pytest.mark.parametrize("precision", ["exact", "hf"])
def test_patched_tower_reproduces_transformers_and_unpatches(precision):
    model = _model()
    original = model.model.visual.rotary_pos_emb
    ids = _grid_ids(9, 13)
    want = original(torch.zeros(1), ids)
    before = _tower_output(model)
    report = rk.hf.patch(model, precision=precision)
    stand_in = model.model.visual.rotary_pos_emb
    assert stand_in is not original
    assert any(c.path == "model.visual.rotary_pos_emb" and "axial" in c.detail for c in report.changes)
    got = stand_in(torch.zeros(1), ids)
    if precision == "hf":
        assert all(torch.equal(a, b) for a, b in zip(want, got))  # transformers' float32 tables, bit for bit
    else:
        assert all((a - b).abs().max() < 2e-6 for a, b in zip(want, got))
    after = _tower_output(model)
    assert ((after - before).abs().max() / before.abs().max()) < 1e-5
    rk.hf.unpatch(model)
    assert model.model.visual.rotary_pos_emb is original
    assert torch.equal(_tower_output(model), before)


def test_after_bfloat16_the_patched_tower_tables_stay_exact():
    """transformers keeps the tower's inv_freq in a buffer that .to(bfloat16) rounds: on a 100 x 100
    grid its float32 cos is then off by > 1e-3 (head_dim 16 here; 0.18 at Qwen2-VL's head_dim 80);
    the patched tower's stay within float32 rounding of the truth."""
    theirs, ours = _model(), _model()
    rk.hf.patch(ours)
    theirs, ours = theirs.to(torch.bfloat16), ours.to(torch.bfloat16)
    ids = _grid_ids()
    spec = rk.from_config(ours.config.vision_config)
    truth, _ = rk.cos_sin(spec, ids.T, dtype=torch.float64)
    n = spec.n_pairs
    their_cos = theirs.model.visual.rotary_pos_emb(torch.zeros(1), ids)[0][:, :n].double()
    our_cos = ours.model.visual.rotary_pos_emb(torch.zeros(1), ids)[0][:, :n].double()
    assert (their_cos - truth).abs().max() > 1e-3
    assert (our_cos - truth).abs().max() < 1e-6


def test_the_stand_in_refuses_positions_in_another_shape():
    model = _model()
    rk.hf.patch(model)
    with pytest.raises(rk.RopeShapeError, match=r"takes \[N, 2\] patch positions"):
        model.model.visual.rotary_pos_emb(torch.zeros(1), _grid_ids(2, 3).T)
