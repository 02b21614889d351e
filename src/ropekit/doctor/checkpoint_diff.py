"""checkpoint_diff: are checkpoint B's q/k rows checkpoint A's rows, permuted — and by which call?

For every layer and each of q and k, B's tensor is tried against A's tensor under each ropekit row
permutation that converters apply (none; ``permute_qk(w, n_heads, head_dim, rotary_dim, src, dst)``
both ways, for the config's rotary_dim and the whole head), after rounding both to the coarser of
their dtypes (a bf16 copy of an fp32 checkpoint is "the same rows"; a Q4 GGUF against its source
is not).  The first tensor that no permutation explains is named.

>>> import torch, ropekit as rk
>>> a = {"model.layers.0.self_attn.q_proj.weight": torch.randn(16, 8),
...      "model.layers.0.self_attn.k_proj.weight": torch.randn(8, 8)}
>>> b = {k: rk.permute_qk(v, n_heads=v.shape[0] // 8, head_dim=8) for k, v in a.items()}
>>> geometry = Geometry(n_heads=2, n_kv_heads=1, head_dim=8, rotary_dim=8, base=1e4, context=4096)
>>> diff = diff_checkpoints(a, b, geometry)
>>> diff.same_up_to_permutation, diff.permutation
(True, "permute_qk(w, n_heads=..., head_dim=8, rotary_dim=8, src='interleaved', dst='half')")
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import RopeCheckpointError
from ..kernels.reference import eps
from ..permute import permute_qk
from .weights import Geometry, qk_layers

__all__ = ["diff_checkpoints", "CheckpointDiff", "TensorMatch"]


@dataclass
class TensorMatch:
    layer: int
    role: str  # q | k
    permutation: str | None  # "identity", a permute_qk call, or None (nothing explains B)
    max_err: float  # max |A' - B| after the best permutation, in units of the coarser dtype's eps * max|A|


@dataclass
class CheckpointDiff:
    """Per layer and q/k tensor: which permutation maps A's rows to B's; ``first_difference`` names
    the first tensor no permutation explains."""

    tensors: list[TensorMatch] = field(default_factory=list)

    @property
    def first_difference(self) -> TensorMatch | None:
        return next((t for t in self.tensors if t.permutation is None), None)

    @property
    def same_up_to_permutation(self) -> bool:
        return bool(self.tensors) and self.first_difference is None

    @property
    def permutation(self) -> str | None:
        """The one permutation every tensor agrees on, if they all do (``n_heads=...``: per tensor)."""
        if not self.same_up_to_permutation:
            return None
        calls = {t.permutation.replace(f"n_heads={_heads_of(t.permutation)},", "n_heads=...,") for t in self.tensors}
        return calls.pop() if len(calls) == 1 else None

    def report(self) -> str:
        lines = []
        first = self.first_difference
        if first is None and self.tensors:
            lines.append(f"B's q/k rows are A's rows, permuted: {self.permutation or 'per tensor, see below'}")
        elif first is not None:
            lines.append(
                f"first difference beyond a permutation: layer {first.layer} {first.role}_proj "
                f"(best permutation still off by {first.max_err:.3g} ulps)"
            )
        for t in self.tensors:
            lines.append(f"  layer {t.layer:3d} {t.role}: {t.permutation or 'DIFFERS'} ({t.max_err:.3g} ulps)")
        return "\n".join(lines)


def _heads_of(call: str | None) -> str:
    if not call or "n_heads=" not in call:
        return ""
    return call.split("n_heads=")[1].split(",")[0]


def _candidates(g: Geometry, n_heads: int):
    yield "identity", lambda w: w
    rotary = dict.fromkeys((g.rotary_dim, g.head_dim))
    for r in rotary:
        for src, dst in (("interleaved", "half"), ("half", "interleaved")):
            call = f"permute_qk(w, n_heads={n_heads}, head_dim={g.head_dim}, rotary_dim={r}, src='{src}', dst='{dst}')"
            yield (
                call,
                lambda w, r=r, src=src, dst=dst: permute_qk(
                    w, n_heads=n_heads, head_dim=g.head_dim, rotary_dim=r, src=src, dst=dst
                ),
            )


def _eps(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.dtype, float]:
    coarse = max((a.dtype, b.dtype), key=eps)
    return coarse, eps(coarse)


def match_tensor(a: torch.Tensor, b: torch.Tensor, g: Geometry, n_heads: int, layer: int, role: str) -> TensorMatch:
    """The permutation of A's rows that gives B's (within one rounding to the coarser dtype)."""
    if a.shape != b.shape:
        return TensorMatch(layer, role, None, float("inf"))
    coarse, eps = _eps(a, b)
    scale = max(a.abs().max().item(), 1e-30) * eps
    bq = b.to(coarse).double()
    best = (float("inf"), None)
    for call, fn in _candidates(g, n_heads):
        err = (fn(a).to(coarse).double() - bq).abs().max().item() / scale
        best = min(best, (err, call), key=lambda x: x[0])
        if err <= 1.0:  # one rounding of the coarser dtype (both sides rounded from the same value)
            return TensorMatch(layer, role, call, err)
    return TensorMatch(layer, role, None, best[0])


def diff_checkpoints(a, b, geometry: Geometry, *, layers=None) -> CheckpointDiff:
    """Compare two checkpoints of one model (state dicts, model directories or GGUF files) q/k tensor
    by q/k tensor.  Returns a :class:`CheckpointDiff`."""
    out = CheckpointDiff()
    layers_a, layers_b = list(qk_layers(a, layers, geometry)), list(qk_layers(b, layers, geometry))
    if len(layers_a) != len(layers_b):
        raise RopeCheckpointError(
            f"A has {len(layers_a)} layers with q/k projections, B has {len(layers_b)}: "
            "not two checkpoints of one model"
        )
    for (i, qa, ka), (_, qb, kb) in zip(layers_a, layers_b):
        out.tensors.append(match_tensor(qa, qb, geometry, geometry.n_heads, i, "q"))
        out.tensors.append(match_tensor(ka, kb, geometry, geometry.n_kv_heads, i, "k"))
    return out
