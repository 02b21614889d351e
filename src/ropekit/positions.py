"""Every form of positions a rotation accepts, turned into one table row per token.

``positions`` (``[S]``, ``[B, S]`` or ``[T]``), ``offsets`` (an int or one per batch row /
sequence) and ``cu_seqlens`` (packed ``thd`` sequences) all become one int64 index ``[B, S]``
into the tables, validated on the host when ``check`` is on (outside torch.compile).

>>> import torch
>>> from ropekit.positions import resolve_positions
>>> resolve_positions(torch.zeros(1, 5, 1, 8), "thd", cu_seqlens=torch.tensor([0, 2, 5])).tolist()
[[0, 1, 0, 1, 2]]
"""

from __future__ import annotations

import torch

from .arguments import shape_str
from .errors import RopeArgumentError, RopePositionError, RopeShapeError, RopeTypeError, short_repr
from .tables import as_positions

__all__ = ["resolve_positions", "flatten_batched_table", "int_tensor"]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def int_tensor(value, name: str, device) -> torch.Tensor:
    """An int, a list of ints or an integer tensor as an int64 tensor on ``device``."""
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple, torch.Tensor)):
        raise RopeTypeError(f"{name}={short_repr(value)} must be an int, a list of ints or an integer tensor")
    if isinstance(value, int) and not -(2**62) < value < 2**62:
        raise RopePositionError(f"{name}={short_repr(value)} is beyond any position (|value| < 2**62)")
    try:
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise RopeTypeError(f"{name}={short_repr(value)} must be an int, a list of ints or an integer tensor") from None
    if t.layout != torch.strided or t.device.type == "meta" or t.dtype not in _INT_DTYPES:
        raise RopePositionError(
            f"{name} is a {t.dtype} {t.layout} tensor on {t.device}; it must be a dense integer tensor "
            f"({', '.join(str(d).removeprefix('torch.') for d in _INT_DTYPES)})"
        )
    return t.to(device=device, dtype=torch.int64)


def _check_cu_seqlens(cu: torch.Tensor, S: int) -> torch.Tensor:
    """Cumulative lengths ``[N + 1]``: start at 0, end at the token count, never decrease."""
    if cu.dim() != 1 or cu.numel() < 2:
        raise RopeShapeError(f"cu_seqlens {shape_str(cu)} must be 1-d with at least 2 entries [0, ..., {S}]")
    lengths = cu[1:] - cu[:-1]
    if cu[0].item() != 0 or cu[-1].item() != S or bool((lengths < 0).any()):
        raise RopeShapeError(
            f"cu_seqlens={short_repr(cu.tolist())} must start at 0, never decrease and end at the token count {S}"
        )
    return lengths


def _from_positions(positions, B: int, S: int, format: str, device, check: bool) -> torch.Tensor:
    # as_positions validates values on the host (.item()): only outside torch.compile
    pos = as_positions(positions) if check else torch.as_tensor(positions)
    if pos.is_floating_point():
        raise RopePositionError(f"positions has dtype {pos.dtype}; table rows are indexed by integers")
    pos = pos.to(device=device, dtype=torch.int64)
    if pos.dim() == 1 and pos.shape[0] == S:
        return pos.expand(B, S)
    if format == "thd" and pos.dim() == 2 and pos.shape == (1, S):
        return pos
    if pos.dim() != 2 or pos.shape != (B, S):
        want = f"[{S}]" if format == "thd" else f"[{S}] or [{B}, {S}]"
        raise RopeShapeError(f"positions {shape_str(pos)} does not match the tokens of x; expected {want}")
    return pos


def _from_cu_seqlens(cu, lengths, offsets, S: int, device) -> torch.Tensor:
    seq_of_token = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths)
    pos = torch.arange(S, device=device) - cu[:-1][seq_of_token]
    if offsets is not None:
        off = int_tensor(offsets, "offsets", device)
        if off.dim() == 1:
            if off.numel() != lengths.numel():
                raise RopeShapeError(
                    f"offsets {shape_str(off)} must have one entry per sequence ({lengths.numel()} in cu_seqlens)"
                )
            off = off[seq_of_token]
        elif off.dim() != 0:
            raise RopeShapeError(f"offsets {shape_str(off)} must be an int or have one entry per sequence")
        pos = pos + off
    return pos.unsqueeze(0)


