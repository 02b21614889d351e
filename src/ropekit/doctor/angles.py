"""angles: frequencies, direction and position offset from the measured 2x2 blocks.

The stages of ``ropekit.doctor.probe.fingerprint`` after the structure is known.  The angle of
pair i at position p is ``direction * theta_i * (p + offset)``.  Consecutive positions 0..8 differ
by ``theta_i`` exactly once unwrapped (no aliasing while theta < pi), which gives a coarse theta
and the direction; the ladder of long positions (each 4x the last) is unwrapped against the
previous step's prediction, so theta's precision grows ~ 1 / position.  The offset is known only
modulo ``2 pi / theta_i`` from pair i; walking from the slowest pair to the fastest pins it.

>>> import math, torch
>>> pos = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 64], dtype=torch.int64)
>>> theta = torch.tensor([1.0, 0.01], dtype=torch.float64)
>>> phi = torch.remainder(pos.double()[:, None] * theta + math.pi, 2 * math.pi) - math.pi
>>> f = measure_frequencies(phi, pos, 9, tol=1e-9)
>>> f.direction, [round(t, 9) for t in f.theta.tolist()]
(1, [1.0, 0.01])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .structure import NotARope

__all__ = ["Frequencies", "measure_frequencies", "measure_offset", "wrap"]

_TWO_PI = 2 * math.pi


def wrap(a: torch.Tensor) -> torch.Tensor:
    """Angles to (-pi, pi]."""
    return torch.remainder(a + math.pi, _TWO_PI) - math.pi


@dataclass
class Frequencies:
    theta: torch.Tensor  # refined up the ladder, float64 [n]
    theta_coarse: torch.Tensor  # from positions 0..8 only: survives rounded angles
    phi0: torch.Tensor  # phase at p = 0
    direction: int
    last_p: float  # the longest position the refinement used


def measure_frequencies(phi: torch.Tensor, pos: torch.Tensor, n_small: int, tol: float) -> Frequencies:
    """theta, direction and the phase at 0 from the angles ``phi[P, n]`` at positions ``pos``."""
    steps = wrap(phi[1:n_small] - phi[: n_small - 1])  # = direction * theta (theta < pi)
    slope = steps.mean(0)
    signif = slope.abs() > 8 * tol  # slow pairs move too little at p <= 8 to show a sign
    signs = torch.sign(slope[signif])
    if signif.any() and not (signs == signs[0]).all():
        raise NotARope("pairs rotate in opposite directions: not one RoPE")
    direction = int(signs[0].item()) if signif.any() else 1
    theta = slope * direction
    theta_coarse = theta.clone().clamp_min(0.0)
    # phase at p = 0 from all small positions (circular mean of phi_p - direction * theta * p)
    small_p = pos[:n_small].double()[:, None]
    resid0 = phi[:n_small] - direction * theta[None] * small_p
    phi0 = torch.atan2(resid0.sin().mean(0), resid0.cos().mean(0))
    last_p = float(small_p[-1])
    for k in range(n_small, pos.numel()):
        p = float(pos[k])
        measured = wrap(phi[k] - phi0)  # direction * theta * p modulo 2 pi
        predicted = direction * theta * p
        unwrapped = measured + _TWO_PI * torch.round((predicted - measured) / _TWO_PI)
        theta = unwrapped * direction / p
        last_p = p
    return Frequencies(theta.clamp_min(0.0), theta_coarse, phi0, direction, last_p)


def measure_offset(f: Frequencies, eps: float) -> float | int:
    """The constant position offset (an int when it is one; 0 when no pair pins it)."""
    o_est, o_err = 0.0, math.inf
    for i in torch.argsort(f.theta).tolist():
        th = f.theta[i].item()
        if th <= 0 or th * f.last_p < 1e-3:
            continue
        cand = f.phi0[i].item() * f.direction / th
        period = _TWO_PI / th
        if math.isfinite(o_err):
            cand += period * round((o_est - cand) / period)
        err = 4 * eps / th
        if err < o_err:
            o_est, o_err = cand, err
    if not math.isfinite(o_err):
        return 0
    if abs(o_est - round(o_est)) <= max(0.05, 4 * o_err):
        return int(round(o_est))
    return o_est
