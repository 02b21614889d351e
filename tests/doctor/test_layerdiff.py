"""diff_models finds where two transformers models part: a Llama whose attention rotates q/k in
the wrong layout diverges first at layer 0's attention module, not at its projections (same
outputs) and not at later modules (fed different values)."""

import pytest
import torch

import ropekit as rk

import tiny_models as tm

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama  # noqa: E402


def _tiny_llama(seed=0, layers=3):
    model, _ = tm.build("llama", seed=seed, num_hidden_layers=layers, rope_theta=10000.0)
    return model


def _interleaved_apply(q, k, cos, sin, unsqueeze_dim=1):
    """The Meta/GPT-J rotation (pairs (2i, 2i+1)) on HF-shaped tables: the deliberate layout bug."""
    c = cos.unsqueeze(unsqueeze_dim)[..., : cos.shape[-1] // 2]
    s = sin.unsqueeze(unsqueeze_dim)[..., : sin.shape[-1] // 2]

    def rot(x):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)

    return rot(q), rot(k)


def _with_wrong_layout(model):
    """Make every attention module of ``model`` (only this one) rotate in the interleaved layout."""
    for layer in model.model.layers:
        attn = layer.self_attn
        forward = attn.forward

        def patched(*args, _forward=forward, **kwargs):
            saved = modeling_llama.apply_rotary_pos_emb
            modeling_llama.apply_rotary_pos_emb = _interleaved_apply
            try:
                return _forward(*args, **kwargs)
            finally:
                modeling_llama.apply_rotary_pos_emb = saved

        attn.forward = patched
    return model


@pytest.fixture(scope="module")
def models():
    a = _tiny_llama()
    b = _tiny_llama()
    b.load_state_dict(a.state_dict())
    return a, b


def test_identical_models_do_not_diverge(models):
    a, b = models
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    rep = rk.diff_models(a, b, ids)
    assert rep.first_divergence is None and not rep.unmatched
    assert max(r.out_err for r in rep.rows) == 0.0
    assert "no module diverges" in str(rep)


def test_wrong_layout_rope_is_found_at_the_first_attention(models):
    a, _ = models
    b = _with_wrong_layout(_tiny_llama())
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    rep = rk.diff_models(a, b, {"input_ids": ids})
    assert rep.first_divergence == "model.layers.0.self_attn"
    rows = {r.name: r for r in rep.rows}
    # its projections agree exactly, the attention output does not
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert rows[f"model.layers.0.self_attn.{proj}"].out_err == 0.0
    assert rows["model.layers.0.self_attn"].in_err == 0.0 and rows["model.layers.0.self_attn"].diverged
    assert rows["model.embed_tokens"].out_err == 0.0 and rows["model.rotary_emb"].out_err == 0.0
    # error growth per layer: one row per decoder layer, all diverged, in order
    per_layer = [r for r in rep.per_layer() if r.name.startswith("model.layers.")]
    assert [r.name for r in per_layer] == [f"model.layers.{i}" for i in range(3)]
    assert all(r.diverged for r in per_layer)
    table = str(rep)
    assert table.splitlines()[0] == "first divergence: model.layers.0.self_attn"
    assert "<- first" in table and "model.layers.2" in table
    # the marker sits on the first divergence's own row, in the order modules finished
    marked = [line for line in table.splitlines() if line.rstrip().endswith("<- first")]
    assert len(marked) == 1 and marked[0].startswith("model.layers.0.self_attn ")
    names = [line.split()[0] for line in table.splitlines()[2:]]
    assert names.index("model.layers.0.self_attn") < names.index("model.layers.0") < names.index("model.layers.1")


def test_mapping_aligns_renamed_modules(models):
    a, _ = models
    wrapped = torch.nn.ModuleDict({"inner": _with_wrong_layout(_tiny_llama())})
    wrapped["inner"].load_state_dict(a.state_dict())

    class Wrapper(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.d = d

        def forward(self, input_ids):
            return self.d["inner"](input_ids=input_ids)

    b = Wrapper(wrapped)
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(2))
    rep = rk.diff_models(a, b, {"input_ids": ids}, mapping=lambda n: f"d.inner.{n}" if n else None)
    assert rep.first_divergence == "model.layers.0.self_attn"
    assert next(r for r in rep.rows if r.name == rep.first_divergence).name_b == "d.inner.model.layers.0.self_attn"
    assert rep.unmatched == [""]  # the root, mapped to None on purpose


def test_bad_input():
    with pytest.raises(rk.RopeError, match="torch.nn.Module"):
        rk.diff_models(lambda x: x, torch.nn.Identity(), torch.zeros(1))
