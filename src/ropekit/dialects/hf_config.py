"""transformers configs (v4 ``rope_theta`` + ``rope_scaling``, v5 ``rope_parameters``) -> RopeSpec.

What each family does was read from transformers 5.x's own modeling and configuration files
(``models/<family>/``); the table below records it.  The rules that apply to every family are
transformers' ``modeling_rope_utils`` rules:

* ``rope_scaling`` (v4) wins over ``rope_parameters`` (v5); ``rope_type`` wins over ``type``;
  ``rope_theta`` inside the dict wins over a top-level ``rope_theta``.
* ``head_dim = config.head_dim or hidden_size // num_attention_heads``;
  ``rotary_dim = int(head_dim * partial_rotary_factor)`` (truncation, as transformers does).
* yarn / longrope / llama3 take ``original_max_position_embeddings`` from the top level of the
  config when it is there (Phi-3), else from the scaling dict, else ``max_position_embeddings``;
  yarn and longrope ``factor`` defaults to ``max_position_embeddings / original``.
* dynamic NTK grows from ``max_position_embeddings`` (transformers ignores ``original_...``).
* ``attention_factor`` in the scaling dict becomes ``spec.attention_factor``.

DeepSeek-V2/V3 (MLA) rotate only a ``qk_rope_head_dim`` slice that sits at the *end* of each q
head (after the ``qk_nope_head_dim`` part) and in the shared ``k_pe``; their spec describes that
slice on its own (``head_dim == rotary_dim == qk_rope_head_dim``), as transformers' rotary module
does, so apply it to the rope slice, not to the whole head.

>>> from ropekit.dialects.hf_config import read
>>> from ropekit.dialects.reading import Source
>>> spec = read(Source({"model_type": "gpt_neox", "hidden_size": 2048, "num_attention_heads": 16,
...                     "rotary_pct": 0.25, "rotary_emb_base": 10000}, "dict"))
>>> spec.layout, spec.head_dim, spec.rotary_dim
('half', 128, 32)
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from ..errors import RopeConfigError, RopeConfigWarning, RopeSpecError
from ..spec import RopeSpec, normalize_layout
from .hf_families import FAMILIES, TEXT_OF, Family, family_of
from .hf_scaling import MROPE_KEYS, scaling_of, standardize, validate
from .reading import Source, flag, integer, number, spec_error
from .releases import NEWEST, release_text, rules_for, target_release

__all__ = ["read", "same_rotation", "knows", "Family", "FAMILIES", "family_of", "layer_types", "KNOWN_ROPE_TYPES"]


KNOWN_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional", "mrope", "su")
_LAYER_TYPE_NAMES = ("full_attention", "sliding_attention", "chunked_attention", "linear_attention")


def knows(config_dict: dict[str, Any]) -> bool:
    """Whether the family of this config (or of its text config) is in ``FAMILIES``."""
    return family_of(_text_config(config_dict)) in FAMILIES


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a (possibly multimodal) config that describes the language model."""
    text = cfg.get("text_config")
    model_type = family_of(cfg)
    if isinstance(text, dict) and ("num_attention_heads" not in cfg or model_type in TEXT_OF):
        merged = dict(text)
        inner = text.get("model_type")
        merged["model_type"] = inner if isinstance(inner, str) and inner else TEXT_OF.get(model_type, model_type)
        return merged
    if model_type in TEXT_OF:  # flat (v4) multimodal config: the text keys are at the top level
        cfg = dict(cfg)
        cfg["model_type"] = TEXT_OF[model_type]
    return cfg


def release_view(cfg: dict[str, Any], release: tuple[int, int, int]) -> dict[str, Any]:
    """The config as ``release`` reads it: before 5.0, only ``rope_theta``, ``rope_scaling`` and
    ``partial_rotary_factor`` at the top level (``rope_parameters`` and keys inside
    ``rope_scaling`` that 4.x never looks at are dropped)."""
    if rules_for(release).reads_rope_parameters:
        return cfg
    view = {k: v for k, v in cfg.items() if k != "rope_parameters"}
    if isinstance(view.get("rope_scaling"), dict):
        view["rope_scaling"] = {
            k: v for k, v in view["rope_scaling"].items() if k not in ("rope_theta", "partial_rotary_factor")
        }
    return view


def _rope_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    # transformers: `self.rope_parameters = rope_scaling or self.rope_parameters`
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if not isinstance(params, dict):
        key = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
        raise RopeConfigError(f"{key}={params!r} must be a JSON object (dict) or null")
    return params


