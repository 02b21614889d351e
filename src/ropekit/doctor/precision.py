"""precision: the precision a black-box rotary function really has, measured from its outputs.

The dtype a function returns is only its interface.  A RoPE that computes in bfloat16 (a
``.to(torch.bfloat16)`` inside, autocast) and returns float32 gives outputs that carry 8
significand bits, not 24; judging it against float32 rounding calls it "not a rotation" when it is
one, rounded.  The probe's basis vectors make each output a single table value (``af * cos`` or
``af * sin``), so the number of significand bits those values carry *is* the precision of fn's
tables: 8 means bfloat16, 11 float16, 24 float32.  The fit then runs with the unit roundoff of
that precision; it still verifies every probed value against a rebuilt spec, so a function that
is not a rotation is refused at any precision.

>>> import torch
>>> vals = torch.linspace(0.1, 0.9, 50, dtype=torch.float64)
>>> measured_precision(vals.to(torch.bfloat16).double(), torch.float32).name
'bfloat16'
>>> measured_precision(vals.float().double(), torch.float32).name
'float32'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.reference import eps

__all__ = ["Precision", "measured_precision", "unit_eps"]

#: (significand bits incl. the implicit one, name, dtype), narrowest first
_FORMATS = ((8, "bfloat16", torch.bfloat16), (11, "float16", torch.float16), (24, "float32", torch.float32))
#: values the measurement needs before it claims fewer bits than the interface has (ones, zeros
#: and small integers are exact in every format and say nothing)
_MIN_INFORMATIVE = 32


def unit_eps(dtype: torch.dtype) -> float:
    """The eps the doctor judges a dtype's values with (``finfo.eps``; float64: 2**-50, a few
    roundings of headroom for the float64 math around it)."""
    return max(eps(dtype), 2.0**-50)  # float64: its own trig is not correctly rounded


@dataclass(frozen=True)
class Precision:
    """What fn's outputs carry: ``bits`` significand bits, i.e. the precision of ``dtype``."""

    bits: int
    name: str
    dtype: torch.dtype
    interface: torch.dtype  # the dtype fn returned

    @property
    def narrower(self) -> bool:
        """Outputs rounded to a narrower format than the one fn returns."""
        return unit_eps(self.dtype) > unit_eps(self.interface)

    @property
    def eps(self) -> float:
        return max(unit_eps(self.dtype), unit_eps(self.interface))

    def text(self) -> str:
        interface = str(self.interface).replace("torch.", "")
        if not self.narrower:
            return f"{interface} outputs"
        return f"outputs rounded to {self.name} inside a {interface} interface ({self.bits} significand bits)"


def measured_precision(values: torch.Tensor, interface: torch.dtype, fallback: torch.Tensor | None = None) -> Precision:
    """The narrowest format that holds every informative value of ``values`` (float64 copies of
    fn's outputs) exactly, never wider than ``interface``; ``fallback`` (the outputs for random
    vectors) is read when ``values`` has too few informative values (a permutation, a scaling by 2)."""
    informative = _informative(values)
    if informative.numel() < _MIN_INFORMATIVE and fallback is not None:
        informative = _informative(fallback)
    own = next(((b, n, d) for b, n, d in _FORMATS if d == interface), (53, "float64", torch.float64))
    if informative.numel() >= _MIN_INFORMATIVE:
        for bits, name, dtype in _FORMATS:
            if bits < own[0] and torch.equal(informative.to(dtype).double(), informative):
                return Precision(bits, name, dtype, interface)
    return Precision(own[0], own[1], own[2], interface)


def _informative(values: torch.Tensor) -> torch.Tensor:
    """The values that say something about precision (ones, zeros and non-finite values do not)."""
    flat = values.flatten().double()
    return flat[(flat != 0) & torch.isfinite(flat) & (flat.abs() != 1)]
