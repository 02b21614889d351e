"""The lean eager path: small CPU tensors, no gradient, outside torch.compile.

A call that needs nothing unusual skips the custom-op dispatch: it goes straight to the native
CPU kernel once that is loaded (``kernels.native``), and to ``kernels.eager`` until then (bit for
bit the reference in a third of its operators, cos/sin rows gathered once for q and k, no host
read of the positions).
Anything else (bad arguments included, so that the general path raises its clear errors) returns
None and takes the general path in ``ropekit.apply``.
"""

from __future__ import annotations

import torch

from .arguments import FORMATS, ROTATABLE_DTYPES, restore_view
from .kernels import cpu, native
from .kernels.eager import rotate_lean
from .kernels.huge_pages import new_output
from .kernels.reference import compute_dtype
from .layouts import LAYOUTS

__all__ = ["rotate_fast"]

_TENSOR, _STRIDED = torch.Tensor, torch.strided


def _rows(positions, offsets, B: int, S: int, n_rows: int):
    """(start, idx): a run of rows from ``start`` (idx None), or explicit rows ``idx`` [B|1, S];
    None when the general path must resolve (and check) the positions."""
    if positions is None:
        if offsets is None:
            start = 0
        elif type(offsets) is int:
            start = offsets
        else:
            return None
        if start < 0 or start + S > n_rows:
            return None
        return start, None
    if offsets is not None or type(positions) is not torch.Tensor or not positions.is_cpu:
        return None
    if positions.layout != torch.strided or positions.dtype not in (torch.int64, torch.int32):
        return None
    if positions.shape == (S,):
        positions = positions[None]
    elif positions.shape != (B, S):  # thd: B is 1, so [1, T] is covered too
        return None
    return 0, positions if positions.dtype == torch.int64 else positions.long()


def rotate_fast(tensors, cos, sin, layout, format, positions, offsets, inplace: bool, inverse: bool):
    """The rotated tensors (in the caller's format), or None when this call needs the general path.
    The caller has checked the tensors (``check_tensor``, ``check_qk``) and the flags, and has no
    backend, spec or cu_seqlens.  Each attribute is read once: on a decode step this Python is as
    long as the kernel."""
    if type(cos) is not _TENSOR or type(sin) is not _TENSOR or torch.compiler.is_compiling():
        return None
    table = cos.shape
    if len(table) != 2 or sin.shape != table or not (cos.is_cpu and sin.is_cpu):
        return None
    if cos.dtype not in ROTATABLE_DTYPES or sin.dtype not in ROTATABLE_DTYPES:
        return None
    if cos.layout != _STRIDED or sin.layout != _STRIDED:
        return None
    if not (layout is None or (type(layout) is str and layout in LAYOUTS)):
        return None
    x = tensors[0]
    dtype, want = x.dtype, 3 if format == "thd" else 4 if format in FORMATS else -1
    # (one tensor or q and k: the first and the last are all of them)
    grad = torch.is_grad_enabled() and (
        cos.requires_grad or sin.requires_grad or x.requires_grad or tensors[-1].requires_grad
    )
    n_rows, n = table
    if grad or n == 0:
        return None
    for t in tensors:  # (check_tensor has seen each: a dense tensor of a rotatable dtype)
        if not (type(t) is _TENSOR and t.dim() == want and t.dtype == dtype and t.is_cpu):
            return None
    views = tensors if format == "bshd" else [t.unsqueeze(0) if format == "thd" else t.transpose(1, 2) for t in tensors]
    B, S, _, D = views[0].shape
    if 2 * n > D or (len(views) == 2 and ((shape := views[1].shape)[0] != B or shape[1] != S or shape[3] != D)):
        return None
    rows = _rows(positions, offsets, B, S, n_rows)
    if rows is None:
        return None
    start, idx = rows
    interleaved = layout is not None and LAYOUTS[layout] == "interleaved"
    if cpu.ready():  # the native kernel is loaded (until then, and without it: lean eager)
        if n > native.MAX_PAIRS:
            return None
        outs = views if inplace else [new_output(v) for v in views]
        try:  # the kernel reads every position before it writes anything (no host read here)
            native.rotate_native(
                list(zip(views, outs)), cos, sin, idx, interleaved=interleaved, inverse=inverse, start=start
            )
        except native.PositionOutOfTable:
            return None  # the general path names the offending position
    else:
        if idx is None:
            c, s = cos[None, start : start + S], sin[None, start : start + S]  # views: no gather
        else:
            flat = idx.reshape(-1)  # gathered once for q and k
            try:  # index_select checks every row is in [0, n_rows) without a host read of the positions
                c, s = cos.index_select(0, flat), sin.index_select(0, flat)
            except IndexError:
                return None  # the general path names the offending position
            c, s = c.view(*idx.shape, n), s.view(*idx.shape, n)
        math = compute_dtype(x.dtype)
        if c.dtype != math:
            c, s = c.to(math), s.to(math)
        outs = rotate_lean(views, c, s, interleaved=interleaved, inverse=inverse, inplace=inplace)
    if inplace:
        return list(tensors)
    return outs if format == "bshd" else [restore_view(o, format) for o in outs]
