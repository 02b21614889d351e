"""The lean eager rotation: the reference's arithmetic in the fewest passes over memory.

For small tensors (decode steps, short prefills) a rotation costs its operator launches and
its passes over memory, not its arithmetic.  The reference spends a dozen operators per tensor
(slices, casts, two products and a sum per half, cat, empty, copies); this path spends four per
tensor, with the token rows of cos/sin gathered once for q and k together:

    p[first]  = x2 * -s         the cross products, written already swapped into place
    p[second] = x1 * s          (two half-size products into one buffer)
    out  = x_pairs * c          one product for both halves (c broadcast over the pair axis)
    out += p                    one contiguous sum: (x1 c - x2 s, x2 c + x1 s)

Every output element is ``round(round(x1 c) + round(-(x2 s)))``, exactly the reference's
``x1 * c - x2 * s`` (negation is exact, so ``a - p`` and ``a + (-p)`` are the same float, and
no two operators can be contracted into one fused multiply-add: each result is stored), so the
output is bit for bit the reference's (tested).  bf16/fp16 inputs are
cast to float32 once (their own copy, reused for the products) and the sums are rounded once
into x's dtype when copied into the output.

Not differentiable by design (callers use it only when no gradient is wanted); tables must
already be gathered: ``c``, ``s`` are ``[B or 1, S, R]`` in the compute dtype.

>>> import torch
>>> from ropekit.kernels.eager import rotate_lean
>>> from ropekit.kernels.reference import rotate_reference
>>> x = torch.randn(1, 3, 2, 8); cos, sin = torch.rand(3, 4), torch.rand(3, 4)
>>> pos = torch.arange(3)[None]
>>> (y,) = rotate_lean([x], cos[pos], sin[pos], interleaved=False, inverse=False, inplace=False)
>>> torch.equal(y, rotate_reference(x, cos, sin, pos, interleaved=False, inverse=False, inplace=False))
True
"""

from __future__ import annotations

import torch

__all__ = ["rotate_lean"]


def rotate_lean(tensors, c: torch.Tensor, s: torch.Tensor, *, interleaved: bool, inverse: bool, inplace: bool):
    """Rotate each ``[B, S, H, D]`` view in ``tensors`` by gathered rows ``c``, ``s`` ``[B|1, S, R]``
    (compute dtype); returns the outputs (the inputs themselves when ``inplace``)."""
    n = c.shape[-1]
    r = 2 * n
    s1 = s.unsqueeze(2)  # [B, S, 1, n]: shared by the heads
    s_first, s_second = (s1, -s1) if inverse else (-s1, s1)  # the inverse is the rotation by -angle
    # pair axis: (2, n) for the half layout (x1 = dims [0, n), x2 = [n, 2n)), (n, 2) interleaved
    split, axis = ((n, 2), -1) if interleaved else ((2, n), -2)
    cb = c.unsqueeze(2).unsqueeze(axis)  # [B, S, 1, n, 1] or [B, S, 1, 1, n]
    if tensors[0].dtype != c.dtype and len(tensors) > 1:
        return _rotate_lean_joint(tensors, cb, s_first, s_second, split, axis, inplace)
    outs = []
    for x in tensors:
        xr = x if r == x.shape[-1] else x.narrow(-1, 0, r)
        if xr.dtype != c.dtype:  # bf16/fp16: one cast up front (mixed-dtype products are slow)
            xr = xr.to(c.dtype)
        xv = xr.view(*x.shape[:-1], *split)
        p = torch.empty(xv.shape, dtype=c.dtype, device=x.device)
        # the cross products, swapped into place; read before anything is written (in place is safe)
        torch.mul(xv.select(axis, 1), s_first, out=p.select(axis, 0))
        torch.mul(xv.select(axis, 0), s_second, out=p.select(axis, 1))
        out = x if inplace else torch.empty_like(x)
        ov = (out if r == x.shape[-1] else out.narrow(-1, 0, r)).view(*x.shape[:-1], *split)
        if p.dtype == x.dtype:  # products in x's own dtype: build them in the output directly
            torch.mul(xv, cb, out=ov).add_(p)
        else:  # bf16/fp16: float32 products and sum, rounded once when written
            ov.copy_(xv.mul_(cb).add_(p))  # xv is our own float32 copy: reuse it
        if not inplace and r < x.shape[-1]:
            out.narrow(-1, r, x.shape[-1] - r).copy_(x.narrow(-1, r, x.shape[-1] - r))  # the tail passes through
        outs.append(out)
    return outs


def _rotate_lean_joint(tensors, cb, s_first, s_second, split, axis, inplace):
    """bf16/fp16 q and k: both are cast into one float32 buffer (heads side by side), rotated by
    one set of operators and rounded back into their outputs: half the operator launches."""
    r = split[0] * split[1]
    x = tensors[0]
    heads = [t.shape[2] for t in tensors]
    xf = torch.empty(*x.shape[:2], sum(heads), r, dtype=cb.dtype, device=x.device)
    parts = xf.split(heads, 2)
    for t, part in zip(tensors, parts):
        part.copy_(t if r == t.shape[-1] else t.narrow(-1, 0, r))
    xv = xf.view(*xf.shape[:-1], *split)
    p = torch.empty_like(xv)
    torch.mul(xv.select(axis, 1), s_first, out=p.select(axis, 0))
    torch.mul(xv.select(axis, 0), s_second, out=p.select(axis, 1))
    xv.mul_(cb).add_(p)  # float32 sums, rounded once when copied into each output
    outs = []
    for t, part in zip(tensors, parts):
        out = t if inplace else torch.empty_like(t)
        if r == t.shape[-1]:
            out.copy_(part)
        else:
            out.narrow(-1, 0, r).copy_(part)
            if not inplace:
                out.narrow(-1, r, t.shape[-1] - r).copy_(t.narrow(-1, r, t.shape[-1] - r))
        outs.append(out)
    return outs
