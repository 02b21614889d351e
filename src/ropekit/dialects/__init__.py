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
>>> print(spec.describe())
half r=128/128 base=500000 llama3(factor=8, low_freq_factor=1, high_freq_factor=4,
    original_max_position_embeddings=8192)
>>> rk.from_config({"model_type": "mystery", "hidden_size": 64, "num_attention_heads": 4}, layout="half").layout
'half'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import RopeConfigError, RopeSpecError
from ..spec import RopeSpec
from . import hf_config, litgpt, meta_params
from .reading import LAYOUT_KEY, Source, load
from .releases import installed_release, release_text, target_release

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


def layer_types_of(config, *, transformers_version: str | None = None) -> list[str]:
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
    return hf_config.layer_types(source.data, target_release(transformers_version))


def _read(config, source: Source, dialect: str, layer_type, layout, transformers_version) -> RopeSpec:
    if dialect != "hf":
        return _READERS[dialect](source, layer_type=layer_type, layout=layout)
    release = target_release(transformers_version)
    marker = source.data.get(LAYOUT_KEY)
    if marker is not None and not isinstance(marker, str):
        raise RopeConfigError(f"{LAYOUT_KEY}={marker!r} must be 'half' or 'interleaved'")
    family_config = None
    if layout is None and not hf_config.knows(source.data):
        family_config = _transformers_config(config, source)
    if family_config is None:
        return hf_config.read(source, layer_type=layer_type, layout=layout or marker, release=release)
    # a family outside ropekit's table: measure its own modeling code, never guess
    installed = installed_release()
    if installed != release:
        raise RopeConfigError(
            f"model_type={hf_config.family_of(source.data)!r} is measured from the installed transformers "
            f"({release_text(installed) if installed else 'none'}), not from transformers_version="
            f"{transformers_version!r}; pass layout= to read it by the shared rules"
        )
    from . import measured

    spec = measured.measure(family_config, layer_type).spec
    if marker is not None:  # the checkpoint was converted: its rows are in the marker's layout
        spec = spec.replace(layout=marker, source=f"{spec.source}; layout from {LAYOUT_KEY}")
    return spec


def _transformers_config(config: Any, source: Source):
    """The transformers config object of a config whose family transformers knows (else None)."""
    if hasattr(config, "to_dict") and isinstance(getattr(config, "model_type", None), str):
        return config
    model_type = hf_config.family_of(source.data)
    if not isinstance(model_type, str):
        return None
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    except ImportError:
        return None
    if model_type not in CONFIG_MAPPING:
        return None
    try:  # the family's own config class reads its own keys (defaults included)
        return CONFIG_MAPPING[model_type](**{k: v for k, v in source.data.items() if k != "model_type"})
    except Exception as exc:
        raise RopeConfigError(f"{source.origin}: transformers' {model_type} config refused it: {exc}"[:400]) from None


def from_config(
    config: Any,
    layer_type: str | None = None,
    *,
    layout: str | None = None,
    transformers_version: str | None = None,
    **overrides: Any,
) -> RopeSpec:
    """The normalized RopeSpec of a model config.

    config: a transformers ``PretrainedConfig``, a dict (config.json / params.json / LitGPT
      contents), or a path to such a file or to a model directory.
    layer_type: for configs whose layer types use different RoPE (Gemma 3, v5 nested
      ``rope_parameters``): which one, e.g. ``"sliding_attention"``.
    layout: ``"half"`` / ``"interleaved"``; overrides the family's layout (and the
      ``ropekit_layout`` marker a converted checkpoint carries).
    transformers_version: read the config as that transformers release does (e.g. ``"4.38.1"``);
      default: the installed release (see ``ropekit.dialects.releases``).
    overrides: RopeSpec fields to replace after reading (``base=``, ``scaling=``, ...).

    A transformers family outside ropekit's table is measured from its own modeling code when
    transformers is installed (``spec.source`` says so); without transformers it needs ``layout=``.
    Malformed configs raise ``RopeConfigError`` naming the key and its value.

    >>> import ropekit as rk
    >>> rk.from_config({"dim": 4096, "n_heads": 32, "n_layers": 32, "rope_theta": 500000.0}).layout
    'interleaved'
    >>> v5 = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
    ...       "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:  # 4.x never reads rope_parameters
    ...     print(rk.from_config(v5, transformers_version="4.38.1").base, caught[0].category.__name__)
    10000.0 RopeConfigWarning
    """
    source = load(config)
    dialect = dialect_of(source)
    try:
        spec = _read(config, source, dialect, layer_type, layout, transformers_version)
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
