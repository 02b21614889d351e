"""Inverse frequencies and the attention factor of a RopeSpec, for every scaling type.

Two precisions:

* ``"exact"`` (default): every quantity in float64.  float64 inverse frequencies carry a relative
  error of ~1e-16, so even at position 2**24 the angle is off by < 2e-9 rad, far below half an
  fp32 ulp of cos/sin.  This is the truth ropekit measures everything against.
* ``"hf"``: transformers' own float32 arithmetic, operation for operation (the same
  ``base ** (arange / dim)`` in float32, the same Python-float scalars, the same order), so that a
  model reproduces transformers' logits bit for bit.  It is *reproduction*, not truth: float32
  frequencies are off by up to ~1e-7 relative, which is ~1 rad of angle error by position 1e7.

Sequence-length rules (the only state transformers keeps) are made explicit by ``seq_len``:

* dynamic: frequencies for ``max(seq_len, original_max_position_embeddings)``; transformers
  recomputes when a longer sequence arrives, so its table equals ours for a fresh module or a
  growing sequence.
* longrope: ``long_factor`` when ``seq_len > original_max_position_embeddings``, else
  ``short_factor``.
"""

from __future__ import annotations

import math

import torch

from .errors import RopeSpecError, short_repr
from .mrope import pairs_axes, rank_in_axis
from .spec import MAX_INT, Dynamic, Linear, Llama3, LongRope, Proportional, RopeSpec, Yarn, yarn_mscale

__all__ = ["inv_freq", "attention_factor", "PRECISIONS", "check_precision", "yarn_bounds"]

PRECISIONS = ("exact", "hf")


