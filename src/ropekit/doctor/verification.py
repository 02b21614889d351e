"""verification: a candidate spec explains fn only if it reproduces every probed value.

``predict_cs`` rebuilds what a spec gives at the probed positions (ropekit's float64 tables, or
transformers' float32 arithmetic for ``precision="hf"``); ``first_verified`` walks candidate specs,
simplest family first, and keeps the first that reproduces every probed ``C = af cos`` and
``S = af sin`` within the tolerance of fn's measured precision: bit-level fits first (``exact`` or
``hf`` tables), then within float32 angle-rounding bounds (``float32``: float32 angles computed in
another order).  ``spec_rope_fn`` turns a spec back into a black box (fixes are verified with it).

>>> import torch, ropekit as rk
>>> fn = spec_rope_fn(rk.RopeSpec(head_dim=8))
>>> fn(torch.eye(8)[:1], torch.tensor([0])).tolist() == torch.eye(8)[:1].tolist()
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..frequencies import attention_factor as spec_attention_factor
from ..frequencies import inv_freq as spec_inv_freq
from ..spec import RopeSpec
from .calls import RopeFn
from .fitting import F32_EPS

__all__ = ["predict_cs", "spec_rope_fn", "Verified", "first_verified"]


def predict_cs(spec: RopeSpec, pos: torch.Tensor, offset, direction: int, precision: str):
    """cos and sin [P, n] (attention factor included) that ``spec`` gives at ``pos + offset``, and
    |angle| (float64)."""
    factor = spec_attention_factor(spec)
    if precision == "hf":
        inv, _ = spec_inv_freq(spec, precision="hf")
        p = (pos.to(torch.float64) + offset).to(torch.float32)
        ang = p[:, None] * inv[None, :]
        c, s = (ang.cos() * factor).double(), (ang.sin() * factor).double()
    else:
        inv, _ = spec_inv_freq(spec, precision="exact")
        ang = (pos.to(torch.float64) + offset)[:, None] * inv[None, :]
        c, s = torch.cos(ang) * factor, torch.sin(ang) * factor
    return c, s * (direction * spec.angle_sign), ang.double().abs()  # a spec's own direction too


def spec_rope_fn(
    spec: RopeSpec, offset=0, direction: int = 1, precision: str = "exact", dtype: torch.dtype | None = None
) -> RopeFn:
    """A black-box ``fn(x, positions)`` that applies ``spec`` with ropekit's tables and reference
    rotation (positions shifted by ``offset``; ``direction=-1`` rotates backwards)."""
    from ..apply import apply_rope

    def fn(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        c, s, _ = predict_cs(spec, positions, offset, 1, precision)
        table_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = apply_rope(
            x[None, :, None, :].to(dtype or x.dtype),
            c.to(table_dtype),
            s.to(table_dtype),
            layout=spec.layout,
            inverse=direction < 0,
        )
        return y[0, :, 0, :]

    return fn


@dataclass
class Verified:
    spec: RopeSpec
    family: str
    precision: str  # exact | hf | float32
    misfit: float  # max |measured - predicted|
    notes: list[str]


def first_verified(cands, C, S, pos, offset, direction: int, tol: float, af: float) -> Verified | None:
    """The first of ``cands`` (``(spec, family, notes)``) that reproduces every probed value."""
    cands = list(cands)
    for precisions in (("exact", "hf"), ("float32",)):
        for spec, family, notes in cands:
            fits = []
            for precision in precisions:
                c, s, angle = predict_cs(spec, pos, offset, direction, "exact" if precision == "float32" else precision)
                err = torch.maximum((C - c).abs(), (S - s).abs())
                bound = tol if precision != "float32" else tol + 4 * F32_EPS * (angle + 1) * max(af, 1.0)
                if (err <= bound).all():
                    fits.append((err.max().item(), precision))
            if fits:
                best, precision = min(fits)
                return Verified(spec, family, precision, best, list(notes))
    return None
