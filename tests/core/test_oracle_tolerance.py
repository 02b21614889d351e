"""The oracle's tolerance can fail: deliberately wrong rotations (math in bf16/fp16, the wrong
layout, a result two ulps off) are caught by ``assert_close_to``, a correct one passes."""

import pytest
import torch

from oracle import assert_close_to, pair_index, rope_fp64, ulp

D, S, H = 128, 256, 4


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, S, H, D, generator=g, dtype=torch.float64).to(dtype)
    inv = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    pos = torch.randint(0, 8192, (2, S), generator=g)
    return x, inv, pos


def _rotate(x, inv, pos, layout, math_dtype):
    """A hand-written rotation doing its products and sums in ``math_dtype``, fp32 tables."""
    angles = pos.to(torch.float64)[..., None] * inv
    cos, sin = angles.cos().float(), angles.sin().float()  # compact fp32 tables, as cos_sin gives
    c, s = cos.to(math_dtype)[:, :, None], sin.to(math_dtype)[:, :, None]
    first, second = pair_index(D, layout)
    x1, x2 = x[..., first].to(math_dtype), x[..., second].to(math_dtype)
    out = torch.empty_like(x)
    out[..., first] = (x1 * c - x2 * s).to(x.dtype)
    out[..., second] = (x2 * c + x1 * s).to(x.dtype)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp32_math_rounded_once_passes(dtype):
    x, inv, pos = _inputs(dtype)
    assert_close_to(_rotate(x, inv, pos, "half", torch.float32), rope_fp64(x, inv, pos, "half"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_math_in_16_bits_fails(dtype):
    x, inv, pos = _inputs(dtype)
    wrong = _rotate(x, inv, pos, "half", dtype)  # forbidden: products and sums rounded to 16 bits
    with pytest.raises(AssertionError, match="exceeds|allowed"):
        assert_close_to(wrong, rope_fp64(x, inv, pos, "half"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_wrong_layout_fails(dtype):
    x, inv, pos = _inputs(dtype)
    wrong = _rotate(x, inv, pos, "interleaved", torch.float32)
    with pytest.raises(AssertionError):
        assert_close_to(wrong, rope_fp64(x, inv, pos, "half"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_two_ulps_off_fails(dtype):
    x, inv, pos = _inputs(dtype)
    right = _rotate(x, inv, pos, "half", torch.float32)
    expected = rope_fp64(x, inv, pos, "half")
    # one element moved two ulps away from the truth: more than any correct rounding allows
    i = int(expected.abs().flatten().argmax())
    wrong = right.clone().flatten()
    wrong[i] = (expected.flatten()[i] + 2 * ulp(expected.flatten()[i], dtype)).to(dtype)
    with pytest.raises(AssertionError):
        assert_close_to(wrong.view_as(right), expected)


def test_ropekit_reference_passes_the_tight_bound():
    """The reference backend (fp32 math, one rounding) meets the 1-ulp bound at long positions."""
    import ropekit as rk

    spec = rk.RopeSpec(head_dim=D)
    cos, sin = rk.cos_sin(spec, 8192)
    for dtype in (torch.bfloat16, torch.float16):
        x, inv, pos = _inputs(dtype, seed=1)
        y = rk.apply_rope(x, cos, sin, positions=pos, backend="reference")
        assert_close_to(y, rope_fp64(x, inv, pos, "half"))
