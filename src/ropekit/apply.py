"""apply_rope / apply_rope_qk: argument checking, position resolution, and the one dispatcher.

Every format is viewed as ``[B, S, H, D]`` (``bhsd`` through a transpose, ``thd`` as one batch
of T tokens) and every position form becomes one int64 table-row index per token ``[B, S]``.
Backends therefore see a single contract (``kernels.reference``) whatever the caller passed.

>>> import ropekit as rk, torch
>>> spec = rk.RopeSpec(head_dim=8)
>>> cos, sin = rk.cos_sin(spec, 16)
>>> q = torch.randn(2, 5, 3, 8)                               # bshd
>>> y = rk.apply_rope(q, cos, sin)
>>> torch.allclose(rk.apply_rope(y, cos, sin, inverse=True), q, atol=1e-6)
True
"""

from __future__ import annotations

from typing import Callable

import torch

from .errors import RopePositionError, RopeShapeError
from .kernels.reference import rotate_reference
from .spec import normalize_layout
from .tables import as_positions

__all__ = ["apply_rope", "apply_rope_qk", "FORMATS", "BACKENDS", "resolve_positions", "select_backend"]

FORMATS = ("bshd", "bhsd", "thd")
BACKENDS = ("reference", "cpu", "triton")

KernelFn = Callable[..., torch.Tensor]


# ---------------------------------------------------------------------------------------------
# checking and canonical views
# ---------------------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in t.shape) + "]"


def _check_format(format: str) -> str:
    if format not in FORMATS:
        raise RopeShapeError(f"format={format!r} must be one of {FORMATS}")
    return format


def _check_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise RopeShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise RopeShapeError(f"{name} has dtype {x.dtype}; rotation needs a floating-point tensor")
    for label, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise RopeShapeError(f"{label} must be a floating-point tensor (from ropekit.cos_sin)")
        if t.device != x.device:
            raise RopeShapeError(f"{label} is on {t.device} but {name} is on {x.device}; move one of them")
    if cos.shape != sin.shape:
        raise RopeShapeError(f"cos {_shape(cos)} and sin {_shape(sin)} must have the same shape")
    if cos.dim() not in (2, 3):
        raise RopeShapeError(
            f"cos {_shape(cos)} must be a compact table [positions, rotary_dim/2] "
            f"(or [batch, seq, rotary_dim/2] already gathered per batch)"
        )
    if 2 * cos.shape[-1] > x.shape[-1]:
        raise RopeShapeError(
            f"cos {_shape(cos)} rotates {2 * cos.shape[-1]} dims but {name} {_shape(x)} has head_dim "
            f"{x.shape[-1]}; tables are compact (one column per pair), not transformers' duplicated form"
        )


def _canonical_view(x: torch.Tensor, format: str, name: str) -> torch.Tensor:
    want = 3 if format == "thd" else 4
    if x.dim() != want:
        raise RopeShapeError(f"{name} {_shape(x)} has {x.dim()} dims; format={format!r} needs {want}")
    if format == "bshd":
        return x
    if format == "bhsd":
        return x.transpose(1, 2)
    return x.unsqueeze(0)


def _token_dims(t: torch.Tensor, format: str) -> tuple[int, ...]:
    """The dims that index tokens: (batch, seq) for bshd/bhsd, (tokens,) for thd."""
    if format == "thd":
        return tuple(t.shape[:1])
    seq_dim = 2 if format == "bhsd" else 1
    return (t.shape[0], t.shape[seq_dim]) if t.dim() > seq_dim else tuple(t.shape)


def _int_tensor(value, name: str, device) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise RopePositionError(f"{name} has dtype {t.dtype}; it must hold integers")
    return t.to(device=device, dtype=torch.int64)