def _nested_keys(cfg: dict[str, Any], params: dict[str, Any]) -> list[str]:
    declared = cfg.get("layer_types")
    if isinstance(declared, list) and not all(isinstance(t, str) for t in declared):
        raise RopeConfigError(f"layer_types={declared!r} must be a list of layer type names (strings)")
    names = set(declared) if isinstance(declared, list) else set(_LAYER_TYPE_NAMES)
    # a dict of RoPE parameters under a key of its own is a rope type of its own even when the
    # key is no layer type: DeepSeek-V4 keys its "main" and "compress" RoPEs apart from layer_types
    return [
        k
        for k, v in params.items()
        if (k in names and (v is None or isinstance(v, dict)))
        or (isinstance(v, dict) and ("rope_type" in v or "rope_theta" in v))
    ]


def layer_types(config_dict: dict[str, Any], release: tuple[int, int, int] | None = None) -> list[str]:
    """Layer types with their own RoPE (empty when every layer shares one)."""
    cfg = release_view(_text_config(config_dict), release or target_release())
    nested = _nested_keys(cfg, _rope_dict(cfg))
    if not nested and cfg.get("model_type") == "gemma3_text":
        return ["full_attention", "sliding_attention"]
    return nested


def _select_params(cfg: dict[str, Any], family: str | None, layer_type: str | None) -> tuple[dict[str, Any], str]:
    """The scaling dict that applies to ``layer_type`` and a label for messages."""
    params = _rope_dict(cfg)
    label = "rope_scaling" if cfg.get("rope_scaling") else "rope_parameters"
    nested = _nested_keys(cfg, params)
    if family == "gemma3_text" and not nested:
        # v4 Gemma 3: rope_scaling applies to the global (full attention) layers only; sliding
        # layers use plain RoPE with rope_local_base_freq (transformers' Gemma3TextConfig)
        nested = ["full_attention", "sliding_attention"]
        params = {"full_attention": params, "sliding_attention": {"rope_type": "default"}}
    if not nested:
        if layer_type is not None:
            raise RopeConfigError(
                f"layer_type={layer_type!r} was given but this config has one RoPE for every layer; drop layer_type"
            )
        return params, label
    if layer_type is None:
        raise RopeConfigError(
            f"this config has a different RoPE per layer type ({', '.join(nested)}); pass layer_type= one of them"
        )
    if layer_type not in nested:
        raise RopeConfigError(f"layer_type={layer_type!r} is not in this config; it has {', '.join(nested)}")
    chosen = params[layer_type]
    if chosen is None:
        raise RopeConfigError(f"{label}[{layer_type!r}] is null: layers of type {layer_type!r} use no RoPE")
    return dict(chosen), f"{label}[{layer_type!r}]"


def _head_dim(cfg: dict[str, Any], family: str | None, fam: Family | None) -> int:
    if family in ("deepseek_v2", "deepseek_v3"):
        # MLA: only the qk_rope_head_dim tail of each q/k head rotates; transformers sets
        # head_dim = qk_rope_head_dim and rotates that part on its own
        return integer(cfg, "qk_rope_head_dim", 64)
    if family == "chatglm" and cfg.get("kv_channels") is not None:
        return integer(cfg, "kv_channels")
    if family in ("gptj", "codegen"):
        return integer(cfg, "n_embd", cfg.get("hidden_size")) // integer(cfg, "n_head", cfg.get("num_attention_heads"))
    head_dim = cfg.get("head_dim", fam.head_dim if fam else None)
    if head_dim:
        return integer(cfg, "head_dim", head_dim)
    hidden = integer(cfg, "hidden_size")
    heads = integer(cfg, "num_attention_heads")
    if hidden % heads:
        raise RopeConfigError(
            f"hidden_size={hidden} is not divisible by num_attention_heads={heads} and head_dim is not given"
        )
    return hidden // heads


def _base(cfg, params, family, fam, layer_type, where) -> float:
    if params.get("rope_theta") is not None:
        return number(params, "rope_theta", where=where + ".")
    if family == "gpt_neox":
        return number(cfg, "rotary_emb_base", 10000.0)
    if family == "chatglm":
        return 10000.0 * number(cfg, "rope_ratio", 1.0)
    if family == "gemma3_text":
        if layer_type == "sliding_attention":
            return number(cfg, "rope_local_base_freq", 10000.0)
        return number(cfg, "rope_theta", 1e6)
    return number(cfg, "rope_theta", fam.theta if fam else 10000.0)


