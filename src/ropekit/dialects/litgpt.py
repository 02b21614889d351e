"""LitGPT ``Config`` (``model_config.yaml`` / dict) -> RopeSpec.

LitGPT's ``build_rope_cache`` and ``apply_rope`` define the rules:

* ``head_size`` (default ``n_embd // n_head``); ``rope_n_elem = int(rotary_percentage * head_size)``
  with ``rotary_percentage`` defaulting to 0.25 (its GPT-NeoX heritage); ``rope_base`` (10000).
* layout ``half`` (``apply_rope`` is rotate_half); ``rope_interleave: true`` (DeepSeek MLA
  checkpoints) rotates ``(2i, 2i+1)`` pairs -> ``interleaved``.
* ``rope_condense_ratio`` divides positions, i.e. linear scaling by that factor.
* ``rope_adjustments``: with ``low_freq_factor``/``high_freq_factor`` -> llama3; with
  ``beta_fast``/``beta_slow`` -> yarn (``original_max_seq_len`` is the original context); with only
  ``factor`` -> linear.  LitGPT's yarn attention factor differs from transformers' when no mscale is
  given (LitGPT: 1.0, transformers: ``0.1 ln(factor) + 1``), so it is written into the spec.
* LitGPT's yarn is not transformers' yarn: its ramp runs the other way.  LitGPT (0.5.13,
  ``build_rope_cache``) blends ``interpolated * (1 - ramp) + extrapolated * ramp`` with the ramp
  rising from 0 at the fastest pair, so pair 0 is divided by the factor and the slowest pairs keep
  their frequency; transformers keeps pair 0 and divides the slowest.  LitGPT also clamps the ramp's
  upper bound at ``rotary_dim / 2 - 1``.  The spec reproduces what LitGPT computes: one divisor per
  pair (``LongRope`` with equal short and long factors, see ``LITGPT_YARN_NOTE``), not a ``Yarn``
  that LitGPT would not run.
* ``rope_local_base_freq`` (Gemma 3): the base of sliding-window layers (``layer_type="sliding_attention"``).

>>> from ropekit.dialects.litgpt import read
>>> from ropekit.dialects.reading import Source
>>> spec = read(Source({"n_embd": 4096, "n_head": 32, "rotary_percentage": 1.0, "rope_base": 500000,
...                     "rope_adjustments": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
...                                          "original_max_seq_len": 8192}}, "dict"))
>>> spec.layout, spec.rotary_dim, spec.scaling.kind
('half', 128, 'llama3')
"""

from __future__ import annotations

import math

from ..errors import RopeConfigError, RopeSpecError
from ..spec import Linear, Llama3, LongRope, RopeSpec, Yarn, normalize_layout, yarn_mscale
from .reading import Source, flag, integer, number, spec_error

__all__ = ["read", "looks_like_litgpt", "litgpt_yarn_divisors", "LITGPT_YARN_NOTE"]

#: said wherever a LitGPT yarn config is read
LITGPT_YARN_NOTE = (
    "LitGPT computes yarn with the ramp mirrored against transformers (pair 0 divided by the factor, the "
    "slowest pairs unscaled): the spec holds LitGPT's per-pair divisors"
)


def looks_like_litgpt(cfg: dict) -> bool:
    return "n_embd" in cfg and "n_head" in cfg and "model_type" not in cfg