def resolve_positions(
    x4: torch.Tensor,
    format: str,
    positions=None,
    offsets=None,
    cu_seqlens=None,
    n_rows: int | None = None,
) -> torch.Tensor:
    """One table row per token, ``[B, S]`` int64, for the canonical view ``x4``.

    positions: ``[S]`` (shared by the batch), ``[B, S]``, or ``[T]`` for thd.
    offsets (only without positions): an int, or one per batch row (per sequence for thd).
    cu_seqlens (thd): ``[N + 1]`` cumulative lengths; positions restart at each sequence.
    """
    B, S = x4.shape[0], x4.shape[1]
    device = x4.device
    if positions is not None and offsets is not None:
        raise RopePositionError("pass either positions or offsets, not both (add the offset to positions)")
    if positions is not None:
        pos = as_positions(positions)
        if pos.is_floating_point():
            raise RopePositionError(f"positions has dtype {pos.dtype}; table rows are indexed by integers")
        pos = pos.to(device=device, dtype=torch.int64)
        if pos.dim() == 1 and pos.shape[0] == S:
            pos = pos.expand(B, S)
        elif format == "thd" and pos.dim() == 2 and pos.shape == (1, S):
            pass
        elif pos.dim() != 2 or pos.shape != (B, S):
            want = f"[{S}]" if format == "thd" else f"[{S}] or [{B}, {S}]"
            raise RopeShapeError(f"positions {_shape(pos)} does not match the tokens of x; expected {want}")
    elif format == "thd" and cu_seqlens is not None:
        cu = _int_tensor(cu_seqlens, "cu_seqlens", device)
        if cu.dim() != 1 or cu.numel() < 2 or cu[0].item() != 0 or cu[-1].item() != S:
            raise RopeShapeError(f"cu_seqlens {cu.tolist()} must start at 0 and end at the token count {S}")
        lengths = cu[1:] - cu[:-1]
        if (lengths < 0).any():
            raise RopeShapeError(f"cu_seqlens {cu.tolist()} must be non-decreasing")
        seq_of_token = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
        pos = torch.arange(S, device=device) - cu[:-1][seq_of_token]
        if offsets is not None:
            off = _int_tensor(offsets, "offsets", device)
            if off.dim() == 1:
                if off.numel() != lengths.numel():
                    raise RopeShapeError(
                        f"offsets {_shape(off)} must have one entry per sequence ({lengths.numel()} in cu_seqlens)"
                    )
                off = off[seq_of_token]
            pos = pos + off
        pos = pos.unsqueeze(0)
    else:
        pos = torch.arange(S, device=device).expand(B, S)
        if offsets is not None:
            off = _int_tensor(offsets, "offsets", device)
            if off.dim() == 0:
                pos = pos + off
            elif off.dim() == 1 and off.numel() == B and format != "thd":
                pos = pos + off[:, None]
            else:
                raise RopeShapeError(f"offsets {_shape(off)} must be an int or have one entry per batch row ({B})")
    if pos.numel():
        lo = int(pos.min().item())
        if lo < 0:
            raise RopePositionError(f"a token has position {lo}; positions must be >= 0")
        if n_rows is not None:
            hi = int(pos.max().item())
            if hi >= n_rows:
                raise RopePositionError(
                    f"a token needs table row {hi} but cos/sin have {n_rows} rows; build the table for "
                    f"positions up to {hi} (ropekit.cos_sin(spec, {hi + 1}))"
                )
    return pos


def _flatten_batched_table(cos: torch.Tensor, sin: torch.Tensor, x4: torch.Tensor, pos: torch.Tensor):
    """A per-batch table ``[B, S', R]`` becomes one table ``[B * S', R]`` with rows offset per batch."""
    B = x4.shape[0]
    if cos.shape[0] != B:
        raise RopeShapeError(f"cos {_shape(cos)} is per-batch but x has batch {B}")
    rows = cos.shape[1]
    if pos.numel() and int(pos.max().item()) >= rows:
        raise RopePositionError(f"a token needs table row {int(pos.max().item())} but cos has {rows} per batch row")
    pos = pos + torch.arange(B, device=pos.device)[:, None] * rows
    return cos.reshape(B * rows, -1), sin.reshape(B * rows, -1), pos


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------


