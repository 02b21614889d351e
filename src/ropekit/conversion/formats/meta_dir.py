"""Meta Llama directories: ``params.json`` + ``consolidated.NN.pth`` (one per model-parallel rank).

Meta's reference code rotates q/k as complex numbers, i.e. in the interleaved layout, so a Meta
directory is interleaved by definition.  ``.pth`` files are never unpickled with code execution:
their layout is read by a restricted unpickler (``torch_zip``) or ``torch.load(weights_only=True)``.
Model-parallel shards are merged on read: column-parallel weights (wq, wk, wv, w1, w3, output)
along dim 0, row-parallel ones (wo, w2) along dim 1, the embedding along whichever dim its shard
shape says (Llama 2 split the model dim, Llama 3 the vocabulary), norms replicated.  Writing
produces a single ``consolidated.00.pth``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ...errors import RopeCheckpointError
from .base import Checkpoint, Geometry, list_aux
from .dtypes import torch_dtype, torch_name
from .pth_file import PthFile, dtype_name_of

__all__ = [
    "MetaCheckpoint",
    "is_meta_dir",
    "geometry_from_params",
    "hf_to_meta_name",
    "meta_to_hf_name",
    "params_from_hf",
    "hf_config_from_meta",
    "check_meta_expressible",
]

_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")
#: Meta name pattern <-> transformers (Llama) name pattern; {i} is the layer
_NAMES = [
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("layers.{i}.attention.wq.{p}", "model.layers.{i}.self_attn.q_proj.{p}"),
    ("layers.{i}.attention.wk.{p}", "model.layers.{i}.self_attn.k_proj.{p}"),
    ("layers.{i}.attention.wv.{p}", "model.layers.{i}.self_attn.v_proj.{p}"),
    ("layers.{i}.attention.wo.{p}", "model.layers.{i}.self_attn.o_proj.{p}"),
    ("layers.{i}.feed_forward.w1.{p}", "model.layers.{i}.mlp.gate_proj.{p}"),
    ("layers.{i}.feed_forward.w2.{p}", "model.layers.{i}.mlp.down_proj.{p}"),
    ("layers.{i}.feed_forward.w3.{p}", "model.layers.{i}.mlp.up_proj.{p}"),
    ("layers.{i}.attention_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
]


def _compile(pattern: str) -> re.Pattern:
    rx = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile("^" + rx + "$")


_META_TO_HF = [(_compile(m), h) for m, h in _NAMES]
_HF_TO_META = [(_compile(h), m) for m, h in _NAMES]


def _rename(name: str, table, what: str) -> str:
    for rx, target in table:
        m = rx.match(name)
        if m:
            return target.format(**m.groupdict())
    raise RopeCheckpointError(f"tensor {name} has no {what} equivalent (only Llama-architecture tensors convert)")


def meta_to_hf_name(name: str) -> str:
    """>>> meta_to_hf_name("layers.7.attention.wk.weight")
    'model.layers.7.self_attn.k_proj.weight'
    """
    return _rename(name, _META_TO_HF, "transformers")


def hf_to_meta_name(name: str) -> str:
    """>>> hf_to_meta_name("model.layers.7.mlp.gate_proj.weight")
    'layers.7.feed_forward.w1.weight'
    """
    return _rename(name, _HF_TO_META, "Meta")


def is_meta_dir(path: Path) -> bool:
    return path.is_dir() and (path / "params.json").is_file() and any(_SHARD.match(p.name) for p in path.iterdir())


def geometry_from_params(params: dict, source: str) -> Geometry:
    """The attention geometry a Meta params.json describes (``source`` names it in errors)."""
    for key in ("dim", "n_heads", "n_layers"):
        if isinstance(params.get(key), bool) or not isinstance(params.get(key), int) or params[key] < 1:
            raise RopeCheckpointError(f"{source}: {key}={params.get(key)!r} must be a positive integer")
    n_heads = params["n_heads"]
    n_kv = params.get("n_kv_heads")
    if n_kv is None:
        n_kv = n_heads
    elif isinstance(n_kv, bool) or not isinstance(n_kv, int) or n_kv < 1:
        raise RopeCheckpointError(f"{source}: n_kv_heads={n_kv!r} must be a positive integer")
    if params["dim"] % n_heads:
        raise RopeCheckpointError(f"{source}: dim={params['dim']} is not divisible by n_heads={n_heads}")
    head_dim = params["dim"] // n_heads
    try:
        return Geometry(n_heads, n_kv, head_dim, head_dim, params["n_layers"], "llama")
    except RopeCheckpointError as exc:
        raise RopeCheckpointError(f"{source}: {exc}") from None


class MetaCheckpoint(Checkpoint):
    fmt = "meta"

    def __init__(self, path: Path):
        from .hf_dir import read_json

        self.path = Path(path)
        self.config = read_json(self.path / "params.json")
        self.geometry = geometry_from_params(self.config, str(self.path / "params.json"))
        self.layout = "interleaved"
        files = sorted(
            (p.name for p in self.path.iterdir() if _SHARD.match(p.name)), key=lambda n: int(_SHARD.match(n).group(1))
        )
        self.files = [PthFile(self.path / f) for f in files]
        self.parts = [pf.layout for pf in self.files]
        names = list(self.parts[0])
        for f, part in zip(files[1:], self.parts[1:]):
            if list(part) != names:
                raise RopeCheckpointError(f"model-parallel shard {f} holds different tensors than {files[0]}")
        n = len(self.parts)
        if n > 1 and self.geometry.n_kv_heads % n:
            raise RopeCheckpointError(
                f"n_kv_heads={self.geometry.n_kv_heads} does not divide across {n} model-parallel shards"
            )
        for name in names if n > 1 else ():
            dim, first = self._concat_dim(name), self.parts[0][name]
            for f, part in zip(files[1:], self.parts[1:]):
                t = part[name]
                same = dtype_name_of(t) == dtype_name_of(first) and t.dim() == first.dim()
                same = same and all(a == b for d, (a, b) in enumerate(zip(t.shape, first.shape)) if d != dim)
                if not same:
                    raise RopeCheckpointError(
                        f"tensor {name} is {torch_name(dtype_name_of(t))}{list(t.shape)} in {f} but "
                        f"{torch_name(dtype_name_of(first))}{list(first.shape)} in {files[0]}; "
                        "model-parallel shards must agree"
                        + ("" if dim is None else f" outside dim {dim}, along which they are concatenated")
                    )
        # one logical checkpoint; it is written back as a single file
        self.shards = [("consolidated.00.pth", names)]
        self.aux_files = list_aux(self.path, set(files) | {"params.json"})

    def _concat_dim(self, name: str) -> int | None:
        if len(self.parts) == 1 or self.parts[0][name].dim() == 0:
            return None
        leaf = name.rsplit(".", 2)
        if name == "tok_embeddings.weight":
            return 1 if self.parts[0][name].shape[1] != self.config["dim"] else 0
        if name == "output.weight" or (len(leaf) == 3 and leaf[1] in ("wq", "wk", "wv", "w1", "w3")):
            return 0
        if len(leaf) == 3 and leaf[1] in ("wo", "w2") and leaf[2] == "weight":
            return 1
        return None  # norms, rope.freqs, biases of row-parallel layers: replicated

    def info(self, name):
        dtype, shape = self.raw_info(name)
        return torch_dtype(dtype), shape

    def raw_info(self, name):
        t = self.parts[0][name]
        dim = self._concat_dim(name)
        shape = list(t.shape)
        if dim is not None:
            shape[dim] = sum(p[name].shape[dim] for p in self.parts)
        return dtype_name_of(t), tuple(shape)

    def _read(self, i: int, name: str):  # shard i's part of tensor `name`
        return self.files[i].tensor(name)

    def tensor(self, name):
        dim = self._concat_dim(name)
        if dim is None:
            return self._read(0, name)
        import torch

        return torch.cat([self._read(i, name) for i in range(len(self.parts))], dim=dim)

    def byte_range(self, name):
        return self.files[0].byte_range(name) if len(self.files) == 1 else None


#: the Meta code generations a params.json is written for (``meta_generation=``):
#: "llama2": Meta's llama repo (Llama 1/2): ModelArgs is a dataclass, so an unknown key such as
#:   rope_theta is a TypeError; theta is hard-coded 10000, no scaling.
#: "llama3": Meta's llama-models (Llama 3.x): rope_theta (default 500000) and use_scaled_rope,
#:   whose apply_scaling hard-codes the constants below; other keys are ignored.
META_GENERATIONS = ("llama2", "llama3")
LLAMA2_THETA = 10000.0
#: Meta's apply_scaling constants (llama-models, models/llama3/model.py): params.json cannot change them
_META_LLAMA3 = {
    "rope_scaling_factor": ("factor", 8.0),
    "rope_low_freq_factor": ("low_freq_factor", 1.0),
    "rope_high_freq_factor": ("high_freq_factor", 4.0),
    "rope_original_max_position_embeddings": ("original_max_position_embeddings", 8192),
}


def params_from_hf(cfg: dict, geometry: Geometry, intermediate_size: int, generation: str | None = None) -> dict:
    """A Meta params.json for a transformers Llama config (Meta derives the FFN width from
    ``multiple_of`` and ``ffn_dim_multiplier``; we choose them so that it comes out exact), with
    only the keys the target generation's ModelArgs accepts (see META_GENERATIONS)."""
    rope_keys = check_meta_expressible(cfg, geometry, generation)
    hidden = cfg["hidden_size"]
    params = {
        "dim": hidden,
        "n_layers": cfg["num_hidden_layers"],
        "n_heads": geometry.n_heads,
        "n_kv_heads": geometry.n_kv_heads,
        "vocab_size": cfg["vocab_size"],
        "multiple_of": intermediate_size,
        "norm_eps": cfg.get("rms_norm_eps", 1e-5),
    }
    base_hidden = int(2 * (4 * hidden) / 3)
    if base_hidden > intermediate_size:
        # Meta: int(multiplier * base_hidden) rounded up to multiple_of; land in (0, intermediate_size]
        params["ffn_dim_multiplier"] = intermediate_size / base_hidden
    params.update(rope_keys)
    return params


