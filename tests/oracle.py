"""The fp64 ground truth every rotation in the test suite is measured against.

Written independently of ropekit's tables and kernels: angles are float64 outer products of
positions and inverse frequencies, and the rotation is a complex multiplication of the pairs
(which layout pairs which dims is spelled out here, not imported).
"""

from __future__ import annotations

import torch

# per-dtype (atol, rtol) for rotations whose math runs in fp32 and output is rounded to dtype
TOLERANCES = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 2e-6),
    torch.bfloat16: (2e-2, 1.6e-2),
    torch.float16: (2e-3, 2e-3),
}


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


def assert_close_to(actual: torch.Tensor, expected64: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    atol, rtol = TOLERANCES[dtype or actual.dtype]
    err = (actual.to(torch.float64) - expected64).abs()
    bound = atol + rtol * expected64.abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"max abs err {err.max().item():.3e} exceeds tolerance (atol={atol}, rtol={rtol})"
