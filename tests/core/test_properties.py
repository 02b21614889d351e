"""Properties of the rotation that hold for every spec (hypothesis):

* relativity: q.k after rotation depends only on the position difference;
* isometry: norms are preserved (times the attention factor on the rotated dims);
* inverse: rotating back restores the input;
* layouts: half and interleaved are the same rotation up to a permutation of the dims.

Math runs in float64 where the property is exact in real arithmetic, so the tolerances are
float64 rounding, not fp32 slack.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ropekit as rk
from ropekit.spec import Dynamic, Linear, Llama3, Yarn


@st.composite
def specs(draw, scalings=("none", "linear", "llama3", "dynamic", "yarn")):
    n_pairs = draw(st.integers(min_value=2, max_value=24))
    tail = 2 * draw(st.integers(min_value=0, max_value=4))
    kind = draw(st.sampled_from(scalings))
    scaling = {
        "none": None,
        "linear": Linear(draw(st.sampled_from([2.0, 4.0, 8.0]))),
        "llama3": Llama3(8.0, 1.0, 4.0, 512),
        "dynamic": Dynamic(2.0, 256),
        "yarn": Yarn(4.0, 512),
    }[kind]
    return rk.RopeSpec(
        head_dim=2 * n_pairs + tail,
        rotary_dim=2 * n_pairs,
        base=draw(st.sampled_from([10000.0, 500000.0, 1e6])),
        layout=draw(st.sampled_from(["half", "interleaved"])),
        scaling=scaling,
    )


positions = st.integers(min_value=0, max_value=2**20)


def _rotate(spec, x, pos, table_len=None, **kw):
    """x: [n, head_dim] tokens at positions pos [n] (float64)."""
    cos, sin = rk.cos_sin(spec, pos, dtype=torch.float64, seq_len=table_len)
    return rk.apply_rope(x[None, :, None, :], cos, sin, layout=spec.layout, **kw)[0, :, 0, :]


def _vectors(seed, n, d):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@given(specs(), positions, positions, st.integers(min_value=0, max_value=2**20), st.integers(0, 2**16))
def test_scores_depend_only_on_the_position_difference(spec, m, n, shift, seed):
    q, k = _vectors(seed, 1, spec.head_dim), _vectors(seed + 1, 1, spec.head_dim)
    seq_len = 2**21 + 1  # one fixed seq_len: dynamic scaling must not change between the two calls
    before = (_rotate(spec, q, torch.tensor([m]), seq_len) * _rotate(spec, k, torch.tensor([n]), seq_len)).sum()
    after = (
        _rotate(spec, q, torch.tensor([m + shift]), seq_len) * _rotate(spec, k, torch.tensor([n + shift]), seq_len)
    ).sum()
    scale = q.norm() * k.norm() * rk.inv_freq(spec)[1] ** 2
    # float64 angles at ~2e6 carry ~1e-9 rad of rounding; the property itself is exact
    assert abs(before - after) <= 1e-8 * scale


@given(specs(), st.lists(positions, min_size=1, max_size=8), st.integers(0, 2**16))
def test_norms_are_preserved(spec, pos, seed):
    x = _vectors(seed, len(pos), spec.head_dim)
    y = _rotate(spec, x, torch.tensor(pos))
    factor = rk.inv_freq(spec)[1]  # yarn scales cos and sin, so the rotated part by this factor
    r = spec.rotary_dim
    torch.testing.assert_close(y[:, :r].norm(dim=-1), factor * x[:, :r].norm(dim=-1), rtol=1e-12, atol=1e-12)
    assert torch.equal(y[:, r:], x[:, r:])  # the tail passes through untouched


@given(
    specs(scalings=("none", "linear", "llama3", "dynamic")),
    st.lists(positions, min_size=1, max_size=8),
    st.integers(0, 2**16),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_inverse_restores_the_input(spec, pos, seed, dtype):
    x = _vectors(seed, len(pos), spec.head_dim).to(dtype)
    cos, sin = rk.cos_sin(spec, torch.tensor(pos), dtype=dtype)
    y = rk.apply_rope(x[None, :, None, :], cos, sin, layout=spec.layout)
    back = rk.apply_rope(y, cos, sin, layout=spec.layout, inverse=True)[0, :, 0, :]
    tol = 1e-12 if dtype == torch.float64 else 4e-6
    torch.testing.assert_close(back, x, rtol=tol, atol=tol)


def _interleaved_to_half(head_dim: int, rotary_dim: int) -> torch.Tensor:
    """Index i of the half layout holds dim perm[i] of the interleaved layout: pair j is
    (2j, 2j+1) interleaved and (j, j + r/2) half; the tail keeps its place."""
    evens = torch.arange(0, rotary_dim, 2)
    odds = torch.arange(1, rotary_dim, 2)
    return torch.cat([evens, odds, torch.arange(rotary_dim, head_dim)])


@given(
    specs(),
    st.lists(positions, min_size=1, max_size=8),
    st.integers(0, 2**16),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_half_and_interleaved_agree_after_permuting_dims(spec, pos, seed, dtype):
    x_int = _vectors(seed, len(pos), spec.head_dim).to(dtype)
    perm = _interleaved_to_half(spec.head_dim, spec.rotary_dim)
    cos, sin = rk.cos_sin(spec, torch.tensor(pos), dtype=dtype)
    y_int = rk.apply_rope(x_int[None, :, None, :], cos, sin, layout="interleaved")[0, :, 0, :]
    y_half = rk.apply_rope(x_int[:, perm][None, :, None, :], cos, sin, layout="half")[0, :, 0, :]
    # the same products and sums on the same numbers: bit-identical, not just close
    assert torch.equal(y_half, y_int[:, perm])


def test_permutation_helper_is_what_it_says():
    assert _interleaved_to_half(6, 4).tolist() == [0, 2, 1, 3, 4, 5]
    with pytest.raises(AssertionError):  # the layouts really differ without the permutation
        spec = rk.RopeSpec(head_dim=8)
        cos, sin = rk.cos_sin(spec, torch.tensor([5]), dtype=torch.float64)
        x = torch.arange(8, dtype=torch.float64)[None, None, None, :]
        assert torch.equal(rk.apply_rope(x, cos, sin, layout="half"), rk.apply_rope(x, cos, sin, layout="interleaved"))