def check_meta_expressible(cfg: dict, geometry: Geometry, generation: str | None = None) -> dict:
    """The params.json RoPE keys of a transformers config, or the error that says why Meta's
    reference code cannot compute the same RoPE from a params.json (checked before any tensor is
    written).  ``generation``: one of META_GENERATIONS, or None for the one the config came from
    (Llama 1/2 for theta 10000 without scaling, else Llama 3)."""
    hidden = cfg.get("hidden_size")
    if geometry.head_dim * geometry.n_heads != hidden:
        raise RopeCheckpointError(
            f"config.json: head_dim={geometry.head_dim} x num_attention_heads={geometry.n_heads} != "
            f"hidden_size={hidden}; Meta's params.json cannot express that"
        )
    if geometry.rotary_dim != geometry.head_dim:
        raise RopeCheckpointError(
            f"config.json: partial rotary (rotary_dim={geometry.rotary_dim}) has no Meta params.json form"
        )
    if generation is not None and generation not in META_GENERATIONS:
        raise RopeCheckpointError(f"meta_generation={generation!r} must be one of {META_GENERATIONS}")
    return _meta_rope_keys(cfg, generation)


def _spec_of(cfg: dict, source: str):
    # the one reader of RoPE config keys is ropekit.dialects; here only its result is translated
    from ...dialects import from_config
    from ...errors import RopeSpecError

    try:
        return from_config(cfg)
    except RopeSpecError as exc:
        raise RopeCheckpointError(f"{source}: {exc}") from None


