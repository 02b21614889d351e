"""infer_layout: which layout a checkpoint's q/k rows are in, from the trained weights alone.

The signal.  For one head, ``C = W_q W_k^T`` (k's head shared under GQA) is the bilinear form
attention applies between the rotated query and key.  On a true rotation pair (a, b) RoPE rotates
both by the same angle, so only the part of the 2x2 block ``C[[a, b]][:, [a, b]]`` that commutes
with rotations — ``I`` and the generator ``J`` — acts as a function of *relative* position; its
other part turns with *absolute* position and is useless to the model.  Training therefore builds
the antisymmetric cross coupling ``(C_ba - C_ab)`` (the ``J`` part) and not the symmetric one
``(C_ab + C_ba)``.  Two dims that are not a pair (different frequencies) have no such reason: their
cross couplings are symmetric and antisymmetric alike.  Per pair and head the statistic is
``s = (J - L) / (J + L)`` with ``J = (C_ba - C_ab)^2``, ``L = (C_ab + C_ba)^2``.

Only pairs that turn at least once over the trained context count (``theta_i * context >= 2 pi``):
a pair that barely turns is nearly position-free and carries no signal.  The mean of s over a
candidate pairing is judged against random pairings of the same dims (a permutation test): the
result is a z-score per layout and per layer.  On SmolLM2-135M (30 layers, 9 heads) the true layout
scores z = 13.1 (GGUF order) and 13.2 (HF order), the other 2.5 and -3.2; a random-init model of the
same shape scores -0.1 and -0.6 and is reported "unknown" — never a guess.  One layer alone is a
weaker test (9 heads): about half of SmolLM2's layers decide on their own, none the wrong way.

>>> import torch, ropekit as rk
>>> sd = {f"model.layers.0.self_attn.{n}_proj.weight": torch.randn(64, 32) for n in "qk"}
>>> res = rk.infer_layout(sd, {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4,
...                            "head_dim": 16, "max_position_embeddings": 4096})
>>> res.layout
'unknown'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import RopeCheckpointError
from .structure import pair_dims
from .weights import Geometry, geometry_of, qk_layers

__all__ = ["infer_layout", "LayoutResult", "LayerLayout", "MIN_Z", "MIN_MARGIN"]

#: the winning layout's z-score must reach this (random init stays below ~2.5 on SmolLM2) ...
MIN_Z = 6.0
#: ... and beat the other layout's by this much (z-scores of two independent tests: sd sqrt 2)
MIN_MARGIN = 4.0
#: per-layer decisions (fewer heads, weaker): the same rule with lower bars
LAYER_MIN_Z, LAYER_MIN_MARGIN = 4.0, 3.0
_NULL_TRIALS = 256
LAYOUTS = ("half", "interleaved")


@dataclass
class LayerLayout:
    """One layer's evidence: z-score of each layout's pairing, and the layer's own verdict."""

    layer: int
    z: dict[str, float]
    layout: str  # half | interleaved | unknown


@dataclass
class LayoutResult:
    """What ``infer_layout`` found: ``layout`` ("half" | "interleaved" | "unknown"), ``rotary_dim``,
    ``confidence`` (0..1), ``margin`` (winning z minus the other's), per-layer detail in ``layers``."""

    layout: str
    rotary_dim: int
    confidence: float
    margin: float
    z: dict[str, float]
    layers: list[LayerLayout] = field(default_factory=list)
    pairs_used: int = 0
    geometry: Geometry | None = None
    reason: str = ""

    def summary(self) -> str:
        """One line for people."""
        zs = ", ".join(f"{k} z={v:.1f}" for k, v in self.z.items())
        agree = sum(1 for layer in self.layers if layer.layout == self.layout)
        if self.layout == "unknown":
            return f"layout unknown: {self.reason} ({zs})"
        return (
            f"{self.layout} (rotary_dim={self.rotary_dim}; {zs}; margin {self.margin:.1f}, confidence "
            f"{self.confidence:.3f}; {agree}/{len(self.layers)} layers agree on their own)"
        )

    def to_dict(self) -> dict:
        return {
            "layout": self.layout,
            "rotary_dim": self.rotary_dim,
            "confidence": self.confidence,
            "margin": self.margin,
            "z": dict(self.z),
            "pairs_used": self.pairs_used,
            "reason": self.reason,
            "layers": [{"layer": x.layer, "z": dict(x.z), "layout": x.layout} for x in self.layers],
        }