def _partial(cfg, params, family, fam, where, allow_zero=False) -> float:
    if params.get("partial_rotary_factor") is not None:
        value = number(params, "partial_rotary_factor", where=where + ".")
        key = where + ".partial_rotary_factor"
    elif family == "gpt_neox" and cfg.get("partial_rotary_factor") is None:
        value, key = number(cfg, "rotary_pct", 0.25), "rotary_pct"
    else:
        value, key = number(cfg, "partial_rotary_factor", fam.partial if fam else 1.0), "partial_rotary_factor"
    if not (0.0 <= value if allow_zero else 0.0 < value) or value > 1.0:
        # proportional RoPE may turn no pair at all (0); elsewhere 0 would leave nothing to rotate
        raise RopeConfigError(f"{key}={value!r} must be in {'[0' if allow_zero else '(0'}, 1]")
    return value


def _layout(cfg, family, fam, layout) -> str:
    if layout is not None:
        return normalize_layout(layout)
    if family == "deepseek_v3":
        return "interleaved" if flag(cfg, "rope_interleave", True) else "half"
    if fam is None:
        what = f"model_type={family!r}" if family else "a config without model_type or architectures"
        raise RopeConfigError(
            f"{what} is not a family ropekit knows, so its RoPE layout is unknown and will not be guessed; "
            f"pass layout='half' (NeoX/Llama rotate_half) or layout='interleaved' (GPT-J/Meta pairs), "
            f"e.g. from_config(cfg, layout='half') or `ropekit spec CONFIG --layout half`"
        )
    return fam.layout


def _ignored_keys(cfg: dict[str, Any], source: Source, fam: Family | None, rules) -> frozenset[str]:
    """RoPE keys the release's validation lets pass for this config: a multimodal family's mRoPE
    keys (a family outside the table may be one: its sections are read), and in 5.x those the
    config names in ``ignore_keys_at_rope_validation`` (a class attribute, or a config.json key)."""
    keys = set(MROPE_KEYS) if fam is None or fam.mrope is not None else set()
    if rules.reads_rope_parameters:
        declared = cfg.get("ignore_keys_at_rope_validation")
        if isinstance(declared, (list, tuple, set, frozenset)):
            keys.update(k for k in declared if isinstance(k, str))
        keys.update(source.ignore_keys)
    return frozenset(keys)


def _mrope_fields(params, fam: Family | None, n_pairs: int, rope_type: str, where: str) -> dict[str, Any]:
    """The RopeSpec's mRoPE fields: the family's own arrangement, or the config's sections (a
    family outside the table); a text-only family's module never reads sections."""
    if fam is not None and fam.mrope is None and rope_type != "mrope":
        return {}
    if fam is None or fam.mrope is None:
        if params.get("mrope_section") is None:
            return {}
        interleaved = flag(params, "mrope_interleaved", False, where=where + ".")
        return {"mrope_section": params["mrope_section"], "mrope_interleaved": interleaved}
    section = params.get("mrope_section", fam.mrope_section)
    if fam.mrope != "alternating":
        return {"mrope_section": section, "mrope_interleaved": fam.mrope == "interleaved"}
    if rope_type != "default":  # its rotary module raises for any other rope type
        raise RopeConfigError(f"{where}.rope_type={rope_type!r}: ERNIE-4.5-VL's RoPE takes only 'default'")
    return {"mrope_axes": alternating_axes(section, n_pairs, where)}


def alternating_axes(section: Any, n_pairs: int, where: str = "rope_parameters") -> tuple[int, ...]:
    """ERNIE-4.5-VL's axis of each pair: its ``mrope_section`` is ``[height, width, time]`` pairs;
    the first ``height + width`` pairs alternate height (axis 1) and width (axis 2), the rest follow
    time (axis 0), every pair at its own frequency (transformers pre-permutes ``inv_freq`` and
    regroups the tables so that this holds).

    >>> alternating_axes([2, 2, 1], 5)
    (1, 2, 1, 2, 0)
    """
    ok = isinstance(section, (list, tuple)) and len(section) == 3
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in section)
    if not ok:
        raise RopeConfigError(f"{where}.mrope_section={section!r} must be three integers [height, width, time]")
    height, width, time = section
    if height != width or time < 1 or height + width + time != n_pairs:
        # transformers' module stacks the height and width frequencies pair by pair, and slices
        # the time frequencies from the end: anything else fails there or leaves pairs unset
        raise RopeConfigError(
            f"{where}.mrope_section={list(section)} must be [h, h, t] with t >= 1 and 2h + t = rotary_dim / 2 = "
            f"{n_pairs} (ERNIE-4.5-VL alternates height and width pair by pair, then time)"
        )
    return (1, 2) * height + (0,) * time


