"""In-kernel angles (``spec=`` on triton): cos/sin from positions and fp64 frequencies with exact
fixed-point range reduction, proven within 1 fp32 ulp of the exactly rounded value (mpmath, 40
digits) at positions up to 2**24 — where an fp32 angle would be off by whole radians."""

import mpmath
import numpy as np
import pytest
import torch

import ropekit as rk
from ropekit.kernels.triton import cos_sin_triton, turns_fixed_point

from oracle import assert_close_to, rope_fp64

SPECS = [
    rk.RopeSpec(head_dim=128, base=500000.0),  # Llama 3 base
    rk.RopeSpec(head_dim=64, base=10000.0),
    rk.RopeSpec(
        head_dim=64, base=10000.0, scaling={"kind": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    ),
]
POSITIONS = torch.tensor(
    [
        0,
        1,
        2,
        3,
        7,
        100,
        4095,
        4096,
        65535,
        65536,
        1_000_003,
        8_388_607,
        8_388_608,
        12_345_677,
        2**24 - 3,
        2**24 - 1,
        2**24,
    ]
    + torch.randint(0, 2**24 + 1, (15,), generator=torch.Generator().manual_seed(0)).tolist()
)


def _exact(spec, positions):
    """cos/sin of p * inv_freq (the fp64 frequencies, taken as exact rationals) to 40 digits."""
    inv, factor = rk.inv_freq(spec)
    mpmath.mp.dps = 40
    f = mpmath.mpf(factor)
    cos = np.empty((len(positions), inv.numel()))
    sin = np.empty_like(cos)
    for a, p in enumerate(positions.tolist()):
        for b, w in enumerate(inv.tolist()):
            angle = mpmath.mpf(p) * mpmath.mpf(w)
            cos[a, b] = float(f * mpmath.cos(angle))
            sin[a, b] = float(f * mpmath.sin(angle))
    return torch.from_numpy(cos), torch.from_numpy(sin)


def _ulps(actual32, exact64):
    """|error| in units of the fp32 spacing at the exact value."""
    spacing = torch.from_numpy(np.spacing(np.abs(exact64.numpy()).astype(np.float32)).astype(np.float64))
    return (actual32.double() - exact64).abs() / spacing


@pytest.mark.parametrize("spec", SPECS, ids=["llama3-base", "base1e4", "yarn"])
def test_in_kernel_cos_sin_within_one_fp32_ulp_up_to_2_24(spec):
    inv, factor = rk.inv_freq(spec)
    cos, sin = cos_sin_triton(turns_fixed_point(inv), POSITIONS, factor)
    cos64, sin64 = _exact(spec, POSITIONS)
    worst = max(_ulps(cos, cos64).max().item(), _ulps(sin, sin64).max().item())
    assert worst <= 1.0, f"in-kernel cos/sin off by {worst:.2f} fp32 ulp"
    # the test can fail: an fp32 angle (what a naive kernel computes) is far outside 1 ulp here
    naive = (POSITIONS.float()[:, None] * inv.float()).cos() * factor
    assert _ulps(naive, cos64).max().item() > 1e3


def test_fixed_point_turns_are_exact_fractions():
    # 2 pi * (hi * 2**32 + lo) / 2**96 reproduces inv_freq mod 2 pi to ~2**-90 rad
    inv = torch.tensor([1.0, 0.5, 1e-4, 3.0], dtype=torch.float64)
    fixed = turns_fixed_point(inv)
    mpmath.mp.dps = 50
    for w, (hi, lo) in zip(inv.tolist(), fixed.tolist()):
        n = (hi % 2**64) * 2**32 + lo
        turns = mpmath.mpf(n) / 2**96
        exact = mpmath.mpf(w) / (2 * mpmath.pi)
        assert abs(turns - (exact - mpmath.floor(exact))) < mpmath.mpf(2) ** -90


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_apply_rope_with_spec_on_triton_matches_oracle_at_large_positions(layout):
    spec = rk.RopeSpec(head_dim=80, rotary_dim=40, layout=layout, base=500000.0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 80, generator=g)
    pos = torch.tensor([[0, 1, 2**24 - 1, 2**24], [5, 123_456, 9_999_999, 77]])
    y = rk.apply_rope(x, spec=spec, positions=pos, backend="triton")
    inv, _ = rk.inv_freq(spec)
    assert_close_to(y, rope_fp64(x, inv, pos, layout))
    # the same through the reference backend (exact fp64 rows for these tokens)
    y_ref = rk.apply_rope(x, spec=spec, positions=pos, backend="reference")
    assert (y - y_ref).abs().max().item() <= 4e-6
    # and the inverse undoes it
    back = rk.apply_rope(y, spec=spec, positions=pos, backend="triton", inverse=True)
    assert (back - x).abs().max().item() <= 4e-6


def test_apply_rope_qk_with_spec_uses_attention_factor():
    spec = rk.RopeSpec(head_dim=64, scaling={"kind": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048})
    inv, factor = rk.inv_freq(spec)
    assert factor != 1.0
    q, k = torch.randn(1, 6, 4, 64), torch.randn(1, 6, 2, 64)
    yq, yk = rk.apply_rope_qk(q, k, spec=spec, offsets=70_000, backend="triton")
    pos = torch.arange(6)[None] + 70_000
    assert_close_to(yq, rope_fp64(q, inv, pos, "half", attention_factor=factor))
    assert_close_to(yk, rope_fp64(k, inv, pos, "half", attention_factor=factor))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, s: rk.apply_rope(x, torch.ones(4, 4), torch.ones(4, 4), spec=s), "not both"),
        (lambda x, s: rk.apply_rope(x, spec=s, layout="interleaved"), "disagrees with spec.layout"),
        (lambda x, s: rk.apply_rope(x, spec="llama"), "spec must be a ropekit.RopeSpec"),
        (lambda x, s: rk.apply_rope(x), "cos and sin are required"),
        (lambda x, s: rk.apply_rope(x, spec=s, offsets=2**31, backend="triton"), "2147483647"),
    ],
)
def test_spec_mode_bad_input(call, match):
    spec = rk.RopeSpec(head_dim=8)
    with pytest.raises(rk.RopeError, match=match):
        call(torch.randn(1, 4, 2, 8), spec)


def test_in_kernel_angle_grads_match_reference_with_attention_factor():
    # the backward of the scaled rotation f R(theta) is f R(-theta): same kernel, same factor
    spec = rk.RopeSpec(head_dim=16, scaling={"kind": "yarn", "factor": 4.0, "original_max_position_embeddings": 64})
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 3, 2, 16, generator=g)
    k = torch.randn(1, 3, 1, 16, generator=g)
    up = (torch.randn(1, 3, 2, 16, generator=g), torch.randn(1, 3, 1, 16, generator=g))
    grads = {}
    for backend in ("triton", "reference"):
        a, b = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        torch.autograd.backward(rk.apply_rope_qk(a, b, spec=spec, offsets=1000, backend=backend), up)
        grads[backend] = (a.grad, b.grad)
    for t, r in zip(grads["triton"], grads["reference"]):
        assert (t - r).abs().max().item() <= 4e-6
