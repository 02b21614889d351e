"""``convert --verify``: are two checkpoints the same model as far as RoPE can tell?

For every layer, both sides project the same random hidden states to q and k (float64, biases
included), rotate them in *their own* layout with the same exact tables, and form the attention
scores q·k for every head pair (GQA: each q head against its kv head).  A row permutation that
does not match the layout change, a wrong kv-head count or a lost bias moves the scores by O(1);
a correct conversion only reorders sums, so the scores agree to float64 rounding.
"""

from __future__ import annotations

import torch

from ..apply import apply_rope
from ..errors import RopeCheckpointError
from ..layouts import PERMUTED_ROLES, QK_ROLES
from ..spec import RopeSpec
from ..tables import cos_sin
from .formats.base import Checkpoint, layer_of, role_of

__all__ = ["layer_qk", "scores", "compare_scores"]


def layer_qk(ckpt: Checkpoint, layer: int) -> dict[str, torch.Tensor]:
    """{"wq", "bq", "wk", "bk"} of one layer (fused projections split), float64."""
    g = ckpt.geometry
    out: dict[str, torch.Tensor] = {}
    for name in ckpt.names():
        role = role_of(name)
        if role not in PERMUTED_ROLES or "lora_" in name or layer_of(name) != layer:
            continue
        kind = "w" if name.endswith(".weight") else "b"
        t = ckpt.tensor(name).to(torch.float64)
        if role in QK_ROLES:
            out[kind + role] = t
            continue
        rest = t.shape[1:]
        if role == "qkv_neox":
            heads = t.reshape(g.n_heads, 3, g.head_dim, *rest)
            out[kind + "q"], out[kind + "k"] = (heads[:, i].reshape(-1, *rest) for i in (0, 1))
        else:
            nq, nk = g.n_heads * g.head_dim, g.n_kv_heads * g.head_dim
            out[kind + "q"], out[kind + "k"] = t[:nq], t[nq : nq + nk]
    return out


def scores(qk: dict, x: torch.Tensor, cos, sin, layout: str, n_heads: int, n_kv: int, head_dim: int) -> torch.Tensor:
    """Attention scores [heads, T, T] of one layer for hidden states x [T, hidden]."""
    T = x.shape[0]
    q = x @ qk["wq"].T + qk.get("bq", 0)
    k = x @ qk["wk"].T + qk.get("bk", 0)
    q = apply_rope(q.view(1, T, n_heads, head_dim), cos, sin, layout=layout)[0]
    k = apply_rope(k.view(1, T, n_kv, head_dim), cos, sin, layout=layout)[0]
    k = k.repeat_interleave(n_heads // n_kv, dim=1)
    return torch.einsum("thd,uhd->htu", q, k)


def compare_scores(a: Checkpoint, b: Checkpoint, spec: RopeSpec, tokens: int = 16, seed: int = 0):
    """(max |diff|, max relative diff, [(layer, |diff|)]) of the attention scores of a and b."""
    g = a.geometry
    layers = sorted({layer_of(n) for n in a.names() if role_of(n) in ("q", "k", "qkv_neox", "qkv_concat")} - {None})
    if not layers:
        raise RopeCheckpointError(f"{a.path}: no q/k tensors to verify")
    gen = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, 4096, (tokens,), generator=gen)
    spec = spec.replace(head_dim=g.head_dim, rotary_dim=g.rotary_dim) if spec.head_dim != g.head_dim else spec
    cos, sin = cos_sin(spec, positions, dtype=torch.float64)
    worst_abs, worst_rel, per_layer = 0.0, 0.0, []
    for layer in layers:
        qa, qb = layer_qk(a, layer), layer_qk(b, layer)
        if set(qa) != set(qb):
            raise RopeCheckpointError(f"layer {layer}: {a.path} has {sorted(qa)} but {b.path} has {sorted(qb)}")
        x = torch.randn(tokens, qa["wq"].shape[1], generator=gen, dtype=torch.float64)
        sa = scores(qa, x, cos, sin, a.layout, g.n_heads, g.n_kv_heads, g.head_dim)
        sb = scores(qb, x, cos, sin, b.layout, g.n_heads, g.n_kv_heads, g.head_dim)
        diff = (sa - sb).abs().max().item()
        per_layer.append((layer, diff))
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(sa.abs().max().item(), 1e-300))
    return worst_abs, worst_rel, per_layer