def _meta_rope_keys(cfg: dict, generation: str | None) -> dict:
    spec = _spec_of(cfg, "config.json")
    if spec.attention_factor not in (None, 1.0):
        raise RopeCheckpointError(f"config.json: attention_factor={spec.attention_factor} has no Meta params.json form")
    if spec.scaling is not None:
        if spec.scaling.kind != "llama3":
            raise RopeCheckpointError(f"config.json: rope_type={spec.scaling.kind!r} has no Meta params.json form")
        off = [
            f"{f}={getattr(spec.scaling, f)!r}" for f, meta in _META_LLAMA3.values() if getattr(spec.scaling, f) != meta
        ]
        if off:
            raise RopeCheckpointError(
                f"config.json: llama3 scaling with {', '.join(off)}: Meta's reference code (apply_scaling) hard-codes "
                "factor=8, low_freq_factor=1, high_freq_factor=4, original_max_position_embeddings=8192, "
                "so a Meta checkpoint cannot carry these"
            )
    if generation is None:
        generation = "llama2" if spec.base == LLAMA2_THETA and spec.scaling is None else "llama3"
    if generation == "llama2":
        if spec.base != LLAMA2_THETA or spec.scaling is not None:
            raise RopeCheckpointError(
                f"meta_generation='llama2': Meta's Llama 1/2 code hard-codes theta 10000 without scaling; "
                f"this model has base={spec.base:g}, scaling={spec.scaling.kind if spec.scaling else None}"
            )
        return {}  # Llama 1/2's ModelArgs refuses rope_theta
    out: dict = {"rope_theta": float(spec.base)}
    if spec.scaling is not None:
        out["use_scaled_rope"] = True
    return out