def _from_offsets(offsets, B: int, S: int, format: str, device) -> torch.Tensor:
    pos = torch.arange(S, device=device).expand(B, S)
    if offsets is None:
        return pos
    off = int_tensor(offsets, "offsets", device)
    if off.dim() == 0:
        return pos + off
    if off.dim() == 1 and off.numel() == B and format != "thd":
        return pos + off[:, None]
    if format == "thd":
        raise RopeShapeError(
            f"offsets {shape_str(off)}: packed tokens take an int, or one per sequence with cu_seqlens"
        )
    raise RopeShapeError(f"offsets {shape_str(off)} must be an int or have one entry per batch row ({B})")


def resolve_positions(
    x4: torch.Tensor,
    format: str,
    positions=None,
    offsets=None,
    cu_seqlens=None,
    n_rows: int | None = None,
    check: bool = True,
) -> torch.Tensor:
    """One table row per token, ``[B, S]`` int64, for the canonical view ``x4``.

    positions: ``[S]`` (shared by the batch), ``[B, S]``, or ``[T]`` for thd.
    offsets (only without positions): an int, or one per batch row (per sequence for thd).
    cu_seqlens (thd only): ``[N + 1]`` cumulative lengths; positions restart at each sequence
    (with explicit positions, cu_seqlens is still checked against the token count).
    check: validate values (reads them on the host; off while torch.compile traces).
    """
    B, S = x4.shape[0], x4.shape[1]
    device = x4.device
    if positions is not None and offsets is not None:
        raise RopeArgumentError("pass either positions or offsets, not both (add the offset to positions)")
    if cu_seqlens is not None and format != "thd":
        raise RopeArgumentError(
            f"cu_seqlens is given but format={format!r}; cu_seqlens describes packed sequences (format='thd')"
        )
    cu = lengths = None
    if cu_seqlens is not None:
        cu = int_tensor(cu_seqlens, "cu_seqlens", device)
        lengths = _check_cu_seqlens(cu, S) if check else cu[1:] - cu[:-1]
    host_bounds = None
    if positions is not None:
        pos = _from_positions(positions, B, S, format, device, check)
    elif cu is not None:
        pos = _from_cu_seqlens(cu, lengths, offsets, S, device)
    else:
        if offsets is None or (isinstance(offsets, int) and not isinstance(offsets, bool)):
            # bounds known on the host: no device read (on CUDA each .item() is a sync)
            start = 0 if offsets is None else int(offsets)
            host_bounds = (start, start + S - 1)
        pos = _from_offsets(offsets, B, S, format, device)
    if check and pos.numel():
        _check_rows(pos, host_bounds, n_rows)
    return pos


def _check_rows(pos: torch.Tensor, host_bounds, n_rows: int | None) -> None:
    lo, hi = host_bounds if host_bounds is not None else (int(pos.min().item()), None)
    if lo < 0:
        raise RopePositionError(f"a token has position {lo}; positions must be >= 0")
    if n_rows is not None:
        hi = int(pos.max().item()) if hi is None else hi
        if hi >= n_rows:
            raise RopePositionError(
                f"a token needs table row {hi} but cos/sin have {n_rows} rows; build the table for "
                f"positions up to {hi} (ropekit.cos_sin(spec, {hi + 1}))"
            )


def flatten_batched_table(cos: torch.Tensor, sin: torch.Tensor, x4: torch.Tensor, pos: torch.Tensor, check=True):
    """A per-batch table ``[B, S', R]`` becomes one table ``[B * S', R]`` with rows offset per batch
    (``check=False``: no row bound read back to the host, as under torch.compile)."""
    B = x4.shape[0]
    if cos.shape[0] != B:
        raise RopeShapeError(f"cos {shape_str(cos)} is per-batch but x has batch {B}")
    rows = cos.shape[1]
    if check and pos.numel() and int(pos.max().item()) >= rows:
        raise RopePositionError(f"a token needs table row {int(pos.max().item())} but cos has {rows} per batch row")
    pos = pos + torch.arange(B, device=pos.device)[:, None] * rows
    return cos.reshape(B * rows, -1), sin.reshape(B * rows, -1), pos
