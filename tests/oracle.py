"""The fp64 ground truth every rotation in the test suite is measured against.

Written independently of ropekit's tables and kernels: angles are float64 outer products of
positions and inverse frequencies, and the rotation is a complex multiplication of the pairs
(which layout pairs which dims is spelled out here, not imported).
"""

from __future__ import annotations

import torch

# per-dtype (atol, rtol) for fp32/fp64 outputs of rotations whose math runs in fp32 or wider
TOLERANCES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 2e-6),
}
#: 16-bit outputs are held to ulps: a kernel that does its math in fp32 and rounds once is within
#: 0.5 ulp of the exact value plus the fp32 error of the products; 1 ulp leaves room for that error
#: wherever the result is not much smaller than its inputs
ULP_DTYPES = (torch.bfloat16, torch.float16)
ULPS_16BIT = 1.0
#: where a pair cancels (x1 cos - x2 sin << |x|), fp32 products err by a few 2**-24 of |x| in
#: absolute terms, which can be many ulps of the small result: allowed as an absolute term
CANCEL_FP32_ULPS = 8.0


def pair_index(head_dim_rot: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (first, second) of each rotating pair inside the rotary dims."""
    half = head_dim_rot // 2
    i = torch.arange(half)
    if layout in ("half", "neox"):
        return i, i + half
    return 2 * i, 2 * i + 1


def rope_fp64(
    x: torch.Tensor,
    inv_freq: torch.Tensor,
    positions: torch.Tensor,
    layout: str,
    attention_factor: float = 1.0,
    inverse: bool = False,
) -> torch.Tensor:
    """Rotate x [..., tokens, heads, D] (bshd-like: positions broadcast over the leading dims
    ending in tokens) in float64.  positions: float64-convertible, shape x.shape[:-2] or a suffix."""
    x64 = x.to(torch.float64)
    r = 2 * inv_freq.numel()
    first, second = pair_index(r, layout)
    angles = positions.to(torch.float64)[..., None] * inv_freq.to(torch.float64)  # [..., tokens, r/2]
    rot = torch.polar(torch.full_like(angles, attention_factor), -angles if inverse else angles)
    z = torch.complex(x64[..., first], x64[..., second]) * rot.unsqueeze(-2)
    out = x64.clone()
    out[..., first] = z.real
    out[..., second] = z.imag
    return out


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64: the only honest summary (a mean of signed errors can cancel)."""
    return (a.to(torch.float64) - b.to(torch.float64)).abs().max().item()


def ulp(values64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype`` floats at each value (subnormal spacing below the normal range)."""
    info = torch.finfo(dtype)
    mag = values64.abs().clamp_min(info.tiny)
    return torch.exp2(torch.floor(torch.log2(mag))) * info.eps


def tolerance(expected64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Allowed |actual - expected| per element for outputs of ``dtype``."""
    if dtype in ULP_DTYPES:
        scale = expected64.abs().max() if expected64.numel() else torch.tensor(0.0, dtype=torch.float64)
        return ULPS_16BIT * ulp(expected64, dtype) + CANCEL_FP32_ULPS * 2.0**-24 * scale
    atol, rtol = TOLERANCES[dtype]
    return atol + rtol * expected64.abs()


def assert_close_to(actual: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """actual is within ``tolerance`` of the fp64 truth everywhere (16-bit: 1 ulp of the expected
    value plus a cancellation term; fp32/fp64: atol + rtol * |expected|)."""
    dtype = dtype or actual.dtype
    expected64 = expected64.to(torch.float64)
    err = (actual.to(torch.float64) - expected64).abs()
    bound = tolerance(expected64, dtype)
    worst = (err - bound).max().item() if err.numel() else 0.0
    if worst > 0:
        i = int((err - bound).flatten().argmax())
        e, b = expected64.flatten()[i].item(), bound.flatten()[i].item()
        raise AssertionError(
            f"max abs err {err.max().item():.3e}; worst element {i}: expected {e!r}, got "
            f"{actual.flatten()[i].item()!r}, error {err.flatten()[i].item():.3e} > allowed {b:.3e} ({dtype})"
        )
