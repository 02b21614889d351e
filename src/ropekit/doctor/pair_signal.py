"""pair_signal: how strongly trained q/k weights treat two dims of a head as one rotation pair.

For one head, ``C = W_q W_k^T`` (k's head shared under GQA) is the bilinear form attention applies
between the rotated query and key.  On a true rotation pair (a, b) RoPE turns both by the same
angle, so only the part of the 2x2 block that commutes with rotations acts as a function of
*relative* position; the rest turns with *absolute* position and is useless to the model.
Training therefore builds the antisymmetric cross coupling ``C_ba - C_ab`` and not the symmetric
``C_ab + C_ba``; two dims that are not a pair have no such reason.  Per head the statistic is
``s = (J - L) / (J + L)`` with ``J = (C_ba - C_ab)^2``, ``L = (C_ab + C_ba)^2`` (invariant to the
scale of either dim), and ``t[a, b]`` is its mean over heads.

The null is every other dim pair of the same heads: the median and the (normal-scaled) median
absolute deviation of ``t`` over all ``a < b`` — robust to the few true pairs among them.  A
pairing of m pairs scores ``z = (mean t - median) / (sd / sqrt(m))``.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> C = torch.randn(8, 16, 16, generator=g, dtype=torch.float64)   # 8 heads, no pair structure
>>> t = pair_matrix(C)
>>> abs(pairing_z(t, [(0, 1), (2, 3), (4, 5)])) < 4
True
"""

from __future__ import annotations

import math

import torch

from ..layouts import pair_dims

__all__ = ["pair_matrix", "null_of", "pairing_z", "pair_profile", "turning_pairs", "candidate_pairs"]


def pair_matrix(C: torch.Tensor) -> torch.Tensor:
    """``t[a, b]``: the mean over heads of the antisymmetry statistic of dims (a, b); C is
    ``[heads, head_dim, head_dim]`` (float64)."""
    Ct = C.transpose(-1, -2)
    J, L = (Ct - C) ** 2, (C + Ct) ** 2
    return ((J - L) / (J + L).clamp_min(1e-300)).mean(0)


def null_of(t: torch.Tensor) -> tuple[float, float]:
    """(centre, spread) of ``t`` over every dim pair a < b: median and 1.4826 x MAD."""
    iu = torch.triu_indices(t.shape[0], t.shape[0], 1)
    values = t[iu[0], iu[1]]
    centre = values.median()
    spread = 1.4826 * (values - centre).abs().median()
    return float(centre), max(float(spread), 1e-12)


def pairing_z(t: torch.Tensor, pairs, null: tuple[float, float] | None = None) -> float:
    """z-score of the mean of ``t`` over ``pairs`` against the null (``null_of(t)`` by default)."""
    centre, spread = null_of(t) if null is None else null
    a = torch.tensor([p[0] for p in pairs])
    b = torch.tensor([p[1] for p in pairs])
    return (t[a, b].mean().item() - centre) / (spread / math.sqrt(len(pairs)))


def pair_profile(t: torch.Tensor, pairs, null: tuple[float, float] | None = None) -> list[float]:
    """Each pair's own z-score (a pairing of one pair)."""
    null = null_of(t) if null is None else null
    return [pairing_z(t, [p], null) for p in pairs]


def turning_pairs(rotary_dim: int, base: float, context: int) -> int:
    """How many of the fastest pairs turn at least once over ``context`` positions at this
    rotary_dim and base: the pairs whose trained couplings carry the signal."""
    i = torch.arange(rotary_dim // 2, dtype=torch.float64)
    theta = base ** (-2 * i / rotary_dim)
    return int((theta * context >= 2 * math.pi).sum())


def candidate_pairs(layout: str, rotary_dim: int, base: float, context: int) -> list[tuple[int, int]]:
    """The pairs a (layout, rotary_dim) candidate predicts to carry signal (its turning pairs)."""
    return pair_dims(layout, rotary_dim)[: turning_pairs(rotary_dim, base, context)]