def select_backend(x: torch.Tensor, backend: str | None) -> tuple[str, KernelFn]:
    """The kernel for ``x``: ``backend`` when named, otherwise the best available for its device."""
    if backend is not None and backend not in BACKENDS:
        raise RopeShapeError(f"backend={backend!r} must be None (auto) or one of {BACKENDS}")
    if backend in (None, "reference"):
        return "reference", rotate_reference
    raise RopeShapeError(f"backend={backend!r} is not available in this build")


def _rotate(x, cos, sin, *, layout, format, positions, offsets, cu_seqlens, inplace, inverse, backend, name):
    layout = normalize_layout(layout)
    format = _check_format(format)
    _check_tables(x, cos, sin, name)
    x4 = _canonical_view(x, format, name)
    pos = resolve_positions(
        x4, format, positions, offsets, cu_seqlens, n_rows=cos.shape[0] if cos.dim() == 2 else None
    )
    if cos.dim() == 3:
        cos, sin, pos = _flatten_batched_table(cos, sin, x4, pos)
    _, kernel = select_backend(x, backend)
    y4 = kernel(x4, cos, sin, pos, interleaved=layout == "interleaved", inverse=inverse, inplace=inplace)
    if inplace:
        return x
    if format == "bhsd":
        return y4.transpose(1, 2)
    if format == "thd":
        return y4.squeeze(0)
    return y4


def apply_rope(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    layout: str = "half",
    format: str = "bshd",
    positions=None,
    inplace: bool = False,
    *,
    offsets=None,
    cu_seqlens=None,
    inverse: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Rotate ``x`` by compact ``cos``/``sin`` tables (from ``ropekit.cos_sin``).

    layout: ``"half"`` (NeoX/transformers) or ``"interleaved"`` (GPT-J/Meta); rotary_dim is
    ``2 * cos.shape[-1]`` and the remaining dims of each head pass through untouched.
    format: ``"bshd"`` (default), ``"bhsd"`` (transformers) or ``"thd"`` (packed, with cu_seqlens).
    positions: when given, ``cos``/``sin`` are full tables indexed by it (``[S]``, ``[B, S]`` or
    ``[T]``); when absent, row ``i + offset`` belongs to sequence index ``i``.
    offsets: int or one per batch row / sequence (KV-cache decoding).
    inverse: rotate backwards (undoes the forward rotation exactly, up to rounding).
    Math in at least float32; the result has x's dtype.  Works with autograd (out of place).
    """
    return _rotate(
        x, cos, sin, layout=layout, format=format, positions=positions, offsets=offsets,
        cu_seqlens=cu_seqlens, inplace=inplace, inverse=inverse, backend=backend, name="x",
    )  # fmt: skip


def apply_rope_qk(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    layout: str = "half",
    format: str = "bshd",
    positions=None,
    inplace: bool = False,
    *,
    offsets=None,
    cu_seqlens=None,
    inverse: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_rope`` to queries and keys with the same positions (head counts may differ: GQA).

    >>> import ropekit as rk, torch
    >>> cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=64), 8)
    >>> q, k = rk.apply_rope_qk(torch.randn(1, 8, 32, 64), torch.randn(1, 8, 8, 64), cos, sin)
    >>> q.shape[2], k.shape[2]
    (32, 8)
    """
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise RopeShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() == k.dim() and (_token_dims(q, format) != _token_dims(k, format) or q.shape[-1] != k.shape[-1]):
        raise RopeShapeError(
            f"q {_shape(q)} and k {_shape(k)} must agree on batch, sequence and head_dim (format={format!r})"
        )
    kwargs = dict(
        layout=layout, format=format, positions=positions, offsets=offsets, cu_seqlens=cu_seqlens,
        inplace=inplace, inverse=inverse, backend=backend,
    )  # fmt: skip
    return _rotate(q, cos, sin, name="q", **kwargs), _rotate(k, cos, sin, name="k", **kwargs)
