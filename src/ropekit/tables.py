"""Compact cos/sin tables: one column per rotating pair, attention factor included.

``cos_sin(spec, positions)`` returns tables of shape ``positions.shape + (rotary_dim / 2,)``;
kernels index them by position.  Duplicated, transformers-shaped tables (``cat((cos, cos))``)
exist only at the transformers boundary.

Multimodal RoPE (``spec.mrope_section``): positions carry a leading axis of 3 (temporal,
height, width); every column takes its angle from the axis that owns that frequency, so the
result has shape ``positions.shape[1:] + (rotary_dim / 2,)``.
"""

from __future__ import annotations

import torch

from .errors import RopePositionError, RopeSpecError
from .frequencies import _check_precision, inv_freq
from .spec import RopeSpec

__all__ = ["cos_sin", "as_positions", "mrope_axis_of_columns", "MAX_EXACT_POSITION"]

#: float64 holds every integer up to 2**53 exactly; past that a position is no longer itself.
MAX_EXACT_POSITION = 2**53


def as_positions(positions, name: str = "positions") -> torch.Tensor:
    """An int/range/sequence/tensor of positions as an integer (or float64) tensor, validated."""
    if isinstance(positions, bool):
        raise RopePositionError(f"{name}={positions!r} must be an int, a range or a tensor of positions")
    if isinstance(positions, int):
        if positions < 0:
            raise RopePositionError(f"{name}={positions} must be >= 0 (an int n means positions 0..n-1)")
        return torch.arange(positions, dtype=torch.int64)
    if isinstance(positions, range):
        positions = torch.tensor(positions, dtype=torch.int64)
    elif not isinstance(positions, torch.Tensor):
        try:
            positions = torch.as_tensor(positions)
        except (TypeError, ValueError, RuntimeError):
            raise RopePositionError(f"{name}={positions!r} must be an int, a range or a tensor of positions") from None
    if positions.is_complex() or positions.dtype == torch.bool:
        raise RopePositionError(f"{name} has dtype {positions.dtype}; positions must be integers")
    if positions.is_floating_point() and positions.numel():
        # fractional positions are legitimate (some models interpolate positions themselves)
        if not torch.isfinite(positions).all():
            raise RopePositionError(f"{name} contains non-finite values")
    if positions.numel():
        lo, hi = positions.min().item(), positions.max().item()
        if lo < 0:
            raise RopePositionError(f"{name} contains {lo}; positions must be >= 0")
        if hi > MAX_EXACT_POSITION:
            raise RopePositionError(f"{name} contains {hi}; positions above 2**53 are not representable exactly")
    return positions


def mrope_axis_of_columns(spec: RopeSpec) -> torch.Tensor:
    """For mRoPE: which position axis (0 temporal, 1 height, 2 width) drives each table column.

    Contiguous (Qwen2-VL): the first ``section[0]`` columns follow axis 0, the next ``section[1]``
    axis 1, and so on.  Interleaved (Qwen3-VL): columns cycle T, H, W, ... — column j follows
    axis ``j % 3`` while ``j < 3 * section[j % 3]`` for H and W, and axis 0 otherwise.
    """
    section = spec.mrope_section
    if section is None:
        raise RopeSpecError("spec has no mrope_section")
    n = spec.n_pairs
    if not spec.mrope_interleaved:
        return torch.repeat_interleave(torch.arange(len(section)), torch.tensor(section))
    axis = torch.zeros(n, dtype=torch.int64)
    cols = torch.arange(n)
    for a in range(1, len(section)):
        axis[(cols % len(section) == a) & (cols < len(section) * section[a])] = a
    return axis


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

    >>> import math, ropekit as rk, torch
    >>> cos, sin = rk.cos_sin(rk.RopeSpec(head_dim=4), torch.tensor([0, 1]), dtype=torch.float64)
    >>> cos[1].tolist() == [math.cos(1.0), math.cos(0.01)]
    True
    """
    if not isinstance(spec, RopeSpec):
        raise RopeSpecError(f"spec must be a ropekit.RopeSpec, got {type(spec).__name__}")
    precision = _check_precision(precision)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise RopeSpecError(f"dtype={dtype!r} must be a floating-point torch dtype")
    positions = as_positions(positions)
    if device is None:
        device = positions.device
    if spec.mrope_section is not None:
        if positions.dim() < 1 or positions.shape[0] != len(spec.mrope_section):
            # text-only input: the same position on every axis, as transformers expands it
            positions = positions.unsqueeze(0).expand(len(spec.mrope_section), *positions.shape)
    if seq_len is None and positions.numel():
        seq_len = int(positions.max().item()) + 1

    inv, factor = inv_freq(spec, seq_len=seq_len, precision=precision)
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
    return cos.to(dtype), sin.to(dtype)
