"""The scaling part of a transformers config, as one release reads and validates it.

``scaling_of`` turns a scaling dict (``rope_scaling`` / ``rope_parameters``) into a ropekit
Scaling, with the release's own defaults (``releases.Rules``), after ``validate`` has checked it
as strictly as that release does:

* required keys missing -> ``RopeConfigError`` (transformers raises ``KeyError``/``ValueError``):
  linear/dynamic need ``factor``; yarn ``factor`` and (5.x) ``original_max_position_embeddings``;
  longrope ``short_factor``, ``long_factor`` and (5.x) ``original_max_position_embeddings``; llama3
  ``factor``, ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``
  (every release).
  When reading a whole config, ``standardize`` first fills ``original_max_position_embeddings``
  from the top level (or ``max_position_embeddings``), as transformers 5.x does on load.
* keys of another rope type (``short_factor`` on yarn) -> a ``RopeConfigWarning`` naming them,
  where transformers logs "Unrecognized keys"; keys the family keeps there on purpose (``ignore``:
  mRoPE sections, 5.x ``ignore_keys_at_rope_validation``) pass, as transformers lets them.
* yarn whose ``factor`` differs from ``max_position_embeddings / original_max_position_embeddings``
  (4.56 and later) -> a ``RopeConfigWarning``, where transformers logs "implicit factor"; llama3
  whose ``original_max_position_embeddings`` is not below ``max_position_embeddings`` -> one too.
* 4.37 / 4.38: ``rope_scaling`` must be exactly ``{"type", "factor"}``, type linear or dynamic,
  factor a float > 1 (those releases raise ``ValueError`` otherwise).

>>> from ropekit.dialects.hf_scaling import validate
>>> from ropekit.dialects.releases import rules_for
>>> validate({"rope_type": "yarn", "original_max_position_embeddings": 4096}, rules_for((5, 0, 0)))
Traceback (most recent call last):
ropekit.errors.RopeConfigError: rope_parameters.factor is missing from the config
    (rope_type='yarn' requires factor, original_max_position_embeddings; transformers raises here too)
"""

from __future__ import annotations

import warnings
from typing import Any

from ..errors import RopeConfigError, RopeConfigWarning
from ..spec import Dynamic, Linear, Llama3, LongRope, Proportional, Yarn
from .reading import flag, integer, number, numbers
from .releases import Rules

__all__ = ["scaling_of", "validate", "standardize", "REQUIRED", "OPTIONAL", "MROPE_KEYS"]

_ORIGINAL = "original_max_position_embeddings"
#: keys each rope type needs (5.x), and the ones it may have besides rope_type / rope_theta /
#: partial_rotary_factor (transformers' validate_rope sets)
REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", _ORIGINAL),
    "longrope": ("short_factor", "long_factor", _ORIGINAL),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", _ORIGINAL),
    "proportional": (),
}
OPTIONAL = {
    "yarn": ("attention_factor", "beta_fast", "beta_slow"),
    "longrope": ("attention_factor", "factor"),
    "proportional": ("factor",),
}
_ALWAYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor")
#: the mRoPE keys multimodal families keep in their scaling dict (their configs tell transformers'
#: validation to ignore them; a text-only family's validation calls them unrecognized)
MROPE_KEYS = ("mrope_section", "mrope_interleaved", "mrope_sections")


def standardize(cfg: dict[str, Any], params: dict[str, Any], rope_type: str) -> dict[str, Any]:
    """What transformers 5.x does to a loaded scaling dict before validating it: the pretraining
    length goes into the dict (top level first: Phi-3 keeps it there)."""
    if rope_type not in ("llama3", "yarn", "longrope"):
        return params
    params = dict(params)
    if cfg.get(_ORIGINAL) is not None:
        params[_ORIGINAL] = cfg[_ORIGINAL]
    elif params.get(_ORIGINAL) is None and cfg.get("max_position_embeddings") is not None:
        params[_ORIGINAL] = cfg["max_position_embeddings"]
    return params


