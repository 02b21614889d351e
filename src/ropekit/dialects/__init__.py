"""Config dialects -> RopeSpec.

One reader per family of config files:

* ``hf``     transformers ``config.json`` / PretrainedConfig, v4 and v5, with family keys
             (GPT-NeoX, GPT-J/CodeGen, Phi, GLM, Cohere, Gemma 3, DeepSeek, Qwen-VL, Phi-3 ...)
* ``meta``   Meta ``params.json`` (interleaved, ``use_scaled_rope`` -> llama3)
* ``litgpt`` LitGPT ``model_config.yaml`` / Config dict

``from_config`` picks the reader from the keys (``model_type``/``architectures`` -> hf,
``dim`` + ``n_heads`` -> meta, ``n_embd`` + ``n_head`` -> litgpt).  The layout always comes from
the family; for a family ropekit does not know, ``layout=`` must say it.

>>> import ropekit as rk
>>> spec = rk.from_config({"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
...                        "max_position_embeddings": 131072, "rope_theta": 500000.0,
...                        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
...                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})
>>> spec.describe()
'half r=128/128 base=500000 llama3(factor=8, low_freq_factor=1, high_freq_factor=4, original_max_position_embeddings=8192)'
>>> rk.from_config({"model_type": "mystery", "hidden_size": 64, "num_attention_heads": 4}, layout="half").layout
'half'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import RopeConfigError, RopeSpecError
from ..spec import RopeSpec
from . import hf_config, litgpt, meta_params
from .reading import Source, load

__all__ = ["from_config", "dialect_of", "layer_types_of", "load"]

_READERS = {"hf": hf_config.read, "meta": meta_params.read, "litgpt": litgpt.read}


def dialect_of(source: Source) -> str:
    """``"hf"``, ``"meta"`` or ``"litgpt"`` for a loaded config."""
    cfg = source.data
    if source.filename == "params.json" or meta_params.looks_like_meta(cfg):
        return "meta"
    if (source.filename or "").endswith((".yaml", ".yml")) or litgpt.looks_like_litgpt(cfg):
        return "litgpt"
    return "hf"


def layer_types_of(config) -> list[str]:
    """Layer types that have their own RoPE in ``config`` (empty when all layers share one).

    >>> layer_types_of({"model_type": "gemma3_text", "head_dim": 256, "rope_theta": 1e6,
    ...                 "rope_local_base_freq": 1e4})
    ['full_attention', 'sliding_attention']
    """
    source = load(config)
    if dialect_of(source) != "hf":
        if dialect_of(source) == "litgpt" and source.data.get("rope_local_base_freq") is not None:
            return ["full_attention", "sliding_attention"]
        return []
    return hf_config.layer_types(source.data)


def from_config(config: Any, layer_type: str | None = None, *, layout: str | None = None, **overrides: Any) -> RopeSpec:
    """The normalized RopeSpec of a model config.

    config: a transformers ``PretrainedConfig``, a dict (config.json / params.json / LitGPT
      contents), or a path to such a file or to a model directory.
    layer_type: for configs whose layer types use different RoPE (Gemma 3, v5 nested
      ``rope_parameters``): which one, e.g. ``"sliding_attention"``.
    layout: ``"half"`` / ``"interleaved"``; required only for families ropekit does not know,
      otherwise it overrides the family's layout.
    overrides: RopeSpec fields to replace after reading (``base=``, ``scaling=``, ...).

    Malformed configs raise ``RopeConfigError`` naming the key and its value.

    >>> import ropekit as rk
    >>> rk.from_config({"dim": 4096, "n_heads": 32, "n_layers": 32, "rope_theta": 500000.0}).layout
    'interleaved'
    """
    source = load(config)
    try:
        spec = _READERS[dialect_of(source)](source, layer_type=layer_type, layout=layout)
    except RopeConfigError:
        raise
    except RopeSpecError as exc:  # e.g. layout='sideways': still a problem of what the caller passed
        raise RopeConfigError(str(exc)) from None
    if overrides:
        names = {f.name for f in dataclasses.fields(RopeSpec)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise RopeConfigError(f"unknown override(s) {unknown}; RopeSpec fields are {sorted(names)}")
        try:
            spec = spec.replace(**overrides)
        except RopeSpecError as exc:
            raise RopeConfigError(f"override {overrides!r}: {exc}") from None
    return spec
