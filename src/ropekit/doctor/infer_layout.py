"""infer_layout: which layout a checkpoint's q/k rows are in, and their rotary_dim, from the trained
weights alone.

The signal (``pair_signal``): on a true rotation pair the trained q/k coupling ``W_q W_k^T`` is
antisymmetric (it turns with relative position), on any other two dims it is not.  Every candidate
(layout, rotary_dim) predicts which dim pairs those are — its pairs that turn at least once over
the trained context — and is scored by a z-score against all other dim pairs of the same heads.

- **layout**: the best candidate of one layout must reach ``MIN_Z`` and beat the other layout's
  best by ``MIN_MARGIN``; else "unknown" (untrained weights, or a layout that is neither).
- **rotary_dim, half layout**: the pairing (i, i + r/2) depends on r, so the weights name r when the
  best r beats the next best by ``MIN_MARGIN``; else the range of r that come close.
- **rotary_dim, interleaved layout**: the pairs (2i, 2i+1) are the same for every r.  Only where the
  signal ends tells, and it ends early in a full-rotary model too (low-frequency pairs barely turn
  over the context and look unrotated: SmolLM2-135M's last 5 of 32 pairs), so the weights give a
  lower bound: the end of the last window of ``WINDOW`` pairs whose z reaches ``WINDOW_Z``, less the
  window (one pair of it is enough for the window to score).  rotary_dim is then the config's when it
  lies in that range, with ``rotary_dim_source`` saying so; a config below it is a contradiction.

On SmolLM2-135M (30 layers, 9 heads; tests/doctor/test_smollm2.py) the true layout scores z = 14
in either order and the other one below 3; random init of the same shape stays below 3 and is
"unknown".

>>> import torch, ropekit as rk
>>> sd = {f"model.layers.0.self_attn.{n}_proj.weight": torch.randn(64, 32) for n in "qk"}
>>> res = rk.infer_layout(sd, {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4,
...                            "head_dim": 16, "max_position_embeddings": 4096})
>>> res.layout, res.rotary_dim
('unknown', None)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..errors import RopeCheckpointError
from .pair_signal import candidate_pairs, null_of, pair_matrix, pair_profile, pairing_z
from .weights import Geometry, geometry_of, qk_layers

__all__ = ["infer_layout", "LayoutResult", "LayerLayout", "Candidate", "MIN_Z", "MIN_MARGIN"]

#: the winning candidate's z-score must reach this (random init stays below ~3 on SmolLM2) ...
MIN_Z = 6.0
#: ... and beat the other layout's (and, for a half rotary_dim, the next r's) by this much
MIN_MARGIN = 4.0
#: per-layer decisions (fewer heads, weaker): the same rule with lower bars
LAYER_MIN_Z, LAYER_MIN_MARGIN = 4.0, 3.0
#: the interleaved lower bound: windows of this many consecutive pairs, significant at this z
WINDOW, WINDOW_Z = 4, 4.0
LAYOUTS = ("half", "interleaved")


@dataclass
class Candidate:
    """One (layout, rotary_dim) hypothesis and the z-score of the pairs it predicts."""

    layout: str
    rotary_dim: int
    z: float
    pairs: int


@dataclass
class LayerLayout:
    """One layer's evidence: z-score of each layout's best candidate, and the layer's own verdict."""

    layer: int
    z: dict[str, float]
    layout: str  # half | interleaved | unknown


