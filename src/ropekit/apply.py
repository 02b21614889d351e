"""apply_rope / apply_rope_qk / apply_rope_qkv: the public rotation functions.

Every call is checked (``arguments``, ``positions``), prepared into the one kernel contract and
handed to a backend (``dispatch``); small eager CPU calls take the lean path (``fastpath``).
Everything after ``sin`` is keyword-only, in the same order in all three functions.

>>> import ropekit as rk, torch
>>> spec = rk.RopeSpec(head_dim=8)
>>> cos, sin = rk.cos_sin(spec, 16)
>>> q = torch.randn(2, 5, 3, 8)                               # bshd
>>> y = rk.apply_rope(q, cos, sin)
>>> torch.allclose(rk.apply_rope(y, cos, sin, inverse=True), q, atol=1e-6)
True
"""

from __future__ import annotations

import torch

from .arguments import (
    FORMATS,
    check_flag,
    check_inplace_targets,
    check_qk,
    check_tensor,
    restore_view,
    shape_str,
)
from .dispatch import BACKENDS, check_values, prepare, select_backend, table_grad_route
from .errors import RopeArgumentError, RopeShapeError, RopeTypeError, short_repr
from .fastpath import rotate_fast
from .kernels.reference import rotate_reference
from .positions import resolve_positions

__all__ = [
    "apply_rope",
    "apply_rope_qk",
    "apply_rope_qkv",
    "FORMATS",
    "BACKENDS",
    "resolve_positions",
    "select_backend",
]


def _check_flags(inplace, inverse, tensors, names) -> None:
    check_flag("inplace", inplace), check_flag("inverse", inverse)
    if inplace and check_values():  # strides are host facts: checked by the eager calls, not while tracing
        check_inplace_targets(tensors, names)


def _fast(tensors, cos, sin, inplace, inverse, layout, format, positions, offsets, cu_seqlens, backend, spec):
    """The lean path's results, or None (then the general path takes the call)."""
    if backend is not None or spec is not None or cu_seqlens is not None:
        return None
    return rotate_fast(tensors, cos, sin, layout, format, positions, offsets, inplace, inverse)


def _rotate(tensors, names, cos, sin, *, inplace, inverse, fast_tried=False, **where):
    """Rotate one or more tensors (q and k) by the same positions; returns the results."""
    if not fast_tried:
        fast = _fast(tensors, cos, sin, inplace, inverse, **where)
        if fast is not None:
            return fast
    # imported here, after the lean path: registering the custom ops costs ~50 ms once per process,
    # which a first call that never reaches them (no grad, no torch.compile) should not pay
    from .kernels import ops

    views, layout, cos, sin, pos, impl = prepare(tensors, names, cos, sin, **where)
    if len(views) == 2:
        q4, k4 = views
        if q4.shape[:2] != k4.shape[:2]:
            raise RopeShapeError(
                f"q {shape_str(tensors[0])} and k {shape_str(tensors[1])} must agree on batch and sequence "
                f"(format={where['format']!r})"
            )
        if q4.dtype != k4.dtype:
            raise RopeShapeError(f"q has dtype {q4.dtype} but k has {k4.dtype}; rotate them in one dtype")
    if impl == "triton_freqs" and where["spec"].angle_sign < 0:
        # in-kernel angles come from the (positive) frequencies; a spec turning by -angle is the
        # kernel's inverse rotation (tables built from the spec carry the sign in sin instead)
        inverse = not inverse
    interleaved = layout == "interleaved"
    fmt = where["format"]
    if table_grad_route(cos, sin, impl):
        kw = dict(interleaved=interleaved, inverse=inverse, inplace=inplace)
        outs = [rotate_reference(v, cos, sin, pos, **kw) for v in views]
        return list(tensors) if inplace else [restore_view(o, fmt) for o in outs]
    outs = ops.rotate(views, cos, sin, pos, interleaved, inverse, impl, inplace)
    return list(tensors) if inplace else [restore_view(o, fmt) for o in outs]


