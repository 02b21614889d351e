"""The q/k stand-in's per-forward table views (``rotators._per_forward``): remembered for the last
(cos, sin) only while those two tensors are unchanged; a new tensor or an in-place change of the old
one gives new views, and the rotation always equals transformers' own apply_rotary_pos_emb."""

import pytest
import torch

import ropekit as rk
from ropekit.transformers.rotators import Convention, build_rotator

transformers = pytest.importorskip("transformers")
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402


def _hf_tables(positions):
    cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=16), positions)
    return torch.cat((cos, cos), -1)[None], torch.cat((sin, sin), -1)[None]


def test_views_follow_the_tables_they_were_made_from():
    rotate = build_rotator(Convention("qk", "half"))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 3, 16, generator=g), torch.randn(1, 2, 3, 16, generator=g)
    cos, sin = _hf_tables(torch.tensor([5, 6, 7]))
    for _ in range(2):  # the second call takes the remembered views
        got, want = rotate(q, k, cos, sin), apply_rotary_pos_emb(q, k, cos, sin)
        assert all((a - b).abs().max() < 1e-6 for a, b in zip(got, want))
    new_cos, new_sin = _hf_tables(torch.tensor([100, 200, 300]))
    cos.copy_(new_cos), sin.copy_(new_sin)  # in place: the same objects, other values
    got, want = rotate(q, k, cos, sin), apply_rotary_pos_emb(q, k, cos, sin)
    assert all((a - b).abs().max() < 1e-6 for a, b in zip(got, want))
    other = _hf_tables(torch.tensor([1, 2, 3]))  # new tensors
    got, want = rotate(q, k, *other), apply_rotary_pos_emb(q, k, *other)
    assert all((a - b).abs().max() < 1e-6 for a, b in zip(got, want))


def test_a_resized_table_is_not_taken_for_the_old_one():
    rotate = build_rotator(Convention("qk", "half"))
    q, k = torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16)
    cos, sin = _hf_tables(torch.tensor([1, 2, 3]))
    rotate(q, k, cos, sin)
    cos.resize_(1, 2, 16), sin.resize_(1, 2, 16)  # in place, bumps the version counter
    with pytest.raises(rk.RopeError):
        rotate(q, k, cos, sin)  # 2 table rows for 3 tokens: refused, not rotated by stale views
