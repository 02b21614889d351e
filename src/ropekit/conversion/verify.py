"""``convert(verify=True)``: are two checkpoints the same model as far as RoPE can tell?

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

__all__ = ["layer_qk", "scores", "compare_scores", "check_conversion", "Reread", "output_spec"]


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


def compare_scores(a: Checkpoint, b: Checkpoint, spec: RopeSpec, tokens: int = 16, seed: int = 0, spec_b=None):
    """(max |diff|, max relative diff, [(layer, |diff|)]) of the attention scores of a and b, each
    rotated with its own spec (``spec_b``: b's, default ``spec``)."""
    g = a.geometry
    layers = sorted({layer_of(n) for n in a.names() if role_of(n) in PERMUTED_ROLES} - {None})
    if not layers:
        raise RopeCheckpointError(f"{a.path}: no q/k tensors to verify")
    gen = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, 4096, (tokens,), generator=gen)
    tables = []
    for sp in (spec, spec if spec_b is None else spec_b):
        sp = sp.replace(head_dim=g.head_dim, rotary_dim=g.rotary_dim) if sp.head_dim != g.head_dim else sp
        tables.append(cos_sin(sp, positions, dtype=torch.float64))
    (cos, sin), (cos_b, sin_b) = tables
    worst_abs, worst_rel, per_layer = 0.0, 0.0, []
    for layer in layers:
        qa, qb = layer_qk(a, layer), layer_qk(b, layer)
        if set(qa) != set(qb):
            raise RopeCheckpointError(f"layer {layer}: {a.path} has {sorted(qa)} but {b.path} has {sorted(qb)}")
        x = torch.randn(tokens, qa["wq"].shape[1], generator=gen, dtype=torch.float64)
        # k's heads as stored: GPT-NeoX's fused qkv holds one k head per q head whatever a
        # num_key_value_heads key in its config says (transformers ignores that key there too)
        n_kv = qa["wk"].shape[0] // g.head_dim
        sa = scores(qa, x, cos, sin, a.layout, g.n_heads, n_kv, g.head_dim)
        sb = scores(qb, x, cos_b, sin_b, b.layout, g.n_heads, n_kv, g.head_dim)
        diff = (sa - sb).abs().max().item()
        per_layer.append((layer, diff))
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(sa.abs().max().item(), 1e-300))
    return worst_abs, worst_rel, per_layer


class Reread(Checkpoint):
    """A converted checkpoint whose tensors are read back with the reference readers —
    ``safetensors.safe_open`` and ``torch.load(weights_only=True)`` — not ropekit's: a reader bug
    that wrote wrong bytes cannot also read them back right.  Names, geometry and layout come from
    ``opened`` (ropekit's view of the same files: configs and headers), and the two must agree on
    the names."""

    def __init__(self, opened: Checkpoint):
        from safetensors import safe_open

        self.path, self.fmt, self.config = opened.path, opened.fmt, opened.config
        self.geometry, self.layout, self.shards = opened.geometry, opened.layout, opened.shards
        self._where: dict[str, object] = {}
        base = self.path if self.path.is_dir() else self.path.parent
        for file, names in opened.shards:
            path = self.path if self.path.is_file() else base / file
            try:
                if path.suffix == ".safetensors":
                    handle = safe_open(str(path), "pt")
                    keys = set(handle.keys())
                else:
                    handle = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                    keys = set(handle)
            except Exception as exc:  # the output is what a reference reader refuses: that is the finding
                first = (str(exc).splitlines() or [""])[0][:200]
                raise RopeCheckpointError(
                    f"verify failed: {path} cannot be loaded by the reference reader ({type(exc).__name__}: {first})"
                ) from None
            if keys != set(names):
                raise RopeCheckpointError(
                    f"verify: {path} holds {sorted(keys ^ set(names))[:3]} that ropekit did not plan"
                )
            for n in names:
                self._where[n] = handle

    def tensor(self, name):
        h = self._where[name]
        return h[name] if isinstance(h, dict) else h.get_tensor(name)


def output_spec(dst: Checkpoint, fallback: RopeSpec) -> RopeSpec:
    """The spec the output's own config says (what a loader of that format computes); a state
    dict without config: ``fallback``."""
    if dst.fmt == "meta":
        from .formats.meta_dir import meta_spec

        return meta_spec(dst.config, str(dst.path / "params.json"))
    if dst.fmt == "hf":
        from ..dialects import from_config

        return from_config(dst.config)
    return fallback


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def check_copies(src: Checkpoint, dst: Checkpoint, copies) -> None:
    """Every tensor the plan copied (``copies``: [(source name, output name)]) has the source's bits."""
    for src_name, dst_name in copies:
        if not same_bits(src.tensor(src_name), dst.tensor(dst_name)):
            raise RopeCheckpointError(f"verify failed: {dst_name} in {dst.path} is not a copy of {src_name}")


def check_conversion(
    src: Checkpoint, dst_path, spec: RopeSpec, config=None, file_layout=None, explicit=False, copies=()
):
    """``compare_scores`` of SRC (its spec: ``spec``) and the output at ``dst_path`` re-read
    independently (its spec: what its own config says, unless ``explicit``), after checking that
    the ``copies`` [(source name, output name)] hold the source's bits."""
    from ..errors import RopeSpecError
    from .formats import open_checkpoint

    dst = open_checkpoint(dst_path, config=config, layout=file_layout)
    try:
        spec_b = spec if explicit else output_spec(dst, spec)
    except RopeSpecError:  # the output's config gives no spec: its source's could not either
        spec_b = spec
    reread = Reread(dst)
    check_copies(src, reread, copies)
    return compare_scores(src, reread, spec, spec_b=spec_b)