def apply_rope(
    x: torch.Tensor,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    *,
    layout: str | None = None,
    format: str = "bshd",
    positions=None,
    offsets=None,
    cu_seqlens=None,
    inplace: bool = False,
    inverse: bool = False,
    backend: str | None = None,
    spec=None,
) -> torch.Tensor:
    """Rotate ``x`` by compact ``cos``/``sin`` tables (from ``ropekit.cos_sin``).

    layout: ``"half"`` (NeoX/transformers, the default) or ``"interleaved"`` (GPT-J/Meta);
    rotary_dim is ``2 * cos.shape[-1]`` and the remaining dims of each head pass through untouched.
    format: ``"bshd"`` (default), ``"bhsd"`` (transformers) or ``"thd"`` (packed, with cu_seqlens).
    positions: when given, ``cos``/``sin`` are full tables indexed by it (``[S]``, ``[B, S]`` or
    ``[T]``); when absent, row ``i + offset`` belongs to sequence index ``i``.
    offsets: int or one per batch row / sequence (KV-cache decoding, context-parallel shards).
    inverse: rotate backwards (undoes the forward rotation exactly, up to rounding; with an
    attention factor baked into the tables it is the transpose, which scales by it again).
    backend: ``None`` picks by device (CUDA: triton; CPU: the compiled cpu path), or force
    ``"reference"`` | ``"cpu"`` | ``"triton"``.
    spec: instead of tables, a ``RopeSpec``: angles come from its fp64 frequencies for exactly the
    tokens' positions (triton computes them inside the kernel, with no table at all, to within
    1 fp32 ulp; the other backends build exact fp64 rows for those tokens).  ``layout`` then
    defaults to ``spec.layout``.  spec= prepares frequencies on the host, so it is an eager-mode
    form: inside ``torch.compile`` pass tables.
    Math in at least float32; the result has x's dtype.  Works with autograd (out of place) and,
    with tables, under ``torch.compile(fullgraph=True)`` (one custom op, no graph break).

    >>> import ropekit as rk, torch
    >>> spec = rk.RopeSpec(head_dim=8)
    >>> x = torch.randn(1, 4, 2, 8)
    >>> cos, sin = rk.cos_sin(spec, 4)
    >>> torch.allclose(rk.apply_rope(x, spec=spec), rk.apply_rope(x, cos, sin), atol=1e-6)
    True
    """
    check_tensor(x, "x")
    _check_flags(inplace, inverse, [x], ["x"])
    fast = _fast((x,), cos, sin, inplace, inverse, layout, format, positions, offsets, cu_seqlens, backend, spec)
    if fast is not None:
        return fast[0]
    where = dict(layout=layout, format=format, positions=positions, offsets=offsets, cu_seqlens=cu_seqlens)
    return _rotate(
        [x], ["x"], cos, sin, inplace=inplace, inverse=inverse, fast_tried=True, backend=backend, spec=spec, **where
    )[0]


