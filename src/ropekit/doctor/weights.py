"""weights: the q/k projection matrices of a checkpoint, layer by layer, and its attention shape.

The layout detector and the checkpoint comparison read only these tensors.  Sources: a state dict
(transformers, Meta or GGUF names), a transformers model directory (``*.safetensors``, read with
the safetensors library), a GGUF file (read and dequantized with the ``gguf`` package; llama.cpp
stores q/k rows in the interleaved order).  The shape (heads, KV heads, head_dim, rotary_dim,
base, context) comes from the config, or from the GGUF metadata.

>>> import torch
>>> sd = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 4),
...       "model.layers.0.self_attn.k_proj.weight": torch.zeros(4, 4)}
>>> [(i, tuple(q.shape), tuple(k.shape)) for i, q, k in qk_layers(sd)]
[(0, (8, 4), (4, 4))]
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator

import torch

from ..conversion.formats.base import Geometry  # the one home of the attention shape
from ..dialects.reading import read_json_file
from ..errors import RopeCheckpointError, RopeConfigError, RopeError, require

__all__ = [
    "Geometry",
    "qk_layers",
    "geometry_of",
    "geometry_from_gguf_metadata",
    "is_gguf",
    "has_qk_weights",
    "gguf_metadata",
    "gguf_tensors",
    "QK_NAMES",
]

#: the layer index in a tensor name (transformers, Meta, GGUF, falcon's transformer.h, dbrx's blocks)
_LAYER = re.compile(r"(^|\.)(layers|blk|h|blocks)\.(\d+)\.")

#: (q name, k name) patterns of one layer, per naming scheme; ``{i}`` is the layer index
QK_NAMES = (
    ("model.layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.k_proj.weight"),  # transformers
    ("layers.{i}.attention.wq.weight", "layers.{i}.attention.wk.weight"),  # Meta
    ("blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight"),  # GGUF (llama.cpp)
)


def is_gguf(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).endswith(".gguf") and os.path.isfile(path)


def _gguf_reader(path: str):
    st = os.stat(path)
    return _open_gguf(os.path.realpath(path), st.st_mtime_ns, st.st_size)


@functools.cache
def _open_gguf(path: str, mtime_ns: int, size: int):
    """One reader per file version (opening parses every metadata field: seconds for a tokenizer)."""
    gguf = require("gguf", "gguf")
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as exc:  # a broken file: one line naming it
        raise RopeCheckpointError(
            f"{path}: not a readable GGUF file ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def gguf_metadata(path: str) -> dict:
    """The scalar metadata of a GGUF file (strings decoded), e.g. ``llama.rope.freq_base``."""
    reader = _gguf_reader(path)
    out = {}
    for key, field in reader.fields.items():
        if not field.data or len(field.data) != 1:
            continue
        part = field.parts[field.data[0]]
        try:
            out[key] = bytes(part).decode("utf-8") if part.dtype.kind == "u" and part.itemsize == 1 else part.item()
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def geometry_from_gguf_metadata(meta: dict) -> Geometry:
    """The attention shape a GGUF file's metadata states (``{arch}.attention.head_count`` ...)."""
    arch = meta.get("general.architecture", "llama")

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise RopeConfigError(f"GGUF metadata lacks {arch}.{key}")
        return value

    n_heads, hidden = int(get("attention.head_count")), int(get("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", hidden // n_heads))
    return Geometry(
        n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        rotary_dim=int(get("rope.dimension_count", head_dim)),
        family=str(arch),
        base=float(get("rope.freq_base", 10000.0)),
        context=int(get("context_length", 4096)),
    )


def _first_layer_type(config) -> str | None:
    """A config with a RoPE per layer type (Gemma 2/3): the first type's (the q/k rows are the same
    rows whichever RoPE rotates them; only the turning pairs' base differs)."""
    from ..dialects import layer_types_of

    try:
        types = layer_types_of(config)
    except RopeError:  # a dialect without layer types (Meta, LitGPT): one RoPE
        return None
    return types[0] if types else None


def geometry_of(checkpoint, config=None) -> Geometry:
    """The attention shape from ``config`` (anything ``ropekit.from_config`` reads), else from the
    checkpoint itself (a GGUF file's metadata, a model directory's config.json)."""
    from ..dialects import from_config
    from ..dialects.litgpt import looks_like_litgpt
    from ..dialects.reading import load
    from .fused_qkv import falcon_kv_heads

    if config is None:
        if is_gguf(checkpoint):
            return geometry_from_gguf_metadata(gguf_metadata(os.fspath(checkpoint)))
        if isinstance(checkpoint, (str, os.PathLike)) and os.path.isdir(checkpoint):
            config = checkpoint
        else:
            raise RopeConfigError("config=None: a state dict carries no attention shape; pass its config")
    spec = from_config(config, layer_type=_first_layer_type(config))
    data = load(config).data
    data = data.get("text_config", data) if isinstance(data.get("text_config"), dict) else data
    n_heads = next((data[k] for k in ("num_attention_heads", "n_heads", "n_head") if k in data), None)
    if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1:
        raise RopeConfigError(f"config: the number of attention heads is {n_heads!r}; it must be a positive integer")
    n_kv = next((data[k] for k in ("num_key_value_heads", "n_kv_heads", "n_query_groups") if data.get(k)), n_heads)
    if data.get("model_type") == "falcon":
        n_kv = falcon_kv_heads(data, n_heads)
    if not isinstance(n_kv, int) or isinstance(n_kv, bool) or n_kv < 1 or n_heads % n_kv:
        raise RopeConfigError(f"config: {n_kv!r} KV heads do not divide {n_heads} heads")
    context = spec.max_position_embeddings or data.get("max_position_embeddings") or data.get("block_size") or 4096
    family = "litgpt" if looks_like_litgpt(data) else str(data.get("model_type", "llama"))
    return Geometry(
        n_heads, n_kv, spec.head_dim, spec.rotary_dim, family=family, base=float(spec.base), context=int(context)
    )


def _match(names, i: int):
    for q_name, k_name in QK_NAMES:
        q, k = q_name.format(i=i), k_name.format(i=i)
        if q in names and k in names:
            return q, k
    return None


def _layer_count(names) -> int:
    found = {int(m.group(3)) for n in names if (m := _LAYER.search(n))}
    return max(found) + 1 if found else 0


def qk_layers(
    checkpoint, layers=None, geometry: Geometry | None = None
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(layer, w_q, w_k) for each layer (``layers``: an iterable of indices, default all).  A fused
    q/k/v projection is split by its family's row order (``fused_qkv``), which needs ``geometry``."""
    from .fused_qkv import fused_name, split_qk

    getter, names = _tensor_source(checkpoint)
    n = _layer_count(names)
    if n == 0:
        raise RopeCheckpointError(
            "no q/k projections found (looked for transformers' q_proj/k_proj, Meta's wq/wk, GGUF's attn_q/attn_k "
            "and the fused projections of phi3, gpt_neox, persimmon and falcon)"
        )
    family = geometry.family if geometry is not None else ""
    for i in range(n) if layers is None else layers:
        pair = _match(names, i)
        if pair is not None:
            yield i, getter(pair[0]), getter(pair[1])
            continue
        fused = fused_name(names, i, family)
        if fused is None:
            raise RopeCheckpointError(f"layer {i}: no q/k projection pair (the checkpoint has {n} layers)")
        if geometry is None:
            raise RopeCheckpointError(f"{fused[0]} is a fused q/k/v projection: splitting it needs the geometry")
        yield (i, *split_qk(getter(fused[0]), fused[1], geometry))


def _tensor_source(checkpoint):
    if isinstance(checkpoint, dict):
        return (lambda name: checkpoint[name]), set(checkpoint)
    if is_gguf(checkpoint):
        return _gguf_source(os.fspath(checkpoint))
    if isinstance(checkpoint, (str, os.PathLike)) and os.path.isdir(checkpoint):
        path = os.fspath(checkpoint)
        pth = _pth_source(path)
        return pth if pth is not None else _safetensors_source(path)
    raise RopeCheckpointError(
        f"checkpoint={checkpoint!r}: pass a state dict, a model directory (*.safetensors, Meta's consolidated.*.pth, "
        "LitGPT's lit_model.pth) or a .gguf file"
    )


def has_qk_weights(path) -> bool:
    """A GGUF file, or a directory with safetensors, Meta's consolidated.*.pth or LitGPT's lit_model.pth."""
    if is_gguf(path):
        return True
    if not (isinstance(path, (str, os.PathLike)) and os.path.isdir(path)):
        return False
    names = os.listdir(path)
    return any(n.endswith(".safetensors") or re.fullmatch(r"consolidated\.\d+\.pth", n) for n in names) or (
        "lit_model.pth" in names
    )


def _pth_source(path: str):
    """A Meta directory (params.json + consolidated.NN.pth) or a LitGPT one (lit_model.pth), read by
    the converter's readers (no unpickling with code execution); None for any other directory."""
    from pathlib import Path

    from ..conversion.formats.meta_dir import MetaCheckpoint, is_meta_dir
    from ..conversion.formats.pth_file import PthFile

    if is_meta_dir(Path(path)):
        ck = MetaCheckpoint(Path(path))
        return ck.tensor, set(ck.names())
    lit = os.path.join(path, "lit_model.pth")
    if os.path.isfile(lit) and os.path.isfile(os.path.join(path, "model_config.yaml")):
        pf = PthFile(lit)
        return pf.tensor, set(pf.names())
    return None


def _gguf_source(path: str):
    gguf = require("gguf", "gguf")
    reader = _gguf_reader(path)
    tensors = {t.name: t for t in reader.tensors}

    def get(name):
        t = tensors[name]
        values = gguf.dequantize(t.data, t.tensor_type)  # rows = output features (numpy order)
        shape = [int(d) for d in reversed(t.shape.tolist())]  # GGUF lists dims fastest first
        return torch.from_numpy(values.copy()).reshape(shape)

    return get, set(tensors)


def gguf_tensors(path, names) -> dict[str, torch.Tensor]:
    """The named tensors of a GGUF file, dequantized to float32 (rows = output features)."""
    get, have = _gguf_source(os.fspath(path))
    missing = [n for n in names if n not in have]
    if missing:
        raise RopeCheckpointError(f"{path}: no tensor {missing[0]!r}")
    return {n: get(n) for n in names}


def _safetensors_source(path: str):
    safetensors = require("safetensors", "hf")
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise RopeCheckpointError(f"{path}: no *.safetensors files")
    where = {}
    for f in files:
        full = os.path.realpath(os.path.join(path, f))
        if os.path.dirname(full) != os.path.realpath(path):
            raise RopeCheckpointError(f"{path}/{f} points outside the model directory")
        with safetensors.safe_open(full, framework="pt") as fh:
            where.update(dict.fromkeys(fh.keys(), full))

    def get(name):
        with safetensors.safe_open(where[name], framework="pt") as fh:
            return fh.get_tensor(name)

    return get, set(where)


def read_json(path: str) -> dict:
    """A JSON object from ``path`` (one RopeConfigError when it is not one)."""
    return read_json_file(path)  # the project's one JSON reader
