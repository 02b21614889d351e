"""What every checkpoint format shares: the attention geometry (head counts, head_dim, rotary_dim),
which tensors are q/k (by name), and the reader interface the converter streams from.

>>> from ropekit.conversion.formats.base import role_of
>>> role_of("model.layers.3.self_attn.k_proj.weight"), role_of("layers.0.attention.wq.weight")
('k', 'q')
>>> role_of("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight")
'q'
>>> role_of("model.layers.0.self_attn.q_proj.lora_A.weight") is None   # A feeds from the input side
True
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import RopeCheckpointError, RopeShapeError
from ...layouts import QK_ROLES, ROLES, normalize_layout  # ROLES re-exported

__all__ = ["Geometry", "Checkpoint", "role_of", "layer_of", "permute_tensor", "ROLES"]


_LORA_B = r"(\.lora_B(\.[A-Za-z0-9_-]+)?)?"
_PATTERNS = [
    ("q", re.compile(r"(^|\.)(q_proj|wq)" + _LORA_B + r"\.(weight|bias)$")),
    ("k", re.compile(r"(^|\.)(k_proj|wk)" + _LORA_B + r"\.(weight|bias)$")),
    ("qkv_neox", re.compile(r"(^|\.)attention\.query_key_value" + _LORA_B + r"\.(weight|bias)$")),
    ("qkv_concat", re.compile(r"(^|\.)qkv_proj" + _LORA_B + r"\.(weight|bias)$")),
    ("inv_freq", re.compile(r"(^|\.)rotary_emb\.inv_freq$|^rope\.freqs$")),
]
_LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")
#: model types whose q/k live in tensors convert does not handle yet (the permute helpers do)
UNSUPPORTED_FAMILIES = {
    "deepseek_v2": "permute_mla_q / permute_mla_kv_a",
    "deepseek_v3": "permute_mla_q / permute_mla_kv_a",
    "chatglm": "permute_glm_qkv",
    "glm": "permute_qk with rotary_dim = head_dim / 2",
}


def role_of(name: str) -> str | None:
    """``"q"``, ``"k"``, ``"qkv_neox"`` (per-head [q, k, v]), ``"qkv_concat"`` ([q; k; v]),
    ``"inv_freq"``, or None for tensors RoPE does not touch."""
    for role, pattern in _PATTERNS:
        if pattern.search(name):
            return role
    return None


def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(2)) if m else None


def _int(cfg: dict, key: str, source: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RopeCheckpointError(f"{source}: {key}={value!r} must be a positive integer")
    return value


@dataclass(frozen=True)
class Geometry:
    """How q/k rows are organized: heads x head_dim, the first rotary_dim of each head rotating."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    rotary_dim: int
    n_layers: int | None = None
    family: str = "llama"
    #: the frequencies' base and the trained context: what ropekit.doctor's layout detector needs too
    base: float = 10000.0
    context: int = 4096

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise RopeCheckpointError(
                f"num_attention_heads={self.n_heads} is not a multiple of num_key_value_heads={self.n_kv_heads}"
            )
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise RopeCheckpointError(f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")

    @classmethod
    def from_hf_config(cls, cfg: dict, source: str = "config.json") -> Geometry:
        """Read the head layout from a transformers config dict (v4 or v5 keys)."""
        family = str(cfg.get("model_type", "llama"))
        n_heads = _int(cfg, "num_attention_heads", source)
        kv_key = next((k for k in ("num_key_value_heads", "multi_query_group_num") if cfg.get(k) is not None), None)
        n_kv = n_heads if kv_key is None else _int(cfg, kv_key, source)
        if cfg.get("num_hidden_layers") is not None:
            _int(cfg, "num_hidden_layers", source)
        if cfg.get("head_dim"):
            head_dim = _int(cfg, "head_dim", source)
        else:
            hidden = _int(cfg, "hidden_size", source)
            if hidden % n_heads:
                raise RopeCheckpointError(
                    f"{source}: hidden_size={hidden} is not divisible by num_attention_heads={n_heads} "
                    "(and no head_dim)"
                )
            head_dim = hidden // n_heads
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise RopeCheckpointError(f"{source}: rope_parameters={rope!r} must be a JSON object")
        if isinstance(cfg.get("rotary_dim"), int):  # GPT-J, CodeGen: an absolute count
            rotary_dim = cfg["rotary_dim"]
        else:
            fraction = cfg.get("partial_rotary_factor", rope.get("partial_rotary_factor", cfg.get("rotary_pct", 1.0)))
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                raise RopeCheckpointError(f"{source}: partial_rotary_factor={fraction!r} must be a number in (0, 1]")
            rotary_dim = int(head_dim * float(fraction))
        try:
            return cls(n_heads, n_kv, head_dim, rotary_dim, cfg.get("num_hidden_layers"), family)
        except RopeCheckpointError as exc:
            raise RopeCheckpointError(f"{source}: {exc}") from None

    def heads_for(self, role: str) -> int:
        return self.n_kv_heads if role == "k" else self.n_heads


def permute_tensor(t, role: str, g: Geometry, src: str, dst: str, name: str):
    """Move the q/k rows of one stored tensor (any role) from layout src to dst."""
    from ...permute import permute_neox_qkv, permute_phi3_qkv, permute_qk  # torch

    if role in QK_ROLES:
        return permute_qk(t, g.heads_for(role), g.head_dim, g.rotary_dim, src, dst, name=name)
    if role == "qkv_neox":
        return permute_neox_qkv(t, g.n_heads, g.head_dim, g.rotary_dim, src, dst, name=name)
    if role == "qkv_concat":
        return permute_phi3_qkv(t, g.n_heads, g.n_kv_heads, g.head_dim, g.rotary_dim, src, dst, name=name)
    raise RopeShapeError(f"tensor {name!r} (role {role!r}) has no q/k rows to permute")


class Checkpoint:
    """A checkpoint opened for streaming.  Subclasses fill the attributes below."""

    fmt: str = "?"
    path: Path
    config: dict
    geometry: Geometry | None
    layout: str
    #: (file name, tensor names in data order) for every weight file
    shards: list[tuple[str, list[str]]]
    #: files that travel along unchanged (tokenizer, generation config, ...), relative to path
    aux_files: list[str]

    def names(self) -> list[str]:
        return [n for _, names in self.shards for n in names]

    def info(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:  # noqa: F821 (torch: only where the format needs it)
        raise NotImplementedError

    def raw_info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype name, shape): like ``info`` without needing torch where the format
        does not (safetensors)."""
        from .dtypes import dtype_name

        dtype, shape = self.info(name)
        return dtype_name(dtype), shape

    def tensor(self, name: str):
        raise NotImplementedError

    def byte_range(self, name: str) -> tuple[str, int, int] | None:
        """(file, start, end) when the tensor's bytes can be copied verbatim, else None."""
        return None

    @staticmethod
    def check_layout(layout: str) -> str:
        return normalize_layout(layout)


def list_aux(path: Path, skip: set[str]) -> list[str]:
    """Every regular file under path (recursively) except ``skip`` and hidden files."""
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(root, f), path)
            if rel not in skip and not f.startswith("."):
                out.append(rel)
    return out
