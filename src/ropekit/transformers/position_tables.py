"""GPT-J's and CodeGen's position table before 5.0: ``[positions, r]`` holding (sin | cos).

Those releases keep, in each attention layer, a float32 table ``cat((sin, cos))`` with one column
per pair (``create_sinusoidal_positions``); ``patch`` replaces it with ropekit's.

>>> import ropekit as rk
>>> tuple(exact_sincos_table(rk.RopeSpec(head_dim=16, rotary_dim=8, layout="interleaved"), 32).shape)
(32, 8)
"""

from __future__ import annotations

import torch

from ..spec import RopeSpec
from ..tables import cos_sin

__all__ = ["exact_sincos_table"]


def exact_sincos_table(spec: RopeSpec, n_positions: int, precision: str = "exact") -> torch.Tensor:
    """float32 ``cat((sin, cos), -1)`` for positions ``0..n_positions-1`` (exact: one rounding)."""
    work = torch.float64 if precision == "exact" else torch.float32
    # a family's own table: +angle, whatever direction its apply function turns
    cos, sin = cos_sin(spec.turning_forward(), n_positions, dtype=work, precision=precision)
    return torch.cat((sin, cos), dim=-1).float()
