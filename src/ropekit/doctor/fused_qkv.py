"""fused_qkv: q and k rows out of one fused q/k/v projection, by the row order of its family.

The orders, read from each family's modeling code in transformers (and checked in
tests/doctor/test_fused_qkv.py against the q/k that code computes):

- ``concat`` — ``[q; k; v]``: n_heads q heads, then n_kv_heads k heads, then v (phi3 ``qkv_proj``,
  LitGPT 0.5's ``attn.qkv``, checked against litgpt's own attention);
- ``grouped`` — per KV group ``[q x (n_heads / n_kv_heads), k, v]`` (falcon ``query_key_value``: with
  ``new_decoder_architecture`` one group per KV head, multi-query one group, else one per head);
  with one group per head this is per head ``[q_h, k_h, v_h]`` (gpt_neox, persimmon).

A fused tensor of any other family is refused, naming the tensor: its order is not known here.

>>> import torch
>>> from ropekit.conversion.formats.base import Geometry
>>> g = Geometry(n_heads=2, n_kv_heads=2, head_dim=2, rotary_dim=2, family="gpt_neox")
>>> w = torch.arange(12.0)[:, None]               # per head [q_h, k_h, v_h], 2 rows each
>>> q, k = split_qk(w, "grouped", g)
>>> q.flatten().tolist(), k.flatten().tolist()
([0.0, 1.0, 6.0, 7.0], [2.0, 3.0, 8.0, 9.0])
"""

from __future__ import annotations

import re

import torch

from ..errors import RopeCheckpointError

__all__ = ["FUSED", "fused_name", "split_qk", "falcon_kv_heads", "FUSED_HINT"]

#: families whose fused projection ropekit splits: (tensor name in layer {i}, row order)
FUSED = {
    "phi3": ("model.layers.{i}.self_attn.qkv_proj.weight", "concat"),
    "gpt_neox": ("gpt_neox.layers.{i}.attention.query_key_value.weight", "grouped"),
    "persimmon": ("model.layers.{i}.self_attn.query_key_value.weight", "grouped"),
    "falcon": ("transformer.h.{i}.self_attention.query_key_value.weight", "grouped"),
    "litgpt": ("transformer.h.{i}.attn.qkv.weight", "concat"),  # LitGPT 0.5: split((q, k, v) sizes)
}
#: names that look like a fused q/k/v projection in any family (to refuse what is not in FUSED)
FUSED_HINT = re.compile(r"(qkv|query_key_value|c_attn|Wqkv|att_proj)[^.]*\.weight$")


def fused_name(names, i: int, family: str) -> tuple[str, str] | None:
    """(tensor name, order) of layer i's fused projection, None when the layer has none; a fused
    tensor whose family's order is not known is refused, naming it."""
    known = FUSED.get(family)
    if known is not None and known[0].format(i=i) in names:
        return known[0].format(i=i), known[1]
    layer = re.compile(rf"(^|\.)(layers|h|blocks|blk)\.{i}\.")
    fused = sorted(n for n in names if layer.search(n) and FUSED_HINT.search(n))
    if fused:
        raise RopeCheckpointError(
            f"layer {i}: q/k are fused in {fused[0]!r}, and ropekit does not know the row order of "
            f"model_type={family!r}'s fused projection (it splits {', '.join(sorted(FUSED))}); "
            f"split it into q and k tensors first"
        )
    return None


def split_qk(w: torch.Tensor, order: str, g) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_q, w_k) rows of a fused projection ``w`` in ``order`` ("concat" | "grouped")."""
    H, KV, D = g.n_heads, g.n_kv_heads, g.head_dim
    rows = (H + 2 * KV) * D
    if w.ndim != 2 or w.shape[0] != rows:
        raise RopeCheckpointError(
            f"the fused q/k/v projection has shape {list(w.shape)}; (n_heads + 2 * n_kv_heads) * head_dim = "
            f"({H} + 2 * {KV}) * {D} = {rows} rows were expected"
        )
    if order == "concat":
        return w[: H * D], w[H * D : (H + KV) * D]
    groups = w.view(KV, H // KV + 2, D, w.shape[1])
    return groups[:, :-2].reshape(H * D, -1), groups[:, -2].reshape(KV * D, -1)


def falcon_kv_heads(data: dict, n_heads: int) -> int:
    """KV heads of a falcon config as its attention module counts them: ``num_kv_heads`` with the new
    decoder architecture, else 1 when multi-query (transformers' default), else one per head."""
    if data.get("new_decoder_architecture"):
        return int(data.get("num_kv_heads") or data.get("n_head_kv") or n_heads)
    return 1 if data.get("multi_query", True) else n_heads
