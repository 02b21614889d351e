"""Argument checks of the rotation functions: formats, flags, tensors, tables, in-place aliasing.

Each check raises one ropekit error naming the parameter and its value (values shown by
``errors.short_repr``, so a message stays a line even for a tensor of a billion elements).
``apply`` runs them before any kernel sees a tensor; every backend then relies on them.

>>> import torch
>>> from ropekit.arguments import check_flag, overlaps
>>> check_flag("inverse", True)
True
>>> buf = torch.zeros(2, 3, 6, 8)                       # a fused q/k buffer: 4 q heads, 2 k heads
>>> overlaps(buf[:, :, :4], buf[:, :, 4:]), overlaps(buf[:, :, :4], buf[:, :, 3:])
(False, True)
"""

from __future__ import annotations

import torch

from .errors import RopeArgumentError, RopeShapeError, RopeTypeError, short_repr

__all__ = [
    "FORMATS",
    "ROTATABLE_DTYPES",
    "shape_str",
    "check_format",
    "check_flag",
    "check_tensor",
    "check_tables",
    "canonical_view",
    "restore_view",
    "token_dims",
    "check_qk",
    "self_overlaps",
    "overlaps",
    "check_inplace_targets",
]

FORMATS = ("bshd", "bhsd", "thd")
#: dtypes a rotation reads and writes (math in at least float32); float8 has no arithmetic of its own
ROTATABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in t.shape) + "]"


def check_format(format) -> str:
    if not isinstance(format, str) or format not in FORMATS:
        raise RopeArgumentError(f"format={short_repr(format)} must be one of {FORMATS}")
    return format


def check_flag(name: str, value) -> bool:
    """A flag is a real bool: ``inverse="no"`` would otherwise count as True."""
    if not isinstance(value, bool):
        raise RopeTypeError(f"{name}={short_repr(value)} must be True or False")
    return value


def check_tensor(x, name: str) -> torch.Tensor:
    """A dense, floating-point tensor of a dtype the kernels rotate."""
    if not isinstance(x, torch.Tensor):
        raise RopeTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.layout != torch.strided:
        raise RopeArgumentError(f"{name} has layout {x.layout}; rotation needs a dense (strided) tensor")
    if x.dtype not in ROTATABLE_DTYPES:
        raise RopeShapeError(
            f"{name} has dtype {x.dtype}; rotation needs one of "
            f"{', '.join(str(d).removeprefix('torch.') for d in ROTATABLE_DTYPES)} (a floating-point tensor)"
        )
    if x.dim() == 0:
        raise RopeShapeError(f"{name} is a 0-d tensor; it needs at least a head dim and token dims")
    return x


def check_tables(x: torch.Tensor, cos, sin, name: str) -> None:
    """cos/sin are compact tables on x's device that rotate at most x's head_dim."""
    for label, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or t.dtype not in ROTATABLE_DTYPES or t.layout != torch.strided:
            what = type(t).__name__ if not isinstance(t, torch.Tensor) else f"{t.dtype} {t.layout}"
            raise RopeShapeError(f"{label} must be a dense floating-point tensor (from ropekit.cos_sin), got {what}")
        if t.device != x.device:
            raise RopeShapeError(f"{label} is on {t.device} but {name} is on {x.device}; move one of them")
    if cos.shape != sin.shape:
        raise RopeShapeError(f"cos {shape_str(cos)} and sin {shape_str(sin)} must have the same shape")
    if cos.dim() not in (2, 3):
        raise RopeShapeError(
            f"cos {shape_str(cos)} must be a compact table [positions, rotary_dim/2] "
            f"(or [batch, seq, rotary_dim/2] already gathered per batch)"
        )
    if 2 * cos.shape[-1] > x.shape[-1]:
        raise RopeShapeError(
            f"cos {shape_str(cos)} rotates {2 * cos.shape[-1]} dims but {name} {shape_str(x)} has head_dim "
            f"{x.shape[-1]}; tables are compact (one column per pair), not transformers' duplicated form"
        )


def canonical_view(x: torch.Tensor, format: str, name: str) -> torch.Tensor:
    """``x`` as ``[B, S, H, D]``: bhsd through a transpose, thd as one batch of T tokens."""
    want = 3 if format == "thd" else 4
    if x.dim() != want:
        raise RopeShapeError(f"{name} {shape_str(x)} has {x.dim()} dims; format={format!r} needs {want}")
    if format == "bshd":
        return x
    if format == "bhsd":
        return x.transpose(1, 2)
    return x.unsqueeze(0)


def restore_view(y4: torch.Tensor, format: str) -> torch.Tensor:
    """The inverse of ``canonical_view``."""
    if format == "bhsd":
        return y4.transpose(1, 2)
    if format == "thd":
        return y4.squeeze(0)
    return y4


def token_dims(t: torch.Tensor, format: str) -> tuple[int, ...]:
    """The dims that index tokens: (batch, seq) for bshd/bhsd, (tokens,) for thd."""
    if format == "thd":
        return tuple(t.shape[:1])
    seq_dim = 2 if format == "bhsd" else 1
    return (t.shape[0], t.shape[seq_dim]) if t.dim() > seq_dim else tuple(t.shape)


def check_qk(q, k, format: str) -> None:
    check_tensor(q, "q"), check_tensor(k, "k")
    if format == "bshd" and q.dim() == 4 and k.dim() == 4:  # the decode hot path: the same test, fewer tuples
        qs, ks = q.shape, k.shape
        if qs[0] == ks[0] and qs[1] == ks[1] and qs[3] == ks[3]:
            return
    if q.dim() == k.dim() and (token_dims(q, format) != token_dims(k, format) or q.shape[-1] != k.shape[-1]):
        raise RopeShapeError(
            f"q {shape_str(q)} and k {shape_str(k)} must agree on batch, sequence and head_dim (format={format!r})"
        )