def meta_spec(params: dict, source: str = "params.json"):
    """The RoPE spec Meta's reference code computes from a params.json.  Keys that Llama 3's code
    ignores but Llama 4's reads (rope_scaling_factor, ...) are refused when they disagree with the
    hard-coded constants: the same file would mean two different models."""
    if params.get("use_scaled_rope"):
        for key, (_, meta) in _META_LLAMA3.items():
            if key in params and params[key] != meta:
                raise RopeCheckpointError(
                    f"{source}: {key}={params[key]!r} is ignored by Meta's Llama 3 code (which uses {meta:g}) "
                    "but read by others; ropekit cannot tell which model this is"
                )
    return _spec_of(params, source)


def _hf_rope_parameters(params: dict) -> dict:
    """transformers ``rope_parameters`` for a params.json (read by ropekit.dialects.meta_params)."""
    spec = meta_spec(params)
    rope: dict = {"rope_theta": float(spec.base), "rope_type": "default"}
    if spec.scaling is not None:  # the Meta reader knows llama3 only
        rope.update(rope_type="llama3", **{field: getattr(spec.scaling, field) for field, _ in _META_LLAMA3.values()})
    return rope


def hf_config_from_meta(params: dict, geometry: Geometry, shapes: dict, dtype) -> dict:
    """A transformers LlamaConfig dict for a Meta checkpoint (sizes read from the tensors), with
    RoPE keys both transformers generations read (4.x rope_theta/rope_scaling, 5.x rope_parameters)."""
    from ...dialects.generations import with_generation_keys

    rope = _hf_rope_parameters(params)
    return with_generation_keys(_hf_config_keys(params, geometry, shapes, dtype, rope), "both")


def _hf_config_keys(params: dict, geometry: Geometry, shapes: dict, dtype, rope: dict) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": params["dim"],
        "intermediate_size": shapes["layers.0.feed_forward.w1.weight"][0],
        "num_hidden_layers": params["n_layers"],
        "num_attention_heads": geometry.n_heads,
        "num_key_value_heads": geometry.n_kv_heads,
        "head_dim": geometry.head_dim,
        "vocab_size": shapes["tok_embeddings.weight"][0],
        "rms_norm_eps": params.get("norm_eps", 1e-5),
        "max_position_embeddings": params.get("max_seq_len", 131072 if params.get("use_scaled_rope") else 4096),
        "rope_parameters": rope,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "attention_bias": "layers.0.attention.wq.bias" in shapes,
        "dtype": str(dtype).removeprefix("torch."),
    }


def write_params(path: Path, params: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(params, f, indent=2)
        f.write("\n")