def read(
    source: Source, layer_type: str | None = None, layout: str | None = None, release: tuple | None = None
) -> RopeSpec:
    """The RopeSpec of a transformers config as ``release`` (default: ``target_release()``) reads it."""
    release = release or target_release()
    spec = _read(source, layer_type, layout, release)
    if release < (5, 0, 0) and (source.data.get("rope_parameters") or _text_config(source.data).get("rope_parameters")):
        try:
            newest = _read(source, layer_type, layout, NEWEST)
        except RopeConfigError:
            newest = None
        if newest is not None and not same_rotation(newest, spec):
            warnings.warn(
                f"{source.origin}: transformers {release_text(release)} ignores rope_parameters "
                f"(read by 5.x as {newest.describe()}); it runs {spec.describe()}. Write the v4 keys "
                f"rope_theta / rope_scaling beside it (`ropekit spec CONFIG --to both -o FILE`)",
                RopeConfigWarning,
                stacklevel=3,
            )
    return spec


def same_rotation(a: RopeSpec, b: RopeSpec) -> bool:
    """Whether two specs rotate alike (a release's float32 rounding rule aside)."""

    def plain(spec):
        if getattr(spec.scaling, "scale_positions", False):
            return spec.replace(scaling=dataclasses.replace(spec.scaling, scale_positions=False))
        return spec

    return plain(a) == plain(b)


def _read(source: Source, layer_type, layout, release) -> RopeSpec:
    rules = rules_for(release)
    cfg = release_view(_text_config(source.data), release)
    family = family_of(cfg)
    fam = FAMILIES.get(family) if family else None
    params, where = _select_params(cfg, family, layer_type)
    layout = _layout(cfg, family, fam, layout)

    rope_type = params.get("rope_type") or params.get("type") or "default"
    if not isinstance(rope_type, str):
        raise RopeConfigError(f"{where}.rope_type={rope_type!r} must be a string")
    if rope_type == "su" or (family == "phi3" and rope_type == "yarn"):
        rope_type = "longrope"  # Phi-3's legacy names for LongRoPE (transformers' Phi3Config)

    head_dim = _head_dim(cfg, family, fam)
    if family in ("gptj", "codegen"):
        base = 10000.0  # transformers' create_sinusoidal_positions hard-codes it
        # rotary_dim null means "all of the head" (transformers would build a hidden_size-wide
        # table there, which only works with one head)
        rotary_dim = integer(cfg, "rotary_dim", head_dim)
        partial = rotary_dim / head_dim
    else:
        base = _base(cfg, params, family, fam, layer_type, where)
        partial = _partial(cfg, params, family, fam, where, allow_zero=rope_type == "proportional")
        rotary_dim = int(head_dim * partial)
    if rope_type == "proportional":
        rotary_dim = head_dim  # proportional pairs the whole head (see ropekit.Proportional)
    if rotary_dim % 2 or rotary_dim < 2 or rotary_dim > head_dim:
        raise RopeConfigError(
            f"head_dim={head_dim} with partial_rotary_factor={partial!r} gives rotary_dim={rotary_dim}, "
            f"which must be even, >= 2 and <= head_dim"
        )
    if rules.reads_rope_parameters:
        params = standardize(cfg, params, rope_type)
    ignore = _ignored_keys(cfg, source, fam, rules)
    validate(params, rules, where, rope_type, ignore=ignore, max_position_embeddings=cfg.get("max_position_embeddings"))
    try:
        scaling, attention_factor = scaling_of(cfg, params, rope_type, rotary_dim, partial, where, rules, family)
        mrope = _mrope_fields(params, fam, rotary_dim // 2, rope_type, where)
        max_key = {"chatglm": "seq_length", "gptj": "n_positions", "codegen": "n_positions"}.get(
            family, "max_position_embeddings"
        )
        if cfg.get(max_key) is None:
            max_key = "max_position_embeddings"
        max_pos = cfg.get(max_key)
        return RopeSpec(
            head_dim=head_dim,
            rotary_dim=rotary_dim,
            base=base,
            layout=layout,
            scaling=scaling,
            max_position_embeddings=None if max_pos is None else integer(cfg, max_key),
            attention_factor=attention_factor,
            **mrope,
            angle_sign=fam.angle_sign if fam is not None else 1,
        )
    except RopeConfigError:
        raise
    except RopeSpecError as exc:
        raise spec_error(source, exc) from None