def litgpt_yarn_divisors(
    factor: float, beta_fast: float, beta_slow: float, original: int, rotary_dim: int, base: float, truncate: bool
) -> tuple[float, ...]:
    """What LitGPT divides each pair's frequency by under yarn (from its ``build_rope_cache`` rule:
    ramp 0 -> interpolated, ramp 1 -> kept).

    >>> d = litgpt_yarn_divisors(4.0, 32.0, 1.0, 4096, 128, 10000.0, True)
    >>> d[0], d[-1]
    (4.0, 1.0)
    """

    def dim_of(rotations: float) -> float:  # the pair index that turns ``rotations`` times in ``original``
        return rotary_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim // 2 - 1)
    if low == high:
        high += 0.001  # LitGPT's guard against a zero-width ramp
    out = []
    for i in range(rotary_dim // 2):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        out.append(1.0 / ((1.0 - ramp) / factor + ramp))
    return tuple(out)


def _adjustments(adj: dict, condense: float, rotary_dim: int, base: float):
    """(scaling, attention_factor) of ``rope_adjustments``."""
    w = "rope_adjustments."
    has_llama3 = any(k in adj for k in ("low_freq_factor", "high_freq_factor"))
    has_yarn = any(k in adj for k in ("beta_fast", "beta_slow"))
    if has_llama3 and has_yarn:
        raise RopeConfigError(
            f"rope_adjustments={adj!r} mixes llama3 keys (low/high_freq_factor) with yarn keys (beta_fast/slow)"
        )
    if has_llama3:
        return Llama3(
            factor=number(adj, "factor", where=w),
            low_freq_factor=number(adj, "low_freq_factor", where=w),
            high_freq_factor=number(adj, "high_freq_factor", where=w),
            original_max_position_embeddings=integer(adj, "original_max_seq_len", where=w),
        ), None
    if has_yarn:
        factor = number(adj, "factor", where=w)
        mscale = number(adj, "mscale", where=w) if adj.get("mscale") is not None else None
        mscale_all = number(adj, "mscale_all_dim", where=w) if adj.get("mscale_all_dim") is not None else None
        if mscale and mscale_all:
            attention = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all)
        elif mscale_all:
            attention = yarn_mscale(factor, mscale_all)
        elif mscale:
            attention = yarn_mscale(factor, mscale)
        else:
            attention = 1.0  # LitGPT applies no attention scaling without mscale (transformers would)
        # validated as transformers' Yarn would be (same parameters), then computed as LitGPT does
        yarn = Yarn(
            factor=factor,
            original_max_position_embeddings=integer(adj, "original_max_seq_len", where=w),
            beta_fast=number(adj, "beta_fast", where=w),
            beta_slow=number(adj, "beta_slow", where=w),
            mscale=mscale,
            mscale_all_dim=mscale_all,
            truncate=flag(adj, "truncate", True, where=w),
        )
        divisors = litgpt_yarn_divisors(
            yarn.factor,
            yarn.beta_fast,
            yarn.beta_slow,
            yarn.original_max_position_embeddings,
            rotary_dim,
            base,
            yarn.truncate,
        )
        return LongRope(
            short_factor=divisors,
            long_factor=divisors,
            original_max_position_embeddings=yarn.original_max_position_embeddings,
        ), attention
    if "factor" in adj:
        return Linear(factor=number(adj, "factor", where=w) * condense), None
    return None, None


def read(source: Source, layer_type: str | None = None, layout: str | None = None) -> RopeSpec:
    cfg = source.data
    n_embd, n_head = integer(cfg, "n_embd"), integer(cfg, "n_head")
    head_size = cfg.get("head_size")
    if head_size is None:
        if n_embd % n_head:
            raise RopeConfigError(f"n_embd={n_embd} is not divisible by n_head={n_head} and head_size is not given")
        head_size = n_embd // n_head
    else:
        head_size = integer(cfg, "head_size")
    fraction = number(cfg, "rotary_percentage", 0.25)
    if not 0.0 < fraction <= 1.0:
        raise RopeConfigError(f"rotary_percentage={fraction!r} must be in (0, 1]")
    rotary_dim = int(fraction * head_size)
    if rotary_dim % 2 or rotary_dim < 2:
        raise RopeConfigError(
            f"head_size={head_size} with rotary_percentage={fraction!r} gives rope_n_elem={rotary_dim}; "
            f"it must be even and >= 2"
        )
    base = number(cfg, "rope_base", 10000.0)
    condense = number(cfg, "rope_condense_ratio", 1.0)
    if condense < 1:
        raise RopeConfigError(f"rope_condense_ratio={condense!r} must be >= 1")
    if layer_type not in (None, "full_attention", "sliding_attention"):
        raise RopeConfigError(f"layer_type={layer_type!r} must be 'full_attention' or 'sliding_attention' for LitGPT")
    if layer_type == "sliding_attention" and cfg.get("rope_local_base_freq") is None:
        raise RopeConfigError("layer_type='sliding_attention' needs rope_local_base_freq, which this config lacks")
    adj = cfg.get("rope_adjustments")
    if adj is not None and not isinstance(adj, dict):
        raise RopeConfigError(f"rope_adjustments={adj!r} must be a mapping or null")
    try:
        if layer_type == "sliding_attention":
            # LitGPT builds the local (sliding-window) table with plain RoPE at rope_local_base_freq
            base = number(cfg, "rope_local_base_freq")
            scaling, attention = (Linear(factor=condense) if condense != 1 else None), None
        else:
            scaling, attention = _adjustments(adj or {}, condense, rotary_dim, base)
            if scaling is None and condense != 1:
                scaling = Linear(factor=condense)
            elif condense != 1 and not isinstance(scaling, Linear):
                raise RopeConfigError(
                    f"rope_condense_ratio={condense!r} together with {scaling.kind} rope_adjustments is not supported"
                )
        if layout is None:
            layout = "interleaved" if flag(cfg, "rope_interleave", False) else "half"
        block = cfg.get("block_size")
        return RopeSpec(
            head_dim=head_size,
            rotary_dim=rotary_dim,
            base=base,
            layout=normalize_layout(layout),
            scaling=scaling,
            max_position_embeddings=None if block is None else integer(cfg, "block_size"),
            attention_factor=attention,
        )
    except RopeConfigError:
        raise
    except RopeSpecError as exc:
        raise spec_error(source, exc) from None