def turning_pairs(g: Geometry) -> int:
    """How many of the fastest pairs turn at least once over the trained context."""
    i = torch.arange(g.rotary_dim // 2, dtype=torch.float64)
    theta = g.base ** (-2 * i / g.rotary_dim)
    return int((theta * g.context >= 2 * math.pi).sum())


def couplings(wq: torch.Tensor, wk: torch.Tensor, g: Geometry) -> torch.Tensor:
    """``W_q W_k^T`` per query head [n_heads, head_dim, head_dim] (the KV head each one reads)."""
    for name, w, n in (("q", wq, g.n_heads), ("k", wk, g.n_kv_heads)):
        if w.ndim != 2 or w.shape[0] != n * g.head_dim:
            raise RopeCheckpointError(
                f"{name} projection has shape {list(w.shape)}; {n} heads x head_dim {g.head_dim} = "
                f"{n * g.head_dim} rows were expected"
            )
    q = wq.double().view(g.n_heads, g.head_dim, -1)
    k = wk.double().view(g.n_kv_heads, g.head_dim, -1).repeat_interleave(g.n_heads // g.n_kv_heads, 0)
    return q @ k.transpose(1, 2)


def _antisymmetry(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over heads and pairs of (J - L) / (J + L)."""
    cab, cba = C[..., a, b], C[..., b, a]
    J, L = (cba - cab) ** 2, (cab + cba) ** 2
    return ((J - L) / (J + L).clamp_min(1e-300)).mean((-2, -1))


def _z_scores(C: torch.Tensor, g: Geometry, m: int, gen: torch.Generator) -> dict[str, float]:
    """z-score of each layout's pairing of the m fastest pairs against random pairings."""
    perms = torch.argsort(torch.rand(_NULL_TRIALS, g.rotary_dim, generator=gen), -1)
    null = torch.stack([_antisymmetry(C, p[:m], p[m : 2 * m]) for p in perms])
    mu, sd = null.mean().item(), max(null.std().item(), 1e-12)
    out = {}
    for layout in LAYOUTS:
        pairs = pair_dims(layout, g.rotary_dim)[:m]
        a, b = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
        out[layout] = (_antisymmetry(C, a, b).item() - mu) / sd
    return out


def _verdict(z: dict[str, float], min_z: float, min_margin: float) -> tuple[str, float]:
    best, other = sorted(LAYOUTS, key=lambda k: -z[k])
    margin = z[best] - z[other]
    return (best if z[best] >= min_z and margin >= min_margin else "unknown"), margin


def infer_layout(checkpoint, config=None, *, layers=None, seed: int = 0) -> LayoutResult:
    """Infer from trained weights whether a checkpoint's q/k rows are in the half or interleaved layout.

    ``checkpoint``: a state dict, a transformers model directory, or a GGUF file; ``config``: its
    config (anything ``ropekit.from_config`` reads; a GGUF file's own metadata when None);
    ``layers``: which layers to read (default all).  Returns a :class:`LayoutResult`; ``layout`` is
    ``"unknown"`` when the weights carry no signal (random init), never a guess.
    """
    g = geometry_of(checkpoint, config)
    m = turning_pairs(g)
    if m < 2:
        return LayoutResult("unknown", g.rotary_dim, 0.0, 0.0, {}, geometry=g, reason="fewer than 2 pairs turn")
    gen = torch.Generator().manual_seed(seed)
    per_layer, all_c = [], []
    for i, wq, wk in qk_layers(checkpoint, layers):
        C = couplings(wq, wk, g)
        all_c.append(C)
        z = _z_scores(C, g, m, gen)
        per_layer.append(LayerLayout(i, z, _verdict(z, LAYER_MIN_Z, LAYER_MIN_MARGIN)[0]))
    z = _z_scores(torch.cat(all_c), g, m, gen)
    layout, margin = _verdict(z, MIN_Z, MIN_MARGIN)
    confidence = 0.5 * math.erfc(-margin / 2) if layout != "unknown" else 0.0  # P(null margin < observed)
    reason = ""
    if layout == "unknown":
        reason = (
            f"neither pairing shows the antisymmetric q/k coupling trained RoPE weights have (needs z >= "
            f"{MIN_Z:g} and a margin >= {MIN_MARGIN:g}): untrained weights, or a layout that is neither"
        )
    return LayoutResult(layout, g.rotary_dim, confidence, margin, z, per_layer, m, g, reason)
