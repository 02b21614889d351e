"""Write a transformers config's RoPE keys for transformers 4.x, 5.x, or both.

transformers 4.x reads ``rope_theta`` / ``rope_scaling`` (and ``partial_rotary_factor``) at the
top level; 5.x reads ``rope_parameters`` (and a ``rope_scaling`` when one is present).  A config
with only one generation's keys runs a different RoPE under the other generation, silently.
``with_generation_keys(cfg, "both")`` writes both, from what the config means to 5.x, so that
every release from 4.37 on reads the same base and scaling (as far as that release can: see
``releases_that_differ``).

>>> cfg = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 2,
...        "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}}
>>> both = with_generation_keys(cfg, "both")
>>> both["rope_theta"], both["rope_scaling"], both["rope_parameters"]["rope_theta"]
(500000.0, {'type': 'linear', 'factor': 2.0}, 500000.0)
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from ..errors import RopeConfigError
from .hf_config import read, same_rotation
from .reading import Source
from .releases import NEWEST, release_text

__all__ = ["with_generation_keys", "releases_that_differ", "GENERATIONS", "MATRIX"]

GENERATIONS = ("v4", "v5", "both")
#: the releases a rewritten config is checked against
MATRIX = ((4, 37, 2), (4, 38, 1), (4, 45, 2), (4, 57, 6), NEWEST)
_V4_ONLY_TYPES = ("linear", "dynamic")  # 4.37 / 4.38 accept exactly {"type", "factor"} for these


def _meaning(cfg: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """The scaling dict 5.x uses (without rope_theta) and the base it states (None: the family default)."""
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if not isinstance(params, dict):
        raise RopeConfigError(f"rope_parameters={params!r} must be a JSON object (dict) or null")
    if any(isinstance(v, dict) or v is None for k, v in params.items() if k.endswith("_attention")):
        raise RopeConfigError(
            "this config has a different RoPE per layer type (nested rope_parameters); transformers 4.x "
            "has no keys for that, so it has no v4 form"
        )
    params = dict(params)
    base = params.pop("rope_theta", None)
    if base is None:
        base = cfg.get("rope_theta")
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    return {"rope_type": rope_type, **params}, base


def _v4_scaling(params: dict[str, Any]) -> dict[str, Any] | None:
    rope_type = params["rope_type"]
    rest = {k: v for k, v in params.items() if k not in ("rope_type", "partial_rotary_factor")}
    if rope_type == "default":
        return None
    if rope_type in _V4_ONLY_TYPES and set(rest) == {"factor"}:
        return {"type": rope_type, "factor": float(rest["factor"])}  # the form every 4.x release reads
    return {"rope_type": rope_type, **rest}


def with_generation_keys(config: dict[str, Any], to: str = "both") -> dict[str, Any]:
    """A copy of a transformers config dict with RoPE keys for ``to`` = "v4", "v5" or "both"."""
    if to not in GENERATIONS:
        raise RopeConfigError(f"to={to!r} must be one of {', '.join(GENERATIONS)}")
    cfg = copy.deepcopy(config)
    params, base = _meaning(cfg)
    for key in ("rope_scaling", "rope_parameters", "rope_theta"):
        cfg.pop(key, None)
    if to in ("v4", "both"):
        if base is not None:
            cfg["rope_theta"] = float(base)
        cfg["rope_scaling"] = _v4_scaling(params)
        if params.get("partial_rotary_factor") is not None:
            cfg["partial_rotary_factor"] = params["partial_rotary_factor"]
    if to in ("v5", "both"):
        cfg["rope_parameters"] = {**params, **({"rope_theta": float(base)} if base is not None else {})}
    return cfg


def releases_that_differ(config: dict[str, Any]) -> list[str]:
    """The matrix releases whose reading of ``config`` differs from 5.x's (each with why)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        newest = read(Source(config, "config"), release=NEWEST)
        out = []
        for release in MATRIX[:-1]:
            try:
                spec = read(Source(config, "config"), release=release)
            except RopeConfigError as exc:
                out.append(f"{release_text(release)}: refuses it ({exc})")
                continue
            if not same_rotation(spec, newest):
                out.append(f"{release_text(release)}: runs {spec.describe()}")
    return out