@dataclass
class LayoutResult:
    """What ``infer_layout`` found.

    ``layout``: "half" | "interleaved" | "unknown"; ``confidence`` (0..1) and ``margin`` (winning z
    minus the other layout's); ``z``: each layout's best z.  ``rotary_dim``: the weights' when they
    decide it, else the config's when the weights allow it, else None; ``rotary_dim_source``:
    "weights" | "config" | "unknown"; ``rotary_dim_range``: (lo, hi) the weights allow;
    ``contradiction``: how the weights contradict the config's rotary_dim ("" when they do not).
    ``layers``: per-layer detail."""

    layout: str
    rotary_dim: int | None
    confidence: float
    margin: float
    z: dict[str, float]
    rotary_dim_source: str = "unknown"
    rotary_dim_range: tuple[int, int] | None = None
    rotary_dim_note: str = ""
    config_rotary_dim: int | None = None
    contradiction: str = ""
    layers: list[LayerLayout] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    geometry: Geometry | None = None
    reason: str = ""

    def summary(self) -> str:
        """One line for people."""
        zs = ", ".join(f"{k} z={v:.1f}" for k, v in self.z.items())
        if self.layout == "unknown":
            return f"layout unknown: {self.reason} ({zs})"
        agree = sum(1 for layer in self.layers if layer.layout == self.layout)
        lo, hi = self.rotary_dim_range
        r = {
            "weights": f"rotary_dim={self.rotary_dim} from the weights",
            "config": f"rotary_dim={self.rotary_dim} from the config; the weights allow {lo}..{hi}",
        }.get(self.rotary_dim_source, f"rotary_dim unknown; the weights allow {lo}..{hi}")
        text = (
            f"{self.layout} ({r}; {zs}; margin {self.margin:.1f}, confidence {self.confidence:.3f}; "
            f"{agree}/{len(self.layers)} layers agree on their own)"
        )
        return text + (f"; CONTRADICTION: {self.contradiction}" if self.contradiction else "")

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("geometry", "layers", "candidates")}
        out["rotary_dim_range"] = None if self.rotary_dim_range is None else list(self.rotary_dim_range)
        out["layers"] = [asdict(x) for x in self.layers]
        out["candidates"] = [asdict(c) for c in self.candidates]
        return out


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


def search(t: torch.Tensor, g: Geometry) -> list[Candidate]:
    """Every (layout, rotary_dim) candidate with at least 2 turning pairs, best first."""
    null = null_of(t)
    out = []
    for layout in LAYOUTS:
        for r in range(4, g.head_dim + 1, 2):
            pairs = candidate_pairs(layout, r, g.base, g.context)
            if len(pairs) >= 2:
                out.append(Candidate(layout, r, pairing_z(t, pairs, null), len(pairs)))
    return sorted(out, key=lambda c: -c.z)


def _best(candidates: list[Candidate], layout: str) -> Candidate:
    return next(c for c in candidates if c.layout == layout)


def _verdict(z: dict[str, float], min_z: float, min_margin: float) -> tuple[str, float]:
    best, other = sorted(LAYOUTS, key=lambda k: -z[k])
    margin = z[best] - z[other]
    return (best if z[best] >= min_z and margin >= min_margin else "unknown"), margin


def half_rotary_dim(candidates: list[Candidate]) -> tuple[int | None, tuple[int, int], str]:
    """The half layout's rotary_dim: the best r when it beats the next by MIN_MARGIN, else the range
    of r that come within MIN_MARGIN of it."""
    ranked = [c for c in candidates if c.layout == "half"]
    best, second = ranked[0], ranked[1]
    if best.z - second.z >= MIN_MARGIN:
        note = (
            f"the pairing (i, i + r/2) scores z={best.z:.1f} at r={best.rotary_dim}; the next best r="
            f"{second.rotary_dim} z={second.z:.1f}"
        )
        return best.rotary_dim, (best.rotary_dim, best.rotary_dim), note
    close = [c.rotary_dim for c in ranked if c.z >= best.z - MIN_MARGIN]
    note = (
        f"rotary_dims {sorted(close)} score within {MIN_MARGIN:g} of the best (z={best.z:.1f}): "
        "the weights do not decide"
    )
    return None, (min(close), max(close)), note


