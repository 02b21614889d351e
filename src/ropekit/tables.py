"""Compact cos/sin tables: one column per rotating pair, attention factor included.

``cos_sin(spec, positions)`` returns tables of shape ``positions.shape + (rotary_dim / 2,)``;
kernels index them by position.  Duplicated, transformers-shaped tables (``cat((cos, cos))``)
exist only at the transformers boundary.

Multimodal RoPE (``spec.mrope_section``, and ``spec.mrope_axes`` for arrangements that are not
sections): positions carry a leading axis, one row per position axis (temporal, height, width);
every column takes its angle from the axis that drives that pair (``mrope_axis_of_columns``), so
the result has shape ``positions.shape[1:] + (rotary_dim / 2,)``.

Direction (``spec.angle_sign = -1``): pairs turn by -angle, so sin is negated (exactly) and
cos unchanged; every kernel then rotates by -angle with no flag of its own.
"""

from __future__ import annotations

import torch

from .errors import RopeArgumentError, RopePositionError, RopeSpecError, RopeSpecTypeError, RopeTypeError, short_repr
from .frequencies import check_precision, inv_freq
from .mrope import pairs_axes
from .spec import RopeSpec

__all__ = [
    "cos_sin",
    "tables_from",
    "checked_positions",
    "as_positions",
    "mrope_axis_of_columns",
    "MAX_EXACT_POSITION",
    "MAX_TABLE_ELEMENTS",
]

#: float64 holds every integer up to 2**53 exactly; past that a position is no longer itself.
MAX_EXACT_POSITION = 2**53


#: the most entries a table may have (positions x rotary_dim / 2): 2**30, i.e. 8 GiB per float64
#: intermediate, beyond any context a model is run at; checked before anything is allocated
MAX_TABLE_ELEMENTS = 2**30

#: dtypes positions may have (unsigned beyond 8 bits has no min/max in torch; bool is no position)
POSITION_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.float16,
                   torch.bfloat16, torch.float32, torch.float64)  # fmt: skip


def as_positions(positions, name: str = "positions", signed: bool = False) -> torch.Tensor:
    """An int/range/sequence/tensor of positions as an integer (or float) tensor, validated.
    ``signed``: negative positions are allowed (image coordinates centred on the image, for an
    axial spec); token positions never are."""
    if isinstance(positions, bool):
        raise RopeTypeError(f"{name}={positions!r} must be an int, a range or a tensor of positions")
    if isinstance(positions, int):
        if positions < 0:
            raise RopePositionError(f"{name}={positions} must be >= 0 (an int n means positions 0..n-1)")
        if positions > MAX_TABLE_ELEMENTS:
            raise RopePositionError(f"{name}={positions} is more positions than any table holds ({MAX_TABLE_ELEMENTS})")
        return torch.arange(positions, dtype=torch.int64)
    if isinstance(positions, float):
        raise RopeTypeError(
            f"{name}={positions!r} is a float; an int n means positions 0..n-1, and fractional positions "
            "come as a tensor"
        )
    if isinstance(positions, range):
        if len(positions) > MAX_TABLE_ELEMENTS:
            raise RopePositionError(f"{name}={positions!r} is more positions than any table holds")
        positions = torch.tensor(positions, dtype=torch.int64)
    elif not isinstance(positions, torch.Tensor):
        try:
            positions = torch.as_tensor(positions)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise RopeTypeError(
                f"{name}={short_repr(positions)} must be an int, a range or a tensor of positions"
            ) from None
    if positions.layout != torch.strided or positions.device.type == "meta":
        raise RopePositionError(
            f"{name} is a {positions.layout} tensor on {positions.device}; positions must be a dense tensor with values"
        )
    if positions.dtype not in POSITION_DTYPES:
        raise RopePositionError(f"{name} has dtype {positions.dtype}; positions must be integers")
    if positions.is_floating_point() and positions.numel():
        # fractional positions are legitimate (some models interpolate positions themselves)
        if not torch.isfinite(positions).all():
            raise RopePositionError(f"{name} contains non-finite values")
    if positions.numel():
        lo, hi = positions.min().item(), positions.max().item()
        if lo < 0 and not signed:
            raise RopePositionError(f"{name} contains {lo}; positions must be >= 0")
        if max(hi, -lo) > MAX_EXACT_POSITION:
            far = hi if hi > -lo else lo
            raise RopePositionError(f"{name} contains {far}; positions beyond 2**53 are not representable exactly")
    return positions