# ---------------------------------------------------------------------------------------------
# in-place aliasing: a rotation written over its own input must read every element exactly once
# ---------------------------------------------------------------------------------------------
# Element offsets are computed from sizes and strides (public Tensor API); a tensor's storage is
# identified by ``untyped_storage().data_ptr()``.  We refuse rather than compute "correctly": a
# self-overlapping or doubly-passed tensor has no single right answer (rotating q when q is k
# rotates every element twice, and which of the two writes wins depends on the kernel).


def _dims(t: torch.Tensor) -> list[tuple[int, int]]:
    """(stride, size) of the dims that matter (size > 1), smallest stride first."""
    return sorted((abs(st), n) for st, n in zip(t.stride(), t.shape) if n > 1)


def self_overlaps(t: torch.Tensor) -> bool:
    """True when two elements of ``t`` may share memory (an expanded tensor, for one).  Exact for
    every layout whose strides nest (each stride > the span of all smaller ones), which covers
    contiguous tensors, their views, transposes and slices; other layouts count as overlapping."""
    if t.is_contiguous():  # contiguous strides nest: the loop below would find no overlap
        return False
    span = 0  # furthest element reached by the dims seen so far
    for stride, size in _dims(t):
        if stride <= span:
            return True
        span += stride * (size - 1)
    return False


def _storage_range(t: torch.Tensor) -> tuple[int, int, int]:
    """(storage address, first byte, one past the last byte) of ``t``'s elements."""
    item = t.element_size()
    lo = t.storage_offset() + sum(st * (n - 1) for st, n in zip(t.stride(), t.shape) if st < 0)
    hi = t.storage_offset() + sum(st * (n - 1) for st, n in zip(t.stride(), t.shape) if st > 0)
    return t.untyped_storage().data_ptr(), lo * item, (hi + 1) * item


def _address_range(t: torch.Tensor) -> tuple[int, int]:
    """(first byte, one past the last byte) of ``t``'s elements in the address space: cheaper than
    its storage (no storage object), and two tensors whose ranges are disjoint share nothing."""
    item, base = t.element_size(), t.data_ptr()
    lo = sum(st * (n - 1) for st, n in zip(t.stride(), t.shape) if st < 0)
    hi = sum(st * (n - 1) for st, n in zip(t.stride(), t.shape) if st > 0)
    return base + lo * item, base + (hi + 1) * item


def _translate_hits(strides, sizes_a, sizes_b, delta: int) -> bool:
    """Whether ``sum(d_i * strides[i]) == delta`` has a solution with ``-sizes_b[i] < d_i <
    sizes_a[i]``: an element of a equals one of b shifted by ``delta`` (same strides).  Depth-first
    from the largest stride; the smaller dims bound how far the remainder can still move."""
    if not strides:
        return delta == 0
    *rest, stride = strides
    *rest_a, size_a = sizes_a
    *rest_b, size_b = sizes_b
    reach = sum(st * (max(na, nb) - 1) for st, na, nb in zip(rest, rest_a, rest_b))
    lo = max(-size_b + 1, -((reach - delta) // stride))  # ceil((delta - reach) / stride)
    hi = min(size_a - 1, (delta + reach) // stride)
    return any(_translate_hits(rest, rest_a, rest_b, delta - d * stride) for d in range(lo, hi + 1))


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` may share an element.  Exact for views with the same strides
    (q and k heads of one fused buffer); otherwise any shared byte range counts as overlapping."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    (start_a, end_a), (start_b, end_b) = _address_range(a), _address_range(b)
    if end_a <= start_b or end_b <= start_a:  # disjoint in memory (the common case: q and k apart)
        return False
    store_a, lo_a, hi_a = _storage_range(a)
    store_b, lo_b, hi_b = _storage_range(b)
    if store_a != store_b or hi_a <= lo_b or hi_b <= lo_a:
        return False
    if a.element_size() != b.element_size() or a.stride() != b.stride() or a.dim() != b.dim():
        return True
    dims = sorted((st, na, nb) for st, na, nb in zip(a.stride(), a.shape, b.shape) if na > 1 or nb > 1)
    if any(st <= 0 for st, _, _ in dims) or self_overlaps(a) or self_overlaps(b):
        return True
    delta = b.storage_offset() - a.storage_offset()
    return _translate_hits([d[0] for d in dims], [d[1] for d in dims], [d[2] for d in dims], delta)


def check_inplace_targets(tensors, names) -> None:
    """In place, every element is read once and written once: no tensor overlaps itself or
    another one (``apply_rope_qk(q, q, ..., inplace=True)`` would rotate q twice)."""
    for t, name in zip(tensors, names):
        if self_overlaps(t):
            raise RopeArgumentError(
                f"inplace=True but {name} {shape_str(t)} (strides {list(t.stride())}) has elements that share "
                f"memory (an expanded tensor?); pass inplace=False or a contiguous copy"
            )
    for i in range(len(tensors)):
        for j in range(i + 1, len(tensors)):
            if overlaps(tensors[i], tensors[j]):
                raise RopeArgumentError(
                    f"inplace=True but {names[i]} and {names[j]} share memory, so in place would rotate the shared "
                    f"elements twice; pass inplace=False or separate tensors"
                )