def apply_rope_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    *,
    layout: str | None = None,
    format: str = "bshd",
    positions=None,
    offsets=None,
    cu_seqlens=None,
    inplace: bool = False,
    inverse: bool = False,
    backend: str | None = None,
    spec=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rope`` to queries and keys with the same positions (head counts may differ: GQA).
    On triton both are rotated in one launch (each token's cos/sin loaded once for all heads).

    >>> import ropekit as rk, torch
    >>> cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=64), 8)
    >>> q, k = rk.apply_rope_qk(torch.randn(1, 8, 32, 64), torch.randn(1, 8, 8, 64), cos, sin)
    >>> q.shape[2], k.shape[2]
    (32, 8)
    """
    check_qk(q, k, format)
    _check_flags(inplace, inverse, [q, k], ["q", "k"])
    fast = _fast((q, k), cos, sin, inplace, inverse, layout, format, positions, offsets, cu_seqlens, backend, spec)
    if fast is not None:
        return fast[0], fast[1]
    where = dict(layout=layout, format=format, positions=positions, offsets=offsets, cu_seqlens=cu_seqlens)
    yq, yk = _rotate(
        [q, k],
        ["q", "k"],
        cos,
        sin,
        inplace=inplace,
        inverse=inverse,
        fast_tried=True,
        backend=backend,
        spec=spec,
        **where,
    )
    return yq, yk


def _count(name: str, n) -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int):
        raise RopeTypeError(f"{name}={short_repr(n)} must be a positive int")
    if n < 1:
        raise RopeArgumentError(f"{name}={n} must be a positive int")
    return n


def _qkv_heads(qkv: torch.Tensor, n_q_heads, n_kv_heads, token_dims: int, spec) -> tuple[int, int, int]:
    """(n_q_heads, n_kv_heads, head_dim): the counts given, the missing one derived from the
    shape (heads explicit, or head_dim known from spec=)."""
    n_q, n_kv = _count("n_q_heads", n_q_heads), _count("n_kv_heads", n_kv_heads)
    if qkv.dim() == token_dims + 2:
        total, head_dim = qkv.shape[-2], qkv.shape[-1]
    elif qkv.dim() == token_dims + 1:
        total = head_dim = None
        if spec is not None and hasattr(spec, "head_dim") and qkv.shape[-1] % spec.head_dim == 0:
            head_dim = spec.head_dim
            total = qkv.shape[-1] // head_dim
    else:
        raise RopeShapeError(
            f"qkv {shape_str(qkv)} has {qkv.dim()} dims; it needs {token_dims + 1} (heads flattened) "
            f"or {token_dims + 2}"
        )
    if total is not None and (n_q is None) != (n_kv is None):
        n_q = total - 2 * n_kv if n_q is None else n_q
        n_kv = (total - n_q) // 2 if n_kv is None else n_kv
        if n_q < 1 or n_kv < 1 or n_q + 2 * n_kv != total:
            raise RopeShapeError(
                f"qkv {shape_str(qkv)} has {total} heads, which is not n_q_heads + 2 * n_kv_heads "
                f"for n_q_heads={n_q_heads!r}, n_kv_heads={n_kv_heads!r}"
            )
    if n_q is None or n_kv is None:
        raise RopeArgumentError(
            f"qkv {shape_str(qkv)}: pass n_q_heads and n_kv_heads (one is enough when the heads are a dim "
            f"of qkv or spec= gives head_dim)"
        )
    heads = n_q + 2 * n_kv
    if head_dim is None:
        if qkv.shape[-1] % heads:
            raise RopeShapeError(
                f"qkv {shape_str(qkv)}: last dim {qkv.shape[-1]} is not divisible by "
                f"n_q_heads + 2 * n_kv_heads = {heads}"
            )
        head_dim = qkv.shape[-1] // heads
    elif total != heads:
        raise RopeShapeError(f"qkv {shape_str(qkv)} has {total} heads; n_q_heads + 2 * n_kv_heads = {heads}")
    return n_q, n_kv, head_dim


def apply_rope_qkv(
    qkv: torch.Tensor,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    *,
    n_q_heads: int | None = None,
    n_kv_heads: int | None = None,
    layout: str | None = None,
    format: str = "bshd",
    positions=None,
    offsets=None,
    cu_seqlens=None,
    inplace: bool = False,
    inverse: bool = False,
    backend: str | None = None,
    spec=None,
) -> torch.Tensor:
    """Rotate the q and k heads of a packed projection; v passes through.

    qkv: ``[B, S, Hq + 2 Hkv, D]`` (or ``[T, Hq + 2 Hkv, D]`` for thd) or its fused-projection
    form with the heads flattened, ``[B, S, (Hq + 2 Hkv) * D]``.  Heads are ordered q, k, v, so
    the q and k heads are one contiguous head range: one kernel launch rotates them all.
    Returns a tensor shaped like ``qkv`` (in place: ``qkv`` itself, v untouched; out of place:
    a new tensor with v copied).  format ``"bhsd"`` is not a packed layout and is refused.

    >>> import ropekit as rk, torch
    >>> cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=8), 5)
    >>> qkv = torch.randn(2, 5, (4 + 2 * 2) * 8)
    >>> out = rk.apply_rope_qkv(qkv, cos, sin, n_q_heads=4, n_kv_heads=2)
    >>> q, k = rk.apply_rope_qk(qkv.view(2, 5, 8, 8)[:, :, :4], qkv.view(2, 5, 8, 8)[:, :, 4:6], cos, sin)
    >>> torch.equal(out.view(2, 5, 8, 8)[:, :, :6], torch.cat([q, k], 2)), torch.equal(out[..., 48:], qkv[..., 48:])
    (True, True)
    """
    check_tensor(qkv, "qkv")
    if format not in ("bshd", "thd"):
        raise RopeArgumentError(f"format={short_repr(format)}: packed qkv supports 'bshd' or 'thd'")
    token_dims = 2 if format == "bshd" else 1
    n_q, n_kv, head_dim = _qkv_heads(qkv, n_q_heads, n_kv_heads, token_dims, spec)
    _check_flags(inplace, inverse, [qkv], ["qkv"])
    packed = qkv.unflatten(-1, (n_q + 2 * n_kv, head_dim)) if qkv.dim() == token_dims + 1 else qkv
    where = dict(layout=layout, format=format, positions=positions, offsets=offsets, cu_seqlens=cu_seqlens)
    kw = dict(backend=backend, spec=spec, inverse=inverse, **where)
    out = packed if inplace else packed.clone()
    # q and k are adjacent heads: one head range, one launch, rotated in the output buffer
    if inplace or not (torch.is_grad_enabled() and qkv.requires_grad):
        _rotate([out[..., : n_q + n_kv, :]], ["qkv"], cos, sin, inplace=True, **kw)
        return qkv if inplace else out.reshape(qkv.shape)
    # differentiable: rotate out of place and assemble (autograd sees the custom op)
    (qk,) = _rotate([packed[..., : n_q + n_kv, :]], ["qkv"], cos, sin, inplace=False, **kw)
    return torch.cat([qk, packed[..., n_q + n_kv :, :]], -2).reshape(qkv.shape)
