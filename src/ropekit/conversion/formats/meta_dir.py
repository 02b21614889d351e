"""Meta Llama directories: ``params.json`` + ``consolidated.NN.pth`` (one per model-parallel rank).

Meta's reference code rotates q/k as complex numbers, i.e. in the interleaved layout, so a Meta
directory is interleaved by definition.  ``.pth`` files are never unpickled with code execution:
their layout is read by a restricted unpickler (``torch_zip``) or ``torch.load(weights_only=True)``.  Model-parallel shards are merged on read: column-
parallel weights (wq, wk, wv, w1, w3, output) along dim 0, row-parallel ones (wo, w2) along dim 1,
the embedding along whichever dim its shard shape says (Llama 2 split the model dim, Llama 3 the
vocabulary), norms replicated.  Writing produces a single ``consolidated.00.pth``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import RopeCheckpointError

if TYPE_CHECKING:  # annotations only: this module never imports torch at run time
    import torch
from .base import Checkpoint, Geometry, list_aux
from .raw import torch_dtype, torch_name
from .torch_zip import FixedLayoutWriter

__all__ = [
    "MetaCheckpoint",
    "PthFile",
    "PthWriter",
    "is_meta_dir",
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


def _geometry(params: dict, source: str) -> Geometry:
    for key in ("dim", "n_heads", "n_layers"):
        if not isinstance(params.get(key), int) or params[key] < 1:
            raise RopeCheckpointError(f"{source}: {key}={params.get(key)!r} must be a positive integer")
    n_heads = params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
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
        self.geometry = _geometry(self.config, str(self.path / "params.json"))
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
                same = _dtype_name(t) == _dtype_name(first) and t.dim() == first.dim()
                same = same and all(a == b for d, (a, b) in enumerate(zip(t.shape, first.shape)) if d != dim)
                if not same:
                    raise RopeCheckpointError(
                        f"tensor {name} is {torch_name(_dtype_name(t))}{list(t.shape)} in {f} but "
                        f"{torch_name(_dtype_name(first))}{list(first.shape)} in {files[0]}; model-parallel shards must agree"
                        + ("" if dim is None else f" outside dim {dim}, along which they are concatenated")
                    )
        # one logical checkpoint; it is written back as a single file
        self.shards = [("consolidated.00.pth", names)]
        self.shard_files = files
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
        return _dtype_name(t), tuple(shape)

    def _read(self, i: int, name: str) -> torch.Tensor:
        return self.files[i].tensor(name)

    def tensor(self, name):
        dim = self._concat_dim(name)
        if dim is None:
            return self._read(0, name)
        import torch

        return torch.cat([self._read(i, name) for i in range(len(self.parts))], dim=dim)

    def byte_range(self, name):
        return self.files[0].byte_range(name) if len(self.files) == 1 else None


class PthFile:
    """One ``torch.save`` file opened for streaming.

    Its layout (names, dtypes, shapes, byte offsets) comes from the file's pickle, read without
    torch and without running code (``formats/torch_zip.py``), or, for anything that reader does
    not know, from a weights-only load on the meta device.  No tensor data is read until it is
    needed, and then one tensor at a time, by byte range (a memory map would keep every page it
    touched resident until the end).  Tensors stored as strided views of a larger storage come
    from torch's own memory-mapped load.

    >>> import os, tempfile, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "sd.pt")
    >>> torch.save({"w": torch.arange(6.0).view(2, 3)}, p)
    >>> f = PthFile(p)
    >>> f.names(), f.info("w"), f.tensor("w")[1].tolist()
    (['w'], (torch.float32, (2, 3)), [3.0, 4.0, 5.0])
    """

    def __init__(self, path, what: str = "PyTorch checkpoint"):
        from .torch_zip import read_layout

        self.path = Path(path)
        self._mapped: dict | None = None
        # a plain state dict's layout is read without torch (formats/torch_zip.py); anything else
        # goes to torch.load, which also says what is wrong with it
        records = read_layout(self.path)
        if records is not None:
            self.layout: dict = records
            self.ranges = {n: (r.start, r.end) for n, r in records.items() if r.is_contiguous()}
            return
        import torch

        try:
            sd = torch.load(self.path, map_location="meta", weights_only=True)
        except Exception as exc:  # a pickle that is not plain tensors, or a truncated zip
            raise RopeCheckpointError(
                f"{self.path} is not a weights-only {what} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            ) from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise RopeCheckpointError(f"{self.path} does not hold a flat dict of tensors")
        self.layout = sd
        self.ranges = _byte_ranges(sd, self.path)

    def names(self) -> list[str]:
        return list(self.layout)

    def info(self, name: str):
        t = self.layout[name]
        return t.dtype, tuple(t.shape)

    def raw_info(self, name: str):
        t = self.layout[name]
        return _dtype_name(t), tuple(t.shape)

    def tensor(self, name: str) -> torch.Tensor:
        from .safetensors_io import read_range

        rng = self.ranges.get(name)
        if rng is not None:
            t = self.layout[name]
            return read_range(str(self.path), rng[0], rng[1], _dtype_name(t), t.shape)
        if self._mapped is None:  # a strided view of a larger storage: torch materializes it
            import torch

            self._mapped = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        return self._mapped[name]

    def byte_range(self, name: str):
        rng = self.ranges.get(name)
        return None if rng is None else (str(self.path), rng[0], rng[1])


def _dtype_name(t) -> str:
    """safetensors dtype name of a TensorRecord (no torch) or a meta tensor."""
    from .raw import dtype_name

    return getattr(t, "dtype_name", None) or dtype_name(t.dtype)


def _byte_ranges(layout: dict, path: Path) -> dict:
    """name -> (start, end) in the file for every contiguous tensor of a meta-device load."""
    out = {}
    for name, t in layout.items():
        base = getattr(t.untyped_storage(), "_checkpoint_offset", None)
        if base is None or not t.is_contiguous():
            continue
        start = base + t.storage_offset() * t.element_size()
        out[name] = (start, start + t.numel() * t.element_size())
    return out


def params_from_hf(cfg: dict, geometry: Geometry, intermediate_size: int) -> dict:
    """A Meta params.json for a transformers Llama config (Meta derives the FFN width from
    ``multiple_of`` and ``ffn_dim_multiplier``; we choose them so that it comes out exact)."""
    rope_keys = check_meta_expressible(cfg, geometry)
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


def check_meta_expressible(cfg: dict, geometry: Geometry) -> dict:
    """The params.json RoPE keys of a transformers config, or the error that says why a Meta
    params.json cannot describe it (checked before any tensor is written)."""
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
    return _meta_rope_keys(cfg)


#: Meta's apply_scaling constants, which a params.json only overrides with explicit keys
_META_LLAMA3 = {
    "rope_scaling_factor": ("factor", 8.0),
    "rope_low_freq_factor": ("low_freq_factor", 1.0),
    "rope_high_freq_factor": ("high_freq_factor", 4.0),
    "rope_original_max_position_embeddings": ("original_max_position_embeddings", 8192),
}


def _spec_of(cfg: dict, source: str):
    # the one reader of RoPE config keys is ropekit.dialects; here only its result is translated
    from ...dialects import from_config
    from ...errors import RopeSpecError

    try:
        return from_config(cfg)
    except RopeSpecError as exc:
        raise RopeCheckpointError(f"{source}: {exc}") from None


def _meta_rope_keys(cfg: dict) -> dict:
    """params.json RoPE keys for a transformers config: rope_theta, and use_scaled_rope (+ the
    optional keys ropekit.dialects.meta_params reads back) for llama3 scaling."""
    spec = _spec_of(cfg, "config.json")
    out: dict = {"rope_theta": float(spec.base)}
    if spec.scaling is None:
        return out
    if spec.scaling.kind != "llama3":
        raise RopeCheckpointError(f"config.json: rope_type={spec.scaling.kind!r} has no Meta params.json form")
    out["use_scaled_rope"] = True
    for key, (field, meta_default) in _META_LLAMA3.items():
        value = getattr(spec.scaling, field)
        if value != meta_default:
            out[key] = value
    return out


def _hf_rope_parameters(params: dict) -> dict:
    """transformers ``rope_parameters`` for a params.json (read by ropekit.dialects.meta_params)."""
    spec = _spec_of(params, "params.json")
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


class PthWriter(FixedLayoutWriter):
    """Writes a ``torch.save``-format file tensor by tensor, like ``SafetensorsWriter``.

    ``torch.save`` needs every tensor in memory at once.  Instead we save placeholders under
    ``torch.serialization.skip_data`` (the zip layout is written, the data space only reserved;
    ``torch.empty`` placeholders are never touched, so they cost no resident memory), ask
    ``torch.load(map_location="meta")`` where each storage landed, and fill the bytes in place.
    The zip CRC fields stay unset, as with ``torch.serialization.set_crc32_options(False)``;
    ``torch.load`` does not check them.

    The converter writes ``.pth`` files with ``torch_zip.PthZipWriter``, which needs no torch;
    this writer is the reference it is tested against (``convert.RAW_PTH = False``).
    """

    def __init__(self, path, entries):
        import torch

        # dtypes: torch.dtype or safetensors names (the converter plans with names)
        placeholders = {name: torch.empty(shape, dtype=torch_dtype(dtype)) for name, dtype, shape in entries}
        with torch.serialization.skip_data():
            torch.save(placeholders, path)
        del placeholders
        layout = torch.load(path, map_location="meta", weights_only=True)
        offsets = {
            name: t.untyped_storage()._checkpoint_offset + t.storage_offset() * t.element_size()
            for name, t in layout.items()
        }
        sizes = {name: t.numel() * t.element_size() for name, t in layout.items()}
        self._open(path, offsets, sizes, "r+b")