def validate(
    params: dict[str, Any],
    rules: Rules,
    where: str = "rope_parameters",
    rope_type: str | None = None,
    *,
    ignore=(),
    max_position_embeddings: Any = None,
):
    """Raise for what the release rejects; warn for keys it ignores and for a yarn factor that
    contradicts the lengths (see the module docstring).  ``ignore``: keys the family keeps there."""
    rope_type = rope_type or params.get("rope_type") or params.get("type") or "default"
    if rope_type not in rules.scaling_types:
        raise RopeConfigError(
            f"{where}.rope_type={rope_type!r} is not a RoPE scaling this transformers release knows; "
            f"it knows {', '.join(rules.scaling_types)}"
        )
    if rules.strict_v437_scaling and params:
        if set(params) != {"type", "factor"}:
            raise RopeConfigError(
                f"{where}={params!r}: this transformers release needs exactly the keys 'type' and 'factor'"
            )
        factor = params["factor"]
        if not isinstance(factor, float) or not factor > 1.0:
            raise RopeConfigError(f"{where}.factor={factor!r} must be a float > 1 for this transformers release")
        return
    required = REQUIRED.get(rope_type, ())
    if not rules.reads_rope_parameters and rope_type != "llama3":  # 4.x: yarn / longrope need no length
        required = tuple(k for k in required if k != _ORIGINAL)
    missing = [k for k in required if params.get(k) is None and k not in params]
    if missing:
        raise RopeConfigError(
            f"{where}.{missing[0]} is missing from the config (rope_type={rope_type!r} requires "
            f"{', '.join(required)}; transformers raises here too)"
        )
    known = set(required) | set(OPTIONAL.get(rope_type, ())) | set(_ALWAYS) | set(ignore)
    if rope_type in ("longrope", "llama3"):
        known.add(_ORIGINAL)
    if rope_type == "yarn":
        known.update(_yarn_keys(rules))
    if rope_type == "mrope":
        known.update(MROPE_KEYS)
    unused = sorted(k for k in params if k not in known)
    if unused:
        warnings.warn(
            f"{where}: key(s) {', '.join(unused)} do not belong to rope_type={rope_type!r}; transformers ignores "
            f"them (and logs 'Unrecognized keys'), so does ropekit",
            RopeConfigWarning,
            stacklevel=4,
        )
    if rope_type == "yarn" and rules.yarn_warns_implicit_factor:
        _check_implicit_factor(params, rules, where, max_position_embeddings)
    original = params.get(_ORIGINAL)
    if rope_type == "llama3" and _is_number(original) and _is_number(max_position_embeddings):
        if original >= max_position_embeddings:  # every release with llama3 logs this
            warnings.warn(
                f"{where}.original_max_position_embeddings={original!r} is not less than max_position_embeddings="
                f"{max_position_embeddings!r}: llama3 scaling assumes a context extended beyond the pretraining "
                f"length (transformers logs a warning and runs it, so does ropekit)",
                RopeConfigWarning,
                stacklevel=4,
            )


def _yarn_keys(rules: Rules) -> tuple[str, ...]:
    """The yarn keys a release reads besides factor, attention_factor and the betas."""
    keys = (_ORIGINAL, "mscale", "mscale_all_dim") if rules.yarn_reads_mscale else ()
    return keys + ("truncate",) if rules.yarn_reads_truncate else keys


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_implicit_factor(params: dict[str, Any], rules: Rules, where: str, max_position_embeddings: Any):
    """Warn where transformers does: yarn's explicit factor is used, though the lengths say otherwise."""
    factor, original = params.get("factor"), params.get(_ORIGINAL)
    if not (_is_number(factor) and _is_number(original) and _is_number(max_position_embeddings) and original):
        return  # nothing to compare (a bad value is refused when the scaling is read)
    implicit = max_position_embeddings / original
    # 5.x fills a missing original length with max_position_embeddings: a ratio of 1 says nothing
    if implicit != factor and not (rules.reads_rope_parameters and implicit == 1):
        warnings.warn(
            f"{where}.factor={factor!r} differs from the implicit factor max_position_embeddings / "
            f"original_max_position_embeddings = {max_position_embeddings} / {original} = {implicit!r}; "
            f"transformers uses the explicit factor (and logs a warning), so does ropekit: correct "
            f"original_max_position_embeddings if the model was trained otherwise",
            RopeConfigWarning,
            stacklevel=5,
        )


def _original(cfg, params, where, rules: Rules, rope_type: str) -> int:
    """The pretraining length each release uses for yarn / longrope / llama3."""
    top, inner = cfg.get(_ORIGINAL), params.get(_ORIGINAL)
    if rope_type == "yarn" and rules.yarn_range_from_max_position:
        return integer(cfg, "max_position_embeddings")  # 4.4x yarn: the correction range uses it
    if top is not None and (rules.reads_rope_parameters or rope_type == "longrope"):
        return integer(cfg, _ORIGINAL)  # Phi-3 keeps the pretraining length at the top level
    if inner is not None and (rules.reads_rope_parameters or rope_type != "longrope"):
        return integer(params, _ORIGINAL, where=where + ".")  # 4.x longrope never reads this one
    return integer(cfg, "max_position_embeddings")