def _check_device(device) -> torch.device | None:
    if device is None:
        return None
    try:
        device = torch.device(device)
        torch.empty(0, device=device)  # an unavailable device (no CUDA here, a bad index) says so now
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise RopeArgumentError(
            f"device={short_repr(device)} is not usable here ({short_repr(str(exc), 160)})"
        ) from None
    if device.type == "meta":
        raise RopeArgumentError("device='meta' holds no values; tables need a real device")
    return device


def _check_table_dtype(dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype):
        raise RopeTypeError(f"dtype={short_repr(dtype)} must be a torch dtype (torch.float32, ...)")
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise RopeArgumentError(f"dtype={dtype} must be float16, bfloat16, float32 or float64")
    return dtype


def _check_factor_fits(factor: float, dtype: torch.dtype, precision: str) -> None:
    """|cos|, |sin| <= factor: a factor within the dtype's range keeps every entry finite."""
    limit = (
        torch.finfo(dtype).max if precision == "exact" else min(torch.finfo(dtype).max, torch.finfo(torch.float32).max)
    )
    if factor > limit:
        raise RopeSpecError(
            f"attention factor {factor!r} of the spec exceeds the largest {dtype} ({limit:g}): the tables would be "
            "infinite; check attention_factor / scaling.mscale"
        )


def mrope_axis_of_columns(spec: RopeSpec) -> torch.Tensor:
    """For mRoPE: which position axis (0 temporal, 1 height, 2 width, ...) drives each table column.

    Contiguous (Qwen2-VL): the first ``section[0]`` columns follow axis 0, the next ``section[1]``
    axis 1, and so on.  Interleaved (Qwen3-VL): columns cycle T, H, W, ... — column j follows
    axis ``j % 3`` while ``j < 3 * section[j % 3]`` for H and W, and axis 0 otherwise.  Any other
    arrangement: ``spec.mrope_axes``, the axis of each column (the arithmetic: ``ropekit.mrope``).

    >>> import ropekit as rk
    >>> mrope_axis_of_columns(rk.RopeSpec(head_dim=8, mrope_section=(2, 1, 1))).tolist()
    [0, 0, 1, 2]
    >>> mrope_axis_of_columns(rk.RopeSpec(head_dim=8, mrope_axes=(1, 2, 0, 0))).tolist()
    [1, 2, 0, 0]
    """
    if spec.mrope_section is None:
        raise RopeSpecError("spec has no mrope_section")
    axes = pairs_axes(spec.mrope_section, spec.mrope_interleaved, spec.mrope_axes, spec.n_pairs)
    return torch.tensor(axes, dtype=torch.int64)


def checked_positions(spec: RopeSpec, positions) -> torch.Tensor:
    """``positions`` as ``cos_sin`` checks them (``as_positions``, and a table of at most
    ``MAX_TABLE_ELEMENTS`` entries): for a caller of ``tables_from`` whose frequencies are checked
    once but whose positions change every call.

    >>> import ropekit as rk
    >>> checked_positions(rk.RopeSpec(head_dim=8), [0, 3]).tolist()
    [0, 3]
    """
    positions = as_positions(positions, signed=spec.axial)
    if positions.numel() * spec.n_pairs > MAX_TABLE_ELEMENTS:
        raise RopePositionError(
            f"positions {list(positions.shape)} with rotary_dim={spec.rotary_dim} is a table of "
            f"{positions.numel() * spec.n_pairs} entries; at most {MAX_TABLE_ELEMENTS}"
        )
    return positions