def interleaved_floor(t: torch.Tensor, head_dim: int) -> tuple[int, list[float]]:
    """The smallest rotary_dim the interleaved pairs' signal allows, and the per-pair z profile."""
    profile = pair_profile(t, [(2 * i, 2 * i + 1) for i in range(head_dim // 2)])
    floor = 2
    for end in range(WINDOW, len(profile) + 1):
        if sum(profile[end - WINDOW : end]) / math.sqrt(WINDOW) >= WINDOW_Z:
            floor = 2 * (end - WINDOW + 1)  # one significant pair of the window is enough
    return floor, profile


def interleaved_rotary_dim(t: torch.Tensor, head_dim: int) -> tuple[int | None, tuple[int, int], str]:
    floor, profile = interleaved_floor(t, head_dim)
    quiet = next((i for i in range(len(profile) - 1, -1, -1) if profile[i] >= 2.0), -1) + 1
    note = (
        f"interleaved pairs (2i, 2i+1) are the same for every rotary_dim: only where the signal ends "
        f"tells, and low-frequency pairs look unrotated in a full-rotary model too; here pairs "
        f"{quiet}..{head_dim // 2 - 1} show none (per-pair z: {', '.join(f'{z:.1f}' for z in profile)})"
    )
    return (head_dim if floor == head_dim else None), (floor, head_dim), note


def _settle_rotary_dim(res: LayoutResult, value: int | None, config_r: int) -> None:
    """rotary_dim, its source and any contradiction with the config's ``config_r``."""
    lo, hi = res.rotary_dim_range
    res.config_rotary_dim = config_r
    if value is not None:
        res.rotary_dim, res.rotary_dim_source = value, "weights"
        if value != config_r:
            res.contradiction = (
                f"the config gives rotary_dim={config_r}, the weights' {res.layout} pairing shows rotary_dim={value}"
            )
    elif lo <= config_r <= hi:
        res.rotary_dim, res.rotary_dim_source = config_r, "config"
    else:
        res.rotary_dim, res.rotary_dim_source = None, "unknown"
        res.contradiction = (
            f"the config gives rotary_dim={config_r}, but the weights show {res.layout} pairs up to dim {lo}"
        )


def _layer_evidence(layer_t: list[tuple[int, torch.Tensor]], best: dict[str, Candidate], g) -> list[LayerLayout]:
    out = []
    for i, t in layer_t:
        null = null_of(t)
        z = {
            layout: pairing_z(t, candidate_pairs(layout, c.rotary_dim, g.base, g.context), null)
            for layout, c in best.items()
        }
        out.append(LayerLayout(i, z, _verdict(z, LAYER_MIN_Z, LAYER_MIN_MARGIN)[0]))
    return out


def infer_layout(checkpoint, config=None, *, layers=None) -> LayoutResult:
    """Infer from trained weights whether a checkpoint's q/k rows are half-split or interleaved, and
    their rotary_dim.

    ``checkpoint``: a state dict, a transformers model directory, or a GGUF file; ``config``: its
    config (anything ``ropekit.from_config`` reads; a GGUF file's own metadata when None) — for the
    head counts, base and context; its rotary_dim is only checked against the weights.  ``layers``:
    which layers to read (default all).  Returns a :class:`LayoutResult`; ``layout`` is
    ``"unknown"`` when the weights carry no signal (random init), never a guess.
    """
    g = geometry_of(checkpoint, config)
    layer_t = [(i, pair_matrix(couplings(wq, wk, g))) for i, wq, wk in qk_layers(checkpoint, layers, g)]
    t = torch.stack([x for _, x in layer_t]).mean(0)  # every layer has the same number of heads
    candidates = search(t, g)
    if not candidates:
        return LayoutResult("unknown", None, 0.0, 0.0, {}, geometry=g, reason="fewer than 2 pairs turn")
    best = {layout: _best(candidates, layout) for layout in LAYOUTS}
    z = {layout: c.z for layout, c in best.items()}
    layout, margin = _verdict(z, MIN_Z, MIN_MARGIN)
    confidence = 0.5 * math.erfc(-margin / 2) if layout != "unknown" else 0.0  # P(null margin < observed)
    res = LayoutResult(layout, None, confidence, margin, z, candidates=candidates[:8], geometry=g)
    res.layers = _layer_evidence(layer_t, best, g)
    if layout == "unknown":
        res.reason = (
            f"neither layout shows the antisymmetric q/k coupling trained RoPE weights have (needs z >= "
            f"{MIN_Z:g} and a margin >= {MIN_MARGIN:g}): untrained weights, or a layout that is neither"
        )
        res.rotary_dim_note = "no layout, so no rotary_dim"
        return res
    if layout == "half":
        value, res.rotary_dim_range, res.rotary_dim_note = half_rotary_dim(candidates)
    else:
        value, res.rotary_dim_range, res.rotary_dim_note = interleaved_rotary_dim(t, g.head_dim)
    _settle_rotary_dim(res, value, g.rotary_dim)
    return res