def _longrope(cfg, params, rotary_dim, where, rules, family):
    w = where + "."
    original = _original(cfg, params, where, rules, "longrope")
    short, long = numbers(params, "short_factor", where=w), numbers(params, "long_factor", where=w)
    for key, values in (("short_factor", short), ("long_factor", long)):
        if len(values) != rotary_dim // 2:
            raise RopeConfigError(
                f"{w}{key} has {len(values)} entries; rotary_dim={rotary_dim} needs {rotary_dim // 2} "
                f"(one per rotating pair)"
            )
    if cfg.get(_ORIGINAL) is not None and not rules.reads_rope_parameters:
        factor = integer(cfg, "max_position_embeddings") / original  # 4.x: the ratio wins over the dict
    elif params.get("factor") is not None:
        factor = number(params, "factor", where=w)
    elif not rules.reads_rope_parameters:  # 4.x multiplies by the missing factor and crashes
        raise RopeConfigError(
            f"{w}factor is missing and there is no top-level original_max_position_embeddings: "
            f"transformers 4.x cannot compute this longrope (it fails on factor=None)"
        )
    else:
        factor = integer(cfg, "max_position_embeddings") / original
    if rules.longrope_fixed_at_init and family != "phi3":
        # before 4.51 llama-style longrope picks its factors once, at init: long when the context is
        # extended (factor > 1), for every sequence length (Phi-3 has its own per-length module)
        short = long if factor > 1.0 else short
        long = short if factor <= 1.0 else long
    return LongRope(
        short_factor=tuple(short), long_factor=tuple(long), original_max_position_embeddings=original, factor=factor
    )


def scaling_of(cfg, params, rope_type, rotary_dim, partial, where, rules: Rules, family=None):
    """The Scaling of a validated scaling dict and the attention factor it sets explicitly."""
    w = where + "."
    attention_factor = None
    if params.get("attention_factor") is not None and rope_type in ("yarn", "longrope"):
        attention_factor = number(params, "attention_factor", where=w)
    if rope_type in ("default", "mrope"):
        return None, None
    if rope_type == "linear":
        return Linear(factor=number(params, "factor", where=w), scale_positions=rules.linear_divides_positions), None
    if rope_type == "dynamic":
        # transformers grows the base from max_position_embeddings (original_... is ignored)
        return Dynamic(
            factor=number(params, "factor", where=w),
            original_max_position_embeddings=integer(cfg, "max_position_embeddings"),
        ), None
    if rope_type == "yarn":
        # transformers: `beta_fast or 32`, so 0/null mean the default
        # before 4.51 the mscale keys are not read (nor are they known keys: validate warned)
        reads = rules.yarn_reads_mscale
        mscale = number(params, "mscale", where=w) if reads and params.get("mscale") is not None else None
        mscale_all = None
        if reads and params.get("mscale_all_dim") is not None:
            mscale_all = number(params, "mscale_all_dim", where=w)
        original = _original(cfg, params, where, rules, "yarn")
        if rules.yarn_factor_from_lengths and params.get(_ORIGINAL) is not None:
            # 4.51-4.55: the dict's original replaces its factor (DeepSeek-V3 style ratio)
            factor = integer(cfg, "max_position_embeddings") / original
        elif params.get("factor") is None and rules.reads_rope_parameters:
            # 5.x: a factor key set to null means max_position_embeddings / original (an absent
            # key is refused by validate, as transformers raises KeyError)
            factor = integer(cfg, "max_position_embeddings") / original
        else:
            factor = number(params, "factor", where=w)
        return Yarn(
            factor=factor,
            original_max_position_embeddings=original,
            beta_fast=number(params, "beta_fast", 32.0, where=w) or 32.0,
            beta_slow=number(params, "beta_slow", 1.0, where=w) or 1.0,
            mscale=mscale,
            mscale_all_dim=mscale_all,
            truncate=flag(params, "truncate", True, where=w) if rules.yarn_reads_truncate else True,
        ), attention_factor
    if rope_type == "longrope":
        return _longrope(cfg, params, rotary_dim, where, rules, family), attention_factor
    if rope_type == "llama3":
        return Llama3(
            factor=number(params, "factor", where=w),
            low_freq_factor=number(params, "low_freq_factor", where=w),
            high_freq_factor=number(params, "high_freq_factor", where=w),
            original_max_position_embeddings=_original(cfg, params, where, rules, "llama3"),
        ), None
    if rope_type == "proportional":
        return Proportional(partial_rotary_factor=partial, factor=number(params, "factor", 1.0, where=w)), None
    raise RopeConfigError(f"{w}rope_type={rope_type!r} is not a RoPE scaling ropekit knows")