def cos_sin(
    spec: RopeSpec,
    positions,
    dtype: torch.dtype = torch.float32,
    device=None,
    precision: str = "exact",
    seq_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact cos and sin tables for ``positions`` (an int n means ``range(n)``).

    ``precision="exact"``: float64 frequencies, angles and trig, one final cast to ``dtype``; the
    error is at most half an ulp of ``dtype`` (plus < 2e-9 at position 2**24).
    ``precision="hf"``: transformers' float32 arithmetic (float32 positions, angles and trig).
    ``seq_len`` (dynamic/longrope only) defaults to ``max(positions) + 1``, transformers' rule.
    Refused before anything is allocated: tables over ``MAX_TABLE_ELEMENTS`` (2**30) entries,
    positions that are not dense integer (or float) tensors with real values, devices that are not
    usable here, and specs whose frequencies or attention factor are not finite in ``dtype``.

    >>> import math, ropekit as rk, torch
    >>> cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=4), torch.tensor([0, 1]), dtype=torch.float64)
    >>> cos[1].tolist() == [math.cos(1.0), math.cos(0.01)]
    True
    >>> back = rk.cos_sin(rk.RopeSpec(head_dim=4, angle_sign=-1), torch.tensor([0, 1]), dtype=torch.float64)
    >>> torch.equal(back[0], cos), torch.equal(back[1], -sin)      # rotation by -angle
    (True, True)
    """
    if not isinstance(spec, RopeSpec):
        raise RopeSpecTypeError(f"spec must be a ropekit.RopeSpec, got {type(spec).__name__}")
    precision = check_precision(precision)
    dtype = _check_table_dtype(dtype)
    device = _check_device(device)
    if isinstance(positions, int) and not isinstance(positions, bool) and positions * spec.n_pairs > MAX_TABLE_ELEMENTS:
        raise RopePositionError(
            f"positions={positions} with rotary_dim={spec.rotary_dim} is a table of {positions * spec.n_pairs} "
            f"entries; at most {MAX_TABLE_ELEMENTS} (ropekit.tables.MAX_TABLE_ELEMENTS)"
        )
    positions = checked_positions(spec, positions)
    if device is None:
        device = positions.device
    positions = _mrope_axes(spec, positions)
    if seq_len is None and positions.numel():
        seq_len = int(positions.max().item()) + 1

    inv, factor = inv_freq(spec, seq_len=seq_len, precision=precision)
    _check_factor_fits(factor, dtype, precision)
    return tables_from(spec, positions, inv, factor, dtype=dtype, device=device, precision=precision)


def _mrope_axes(spec: RopeSpec, positions: torch.Tensor) -> torch.Tensor:
    if spec.mrope_section is not None:
        if positions.dim() < 1 or positions.shape[0] != len(spec.mrope_section):
            # text-only input: the same position on every axis, as transformers expands it
            positions = positions.unsqueeze(0).expand(len(spec.mrope_section), *positions.shape)
    return positions


def tables_from(
    spec: RopeSpec, positions: torch.Tensor, inv: torch.Tensor, factor: float, dtype, device=None, precision="exact"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The arithmetic of ``cos_sin`` alone, for callers that checked their inputs once: ``positions``
    a position tensor, ``(inv, factor)`` what ``inv_freq(spec, precision=precision)`` returned.  It
    reads no value back to the host, so it runs inside a compiled graph (``cos_sin`` checks
    positions by their values first); the tables are bit for bit those of ``cos_sin``.

    >>> import ropekit as rk, torch
    >>> spec = rk.RopeSpec(head_dim=8)
    >>> inv, factor = rk.inv_freq(spec)
    >>> pos = torch.arange(5)
    >>> pairs = zip(tables_from(spec, pos, inv, factor, torch.float32), rk.cos_sin(spec, pos))
    >>> all(torch.equal(a, b) for a, b in pairs)
    True
    """
    positions = _mrope_axes(spec, positions)
    if device is None:
        device = positions.device
    if precision == "exact":
        pos = positions.to(device=device, dtype=torch.float64)
        angles = pos[..., None] * inv.to(device)
        cos, sin = torch.cos(angles), torch.sin(angles)
        if factor != 1.0:
            cos, sin = cos * factor, sin * factor
    else:
        # transformers: position_ids.float() * inv_freq.float(); emb.cos() * attention_scaling
        pos = positions.to(device=device).float()
        if getattr(spec.scaling, "scale_positions", False):  # transformers < 4.43: t / factor
            pos = pos / spec.scaling.factor
        angles = pos[..., None] * inv.to(device=device, dtype=torch.float32)
        cos, sin = angles.cos() * factor, angles.sin() * factor

    if spec.mrope_section is not None:
        axis = mrope_axis_of_columns(spec).to(cos.device)
        take = axis.view(1, *([1] * (cos.dim() - 2)), -1).expand(1, *cos.shape[1:])
        cos, sin = cos.gather(0, take)[0], sin.gather(0, take)[0]
    if spec.angle_sign < 0:
        # R(-a) has cos(a) and -sin(a): an exact sign flip after the trig, so hf precision is still
        # transformers' own float32 sin bit for bit, negated (NanoChat negates it in its apply)
        sin = -sin
    return cos.to(dtype), sin.to(dtype)