def check_precision(precision: str) -> str:
    """``precision`` itself when it is one of ``PRECISIONS``; a RopeSpecError otherwise (a
    precision mode is part of what the frequencies are)."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise RopeSpecError(f"precision={short_repr(precision)} must be one of {PRECISIONS}")
    return precision


def _check_seq_len(seq_len) -> int | None:
    if seq_len is None:
        return None
    if isinstance(seq_len, torch.Tensor):
        if seq_len.numel() == 0 or seq_len.is_floating_point() or seq_len.is_complex() or seq_len.is_meta:
            raise RopeSpecError(f"seq_len={short_repr(seq_len)} must be a non-negative integer or None")
        seq_len = int(seq_len.max().item())
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 0 <= seq_len <= MAX_INT:
        raise RopeSpecError(f"seq_len={short_repr(seq_len)} must be an integer in [0, 2**53] or None")
    return seq_len


# ---------------------------------------------------------------------------------------------
# attention factor (a Python float: transformers multiplies cos/sin by a Python float too)
# ---------------------------------------------------------------------------------------------


def attention_factor(spec: RopeSpec) -> float:
    """The factor cos and sin are multiplied by: ``spec.attention_factor`` when set, otherwise
    what the scaling implies (yarn: ``0.1 ln(factor) + 1`` or DeepSeek's mscale ratio; longrope:
    ``sqrt(1 + ln(factor) / ln(original))``; 1 for the others)."""
    if spec.attention_factor is not None:
        return spec.attention_factor
    s = spec.scaling
    if isinstance(s, Yarn):
        # transformers tests truthiness: a 0 mscale counts as absent, and so it does here.
        if s.mscale and s.mscale_all_dim:
            return float(yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim))
        return yarn_mscale(s.factor)
    if isinstance(s, LongRope):
        if s.factor <= 1.0:
            return 1.0
        if s.original_max_position_embeddings < 2:  # ln(1) = 0 below
            raise RopeSpecError(
                f"scaling.original_max_position_embeddings={s.original_max_position_embeddings} must be >= 2 for "
                f"longrope with factor={s.factor!r}: "
                "its attention factor divides by ln(original_max_position_embeddings)"
            )
        return math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_position_embeddings))
    return 1.0


# ---------------------------------------------------------------------------------------------
# yarn ramp bounds (Python floats in both precisions, as in transformers)
# ---------------------------------------------------------------------------------------------


def yarn_bounds(s: Yarn, dim: int, base: float) -> tuple[float, float]:
    """The (low, high) pair indices of YaRN's ramp: below low frequencies are kept, above high
    they are interpolated (divided by the factor)."""

    def correction_dim(rotations: float) -> float:
        # the dimension whose wavelength fits `rotations` times into the original context
        return (dim * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid 0/0 in the ramp, exactly as transformers does
    return low, high


def _dynamic_base(s: Dynamic, dim: int, base: float, seq_len: int | None) -> float:
    seq_len = max(seq_len or 0, s.original_max_position_embeddings)
    growth = (s.factor * seq_len / s.original_max_position_embeddings) - (s.factor - 1)
    grown = base * growth ** (dim / (dim - 2))
    if not math.isfinite(grown):
        raise OverflowError(f"the dynamic base for seq_len={seq_len} is {grown}")  # inv_freq names the spec
    return grown


# ---------------------------------------------------------------------------------------------
# exact: float64 throughout
# ---------------------------------------------------------------------------------------------


def _exact(spec: RopeSpec, seq_len: int | None) -> torch.Tensor:
    f64 = torch.float64
    r, s, base = spec.rotary_dim, spec.scaling, spec.base
    two_i = torch.arange(0, r, 2, dtype=f64)

    if isinstance(s, Proportional):
        # pairs span the whole head; exponents over head_dim; only the first n_turning pairs turn
        n_turning = int(s.partial_rotary_factor * spec.head_dim // 2)
        inv = torch.zeros(r // 2, dtype=f64)
        inv[:n_turning] = torch.pow(base, -two_i[:n_turning] / spec.head_dim)
        return inv / s.factor
    if isinstance(s, Dynamic):
        return torch.pow(_dynamic_base(s, r, base, seq_len), -two_i / r)

    inv = torch.pow(base, -two_i / r)
    if s is None:
        return inv
    if isinstance(s, Linear):
        return inv / s.factor
    if isinstance(s, LongRope):
        long = seq_len is not None and seq_len > s.original_max_position_embeddings
        ext = torch.tensor(s.long_factor if long else s.short_factor, dtype=f64)
        return inv / ext
    if isinstance(s, Yarn):
        low, high = yarn_bounds(s, r, base)
        ramp = ((torch.arange(r // 2, dtype=f64) - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate (divide by factor)
        return (inv / s.factor) * (1 - keep) + inv * keep
    if isinstance(s, Llama3):
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise RopeSpecError(f"scaling={s!r} is not supported")  # pragma: no cover - spec validates kinds


# ---------------------------------------------------------------------------------------------
# hf: transformers' float32 arithmetic, same operations in the same order
# ---------------------------------------------------------------------------------------------


def _hf(spec: RopeSpec, seq_len: int | None) -> torch.Tensor:
    f32 = torch.float32
    dim, s, base = spec.rotary_dim, spec.scaling, spec.base
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=f32) / dim

    if isinstance(s, Proportional):
        n_turning = int(s.partial_rotary_factor * spec.head_dim // 2)
        turning = 1.0 / (base ** (torch.arange(0, 2 * n_turning, 2, dtype=torch.int64).to(dtype=f32) / spec.head_dim))
        inv = torch.cat((turning, torch.zeros(dim // 2 - n_turning, dtype=f32)))
        inv /= s.factor
        return inv
    if isinstance(s, Dynamic):
        if seq_len is None or seq_len <= s.original_max_position_embeddings:
            # transformers' init path: Python-float base (growth term is exactly 1)
            return 1.0 / (_dynamic_base(s, dim, base, seq_len) ** exponent)
        # transformers' forward path: seq_len is a 0-dim int64 tensor, so the new base is float32
        n = torch.maximum(torch.tensor(seq_len), torch.tensor(s.original_max_position_embeddings))
        grown = base * ((s.factor * n / s.original_max_position_embeddings) - (s.factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (grown**exponent)

    inv = 1.0 / (base**exponent)
    if s is None:
        return inv
    if isinstance(s, Linear):
        if not s.scale_positions:  # before 4.43 the positions are divided instead (tables.cos_sin)
            inv /= s.factor
        return inv
    if isinstance(s, LongRope):
        long = seq_len is not None and seq_len > s.original_max_position_embeddings
        ext = torch.tensor(s.long_factor if long else s.short_factor, dtype=f32)
        return 1.0 / (ext * base**exponent)
    if isinstance(s, Yarn):
        pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=f32) / dim)
        extrapolation = 1.0 / pos_freqs
        interpolation = 1.0 / (s.factor * pos_freqs)
        low, high = yarn_bounds(s, dim, base)
        ramp = torch.clamp((torch.arange(dim // 2, dtype=f32) - low) / (high - low), 0, 1)
        keep = 1 - ramp
        return interpolation * (1 - keep) + extrapolation * keep
    if isinstance(s, Llama3):
        old = s.original_max_position_embeddings
        low_wavelen, high_wavelen = old / s.low_freq_factor, old / s.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
        smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise RopeSpecError(f"scaling={s!r} is not supported")  # pragma: no cover


def _axial(spec: RopeSpec, one_axis) -> torch.Tensor:
    """Axial RoPE: axis a's n_a pairs get the ladder of a rotary_dim = 2 n_a RoPE of their own
    (``one_axis``, the precision's arithmetic, computes it), in the order the pairs come."""
    axes = pairs_axes(spec.mrope_section, spec.mrope_interleaved, spec.mrope_axes, spec.n_pairs)
    ladders = [one_axis(RopeSpec(head_dim=2 * n, base=spec.base), None) for n in spec.mrope_section if n]
    start = [0]
    for n in spec.mrope_section:
        start.append(start[-1] + n)
    index = torch.tensor([start[a] + k for a, k in zip(axes, rank_in_axis(axes))], dtype=torch.int64)
    return torch.cat(ladders)[index]


def inv_freq(spec: RopeSpec, seq_len: int | None = None, precision: str = "exact") -> tuple[torch.Tensor, float]:
    """Inverse frequencies (one per rotating pair) and the attention factor.

    ``precision="exact"`` returns float64; ``precision="hf"`` returns transformers' float32 values.
    ``seq_len`` only matters for dynamic and longrope scaling (see the module docstring).

    >>> import ropekit as rk
    >>> inv, factor = rk.inv_freq(rk.RopeSpec(head_dim=8, base=10000.0))
    >>> inv.tolist(), factor
    ([1.0, 0.1, 0.01, 0.001], 1.0)
    """
    if not isinstance(spec, RopeSpec):
        raise RopeSpecError(f"spec must be a ropekit.RopeSpec, got {type(spec).__name__}")
    precision = check_precision(precision)
    seq_len = _check_seq_len(seq_len)
    try:
        one_axis = _exact if precision == "exact" else _hf
        inv = _axial(spec, one_axis) if spec.axial else one_axis(spec, seq_len)
        factor = attention_factor(spec)
    except (OverflowError, ZeroDivisionError) as exc:  # Python-float scalars of extreme specs
        raise RopeSpecError(f"spec {spec.describe()} has no finite frequencies ({exc})") from None
    if not (math.isfinite(factor) and factor > 0):
        raise RopeSpecError(
            f"spec {spec.describe()} gives attention factor {factor!r}; it must be finite and > 0 "
            "(check attention_factor / scaling.mscale / scaling.mscale_all_dim)"
        )
    if not bool(torch.isfinite(inv).all()):
        raise RopeSpecError(
            f"spec {spec.describe()} gives non-finite inverse frequencies in precision={precision!r} "
            f"(base={spec.base!r} overflows or underflows {inv.dtype})"
        )
    return inv, factor
