"""Planning a conversion: for every source tensor, copy / permute / drop, and which ``inv_freq``
tensors to add — from names, dtypes, shapes and the attention geometry only; no tensor data read.

>>> from ropekit.conversion.plan import Step
>>> Step("permute", "model.layers.0.self_attn.q_proj.weight", "layers.0.attention.wq.weight", "q").describe()
'permute  model.layers.0.self_attn.q_proj.weight -> layers.0.attention.wq.weight'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import RopeCheckpointError
from ..layouts import PERMUTED_ROLES, normalize_layout, qk_row_count
from ..spec import RopeSpec
from .formats import dtypes
from .formats.base import UNSUPPORTED_FAMILIES, Checkpoint, Geometry, role_of

__all__ = ["Step", "Plan", "plan", "target", "INV_FREQ_POLICIES", "FORMATS_TO"]

INV_FREQ_POLICIES = ("keep", "drop", "add", "verify")
META_FAMILIES = ("llama", "mistral")
FORMATS_TO = ("hf", "meta")


@dataclass
class Step:
    """What happens to one destination tensor (or to a dropped source tensor)."""

    action: str  # "copy" | "permute" | "drop" | "add"
    src: str | None
    dst: str | None
    role: str | None = None
    dtype: str | None = None  # safetensors' name ("BF16"; formats/raw.py), so planning needs no torch
    shape: tuple[int, ...] | None = None
    make: Callable[[], object] | None = None  # "add": produces the tensor (torch)

    @property
    def nbytes(self) -> int:
        return dtypes.nbytes(self.dtype, self.shape)

    def describe(self) -> str:
        if self.action == "add":
            return f"add      {self.dst} {list(self.shape)} {dtypes.torch_name(self.dtype)}"
        if self.action == "drop":
            return f"drop     {self.src}"
        arrow = "" if self.src == self.dst else f" -> {self.dst}"
        return f"{self.action:8s} {self.src}{arrow}"


@dataclass
class Plan:
    """``shards``: [(destination file of the source's sharding, [Step])]; ``dropped``: [Step];
    ``notes``: what the plan decided that a user should hear about."""

    shards: list[tuple[str, list[Step]]]
    dropped: list[Step]
    notes: list[str]

    def steps(self) -> list[Step]:
        return [s for _, steps in self.shards for s in steps]


def target(ckpt: Checkpoint, layout: str | None, to: str | None) -> tuple[str, str]:
    """(destination format, destination layout) for ``to`` / ``layout`` (None: the defaults)."""
    if to is not None and to not in FORMATS_TO:
        raise RopeCheckpointError(f"to={to!r} is not a format; use 'hf' or 'meta'")
    dst_fmt = ckpt.fmt if to is None else to
    if (ckpt.fmt == "state_dict") != (dst_fmt == "state_dict"):
        raise RopeCheckpointError(
            f"to={to!r}: cannot convert a {ckpt.fmt} checkpoint to {dst_fmt}; "
            "'to' converts between 'hf' and 'meta' directories"
        )
    if layout is not None:
        dst_layout = normalize_layout(layout)
    elif dst_fmt == "meta":
        dst_layout = "interleaved"
    elif dst_fmt == "hf" and ckpt.fmt == "meta":
        dst_layout = "half"  # what transformers' rotate_half expects
    else:
        dst_layout = ckpt.layout
    if dst_fmt == "meta" and dst_layout != "interleaved":
        raise RopeCheckpointError(
            f"layout={layout!r} with to='meta': Meta checkpoints are interleaved by definition "
            "(Meta rotates complex pairs)"
        )
    return dst_fmt, dst_layout


def _renamer(ckpt: Checkpoint, dst_fmt: str, meta_generation: str | None) -> Callable[[str], str] | None:
    if ckpt.fmt == "hf" and dst_fmt == "meta":
        if ckpt.geometry.family not in META_FAMILIES:
            raise RopeCheckpointError(
                f"model_type={ckpt.geometry.family!r} has no Meta checkpoint form (only {', '.join(META_FAMILIES)})"
            )
        from .formats.meta_dir import check_meta_expressible, hf_to_meta_name

        check_meta_expressible(ckpt.config, ckpt.geometry, meta_generation)
        return hf_to_meta_name
    if ckpt.fmt == "meta" and dst_fmt == "hf":
        from .formats.meta_dir import meta_to_hf_name

        return meta_to_hf_name
    return None


def _check_rows(name: str, role: str, shape, g: Geometry) -> None:
    expected, what = qk_row_count(role, g.n_heads, g.n_kv_heads, g.head_dim)
    if not shape or shape[0] != expected:
        raise RopeCheckpointError(
            f"tensor {name} has shape {list(shape)} but {role} needs {expected} rows ({what}); "
            "check num_attention_heads / num_key_value_heads"
        )


def _check_geometry(ckpt: Checkpoint, permute: bool) -> None:
    g = ckpt.geometry
    if permute and g is None:
        raise RopeCheckpointError(
            f"changing the layout of {ckpt.path} needs its head counts: pass config= (a config.json or params.json)"
        )
    if g is not None and permute and g.family in UNSUPPORTED_FAMILIES:
        raise RopeCheckpointError(
            f"model_type={g.family!r}: convert does not permute its q/k tensors yet; "
            f"use ropekit.permute.{UNSUPPORTED_FAMILIES[g.family]}"
        )


def plan(
    ckpt: Checkpoint,
    dst_fmt: str,
    dst_layout: str,
    inv_freq: str = "keep",
    spec: RopeSpec | None = None,
    meta_generation: str | None = None,
) -> Plan:
    """Every tensor's fate.  Reads names, dtypes and shapes only."""
    from .inv_freq import InvFreqPlanner

    if inv_freq not in INV_FREQ_POLICIES:
        raise RopeCheckpointError(f"inv_freq={inv_freq!r} must be one of {INV_FREQ_POLICIES}")
    permute = dst_layout != ckpt.layout
    _check_geometry(ckpt, permute)
    rename = _renamer(ckpt, dst_fmt, meta_generation)
    meta_names = dst_fmt == "meta" or (dst_fmt == "state_dict" and any(".attention.wq." in n for n in ckpt.names()))
    freqs = InvFreqPlanner(ckpt, inv_freq, spec, meta_names, converting=rename is not None, dst_fmt=dst_fmt)
    found_qk = False
    shards: list[tuple[str, list[Step]]] = []
    for file, names in ckpt.shards:
        steps: list[Step] = []
        for name in names:
            role = role_of(name)
            dtype, shape = ckpt.raw_info(name)
            if role == "inv_freq":
                steps += freqs.stored(name, dtype, shape)
                continue
            dst = rename(name) if rename is not None else name
            action = "copy"
            if role in PERMUTED_ROLES:
                found_qk = True
                if permute:
                    _check_rows(name, role, shape, ckpt.geometry)
                    action = "permute"
            steps.append(Step(action, name, dst, role, dtype, shape))
            steps += freqs.after(name)
        shards.append((file, steps))
    if dst_fmt == "meta" and rename is not None:
        _store_tied_output(shards)
    if permute and not found_qk:
        raise RopeCheckpointError(
            f"{ckpt.path}: no q/k projection tensors found (looked for q_proj/k_proj, wq/wk, query_key_value, qkv_proj)"
        )
    return Plan(shards, freqs.dropped, freqs.notes)


def _store_tied_output(shards) -> None:
    """transformers ties lm_head to the embedding without storing it; Meta always stores output."""
    dsts = {s.dst for _, steps in shards for s in steps}
    if "output.weight" not in dsts and "tok_embeddings.weight" in dsts:
        emb = next(s for _, steps in shards for s in steps if s.dst == "tok_embeddings.weight")
        shards[-1][1].append(Step("copy", emb.src, "output.weight", None, emb.dtype, emb.shape))
