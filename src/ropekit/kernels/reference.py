"""The reference rotation: plain torch, any device, differentiable, the semantics every kernel
must reproduce.

Kernel contract (shared by every backend, see ``ropekit.apply``):
  x4   [B, S, H, D] view of the caller's tensor (any strides)
  cos, sin  compact tables [P, R] with R = rotary_dim / 2
  pos  [B, S] int64: row of the tables for each token (already validated to be < P)
Pairs are (i, i + R) for the half layout and (2i, 2i + 1) for interleaved; dims >= 2R pass
through.  ``inverse`` rotates by -angle (the exact inverse, and the backward of the forward).
"""

from __future__ import annotations

import torch

__all__ = ["rotate_reference", "compute_dtype", "eps"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: bf16/fp16 products and sums lose too much to be a rotation."""
    return torch.promote_types(dtype, torch.float32)


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype`` (the spacing of floats at 1.0; an ulp of a value in [1, 2)):
    the one unit every ulp-based error measure in ropekit counts in.

    >>> eps(torch.bfloat16), eps(torch.float64) == 2.0**-52
    (0.0078125, True)
    """
    return float(torch.finfo(dtype).eps)


def rotate_reference(
    x4: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    *,
    interleaved: bool,
    inverse: bool,
    inplace: bool,
) -> torch.Tensor:
    n_pairs = cos.shape[-1]
    r = 2 * n_pairs
    math_dtype = compute_dtype(x4.dtype)
    c = cos.to(math_dtype)[pos].unsqueeze(2)  # [B, S, 1, R]: one angle per token, shared by heads
    s = sin.to(math_dtype)[pos].unsqueeze(2)
    if inverse:
        s = -s
    xr = x4[..., :r].to(math_dtype)
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
    else:
        x1, x2 = xr[..., :n_pairs], xr[..., n_pairs:]
    o1 = x1 * c - x2 * s
    o2 = x2 * c + x1 * s
    rotated = torch.stack((o1, o2), dim=-1).flatten(-2) if interleaved else torch.cat((o1, o2), dim=-1)
    rotated = rotated.to(x4.dtype)
    if inplace:
        x4[..., :r].copy_(rotated)  # the tail (dims >= r) is neither read nor written
        return x4
    out = torch.empty_like(x4)
    out[..., :r] = rotated
    out[..., r:] = x4[..., r:]
    return out
