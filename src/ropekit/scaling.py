"""The scaling variants of a RopeSpec (field names are transformers' rope_parameters keys), and
the field checks every spec field shares: each names the field and the value.

>>> from ropekit.scaling import Yarn, scaling_from_dict, scaling_to_dict
>>> y = Yarn(factor=4.0, original_max_position_embeddings=32768)
>>> scaling_from_dict(scaling_to_dict(y)) == y, y.kind
(True, 'yarn')
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import RopeSpecError, RopeSpecTypeError, short_repr

__all__ = [
    "shown_fields",
    "Scaling",
    "Linear",
    "Dynamic",
    "Yarn",
    "LongRope",
    "Llama3",
    "Proportional",
    "SCALINGS",
    "scaling_to_dict",
    "scaling_from_dict",
    "yarn_mscale",
    "check_number",
    "check_int",
    "set_field",
    "MAX_INT",
    "MAX_HEAD_DIM",
]

# ---------------------------------------------------------------------------------------------
# validation helpers: each names the field and the value
# ---------------------------------------------------------------------------------------------


#: the largest integer a spec field may hold: float64 (every frequency computation) is exact up to here
MAX_INT = 2**53
#: the largest head_dim a spec accepts; real models use 64-576, and frequency tables scale with it
MAX_HEAD_DIM = 2**16


def check_number(name: str, value: Any, *, low: float | None = None, low_inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RopeSpecTypeError(f"{name}={short_repr(value)} must be a number")
    try:
        value = float(value)
    except OverflowError:
        raise RopeSpecError(f"{name}={short_repr(value)} is beyond float64 range") from None
    if not math.isfinite(value):
        raise RopeSpecError(f"{name}={value!r} must be finite")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        bound = ">=" if low_inclusive else ">"
        raise RopeSpecError(f"{name}={value!r} must be {bound} {low:g}")
    return value


def check_int(name: str, value: Any, *, low: int = 1, high: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RopeSpecTypeError(f"{name}={short_repr(value)} must be an integer")
    if value < low:
        raise RopeSpecError(f"{name}={value!r} must be >= {low}")
    if value > high:
        raise RopeSpecError(f"{name}={short_repr(value)} must be <= {high}")
    return int(value)


def set_field(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses normalize fields in __post_init__


def _number(scaling, name: str, **bounds) -> None:
    """Check and normalize the number field ``name`` of a scaling variant (errors say ``scaling.<name>``)."""
    set_field(scaling, name, check_number(f"scaling.{name}", getattr(scaling, name), **bounds))


def _integer(scaling, name: str) -> None:
    """Check the positive integer field ``name`` of a scaling variant."""
    set_field(scaling, name, check_int(f"scaling.{name}", getattr(scaling, name)))


# ---------------------------------------------------------------------------------------------
# scaling variants (field names are transformers' rope_parameters keys)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Linear:
    """Position interpolation: every frequency divided by ``factor``.

    ``scale_positions``: transformers before 4.43 divides the positions instead (``t / factor``);
    the same rotation, but ``precision="hf"`` then rounds like those releases.
    """

    factor: float
    scale_positions: bool = False
    kind: ClassVar[str] = "linear"

    def __post_init__(self):
        _number(self, "factor", low=1.0)
        if not isinstance(self.scale_positions, bool):
            raise RopeSpecTypeError(f"scaling.scale_positions={short_repr(self.scale_positions)} must be a bool")


@dataclass(frozen=True)
class Dynamic:
    """Dynamic NTK: the base grows with the sequence length once it passes
    ``original_max_position_embeddings`` (transformers reads it from ``max_position_embeddings``)."""

    factor: float
    original_max_position_embeddings: int
    kind: ClassVar[str] = "dynamic"

    def __post_init__(self):
        _number(self, "factor", low=1.0)
        _integer(self, "original_max_position_embeddings")


@dataclass(frozen=True)
class Yarn:
    """YaRN: per-frequency blend of interpolation and extrapolation with a linear ramp between
    ``beta_fast`` and ``beta_slow`` rotations, plus an attention factor (DeepSeek: ``mscale``,
    ``mscale_all_dim``).  ``truncate`` floors/ceils the ramp bounds as the paper and transformers do;
    gpt-oss uses ``truncate=False``."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    kind: ClassVar[str] = "yarn"

    def __post_init__(self):
        _number(self, "factor", low=1.0)
        _integer(self, "original_max_position_embeddings")
        _number(self, "beta_fast", low=0.0, low_inclusive=False)
        _number(self, "beta_slow", low=0.0, low_inclusive=False)
        if self.beta_fast < self.beta_slow:
            raise RopeSpecError(f"scaling.beta_fast={self.beta_fast!r} must be >= scaling.beta_slow={self.beta_slow!r}")
        for name in ("mscale", "mscale_all_dim"):
            value = getattr(self, name)
            if value is not None:
                set_field(self, name, check_number(f"scaling.{name}", value, low=0.0))
        if not isinstance(self.truncate, bool):
            raise RopeSpecTypeError(f"scaling.truncate={short_repr(self.truncate)} must be a bool")


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention scale for a context extension ``scale``: ``0.1 * mscale * ln(scale) + 1``
    (1 when the context is not extended); DeepSeek's configs divide two of them.  Here, torch-free,
    so config readers can use it."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


@dataclass(frozen=True)
class LongRope:
    """LongRoPE (Phi-3): per-frequency divisors, ``short_factor`` up to
    ``original_max_position_embeddings`` tokens and ``long_factor`` beyond.  ``factor`` (the context
    extension ratio) only sets the default attention factor; from_config fills it from
    ``max_position_embeddings / original_max_position_embeddings`` as transformers does."""

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    factor: float = 1.0
    kind: ClassVar[str] = "longrope"

    def __post_init__(self):
        for name in ("short_factor", "long_factor"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
                raise RopeSpecTypeError(f"scaling.{name}={short_repr(values)} must be a list of numbers")
            values = tuple(
                check_number(f"scaling.{name}[{i}]", v, low=0.0, low_inclusive=False) for i, v in enumerate(values)
            )
            set_field(self, name, values)
        if len(self.short_factor) != len(self.long_factor):
            raise RopeSpecError(
                f"scaling.short_factor has {len(self.short_factor)} entries but scaling.long_factor has "
                f"{len(self.long_factor)}; both need one per rotating pair (rotary_dim / 2)"
            )
        _integer(self, "original_max_position_embeddings")
        _number(self, "factor", low=0.0, low_inclusive=False)


@dataclass(frozen=True)
class Llama3:
    """Llama 3.1: low frequencies divided by ``factor``, high ones kept, a smooth blend between
    wavelengths ``original_max_position_embeddings / high_freq_factor`` and ``... / low_freq_factor``."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    kind: ClassVar[str] = "llama3"

    def __post_init__(self):
        _number(self, "factor", low=1.0)
        _number(self, "low_freq_factor", low=0.0, low_inclusive=False)
        _number(self, "high_freq_factor", low=0.0, low_inclusive=False)
        if not self.high_freq_factor > self.low_freq_factor:
            raise RopeSpecError(
                f"scaling.high_freq_factor={self.high_freq_factor!r} must be > "
                f"scaling.low_freq_factor={self.low_freq_factor!r}"
            )
        _integer(self, "original_max_position_embeddings")


@dataclass(frozen=True)
class Proportional:
    """Proportional RoPE (transformers' ``"proportional"``): the whole head is paired, the
    exponents are over ``head_dim`` not ``rotary_dim``, and only the first
    ``partial_rotary_factor * head_dim / 2`` pairs turn; the remaining pairs have frequency 0.
    All frequencies are divided by ``factor``."""

    partial_rotary_factor: float = 1.0
    factor: float = 1.0
    kind: ClassVar[str] = "proportional"

    def __post_init__(self):
        p = check_number("scaling.partial_rotary_factor", self.partial_rotary_factor, low=0.0)
        if p > 1.0:
            raise RopeSpecError(f"scaling.partial_rotary_factor={p!r} must be <= 1")
        set_field(self, "partial_rotary_factor", p)
        _number(self, "factor", low=0.0, low_inclusive=False)


Scaling = Linear | Dynamic | Yarn | LongRope | Llama3 | Proportional
SCALINGS: dict[str, type] = {cls.kind: cls for cls in (Linear, Dynamic, Yarn, LongRope, Llama3, Proportional)}


def shown_fields(scaling) -> list:
    """The fields of a scaling that dicts and descriptions show: a release-specific rounding flag
    only when it is set, so specs of every other release read as before."""
    return [f for f in dataclasses.fields(scaling) if not (f.name == "scale_positions" and not scaling.scale_positions)]


def scaling_to_dict(scaling: Scaling | None) -> dict[str, Any] | None:
    if scaling is None:
        return None
    out: dict[str, Any] = {"kind": scaling.kind}
    for f in shown_fields(scaling):
        value = getattr(scaling, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def scaling_from_dict(data: dict[str, Any] | None) -> Scaling | None:
    if data is None:
        return None
    if not isinstance(data, dict) or "kind" not in data:
        raise RopeSpecError(f"scaling={short_repr(data)} must be None or a dict with a 'kind' key")
    kind = data["kind"]
    if not isinstance(kind, str) or kind not in SCALINGS:
        raise RopeSpecError(f"scaling.kind={short_repr(kind)} is not a known scaling; known: {sorted(SCALINGS)}")
    cls = SCALINGS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - {"kind"}
    if unknown:
        raise RopeSpecError(
            f"scaling of kind {kind!r} has unknown fields {short_repr(sorted(map(str, unknown)))}; "
            f"known: {sorted(names)}"
        )
    try:
        return cls(**{k: v for k, v in data.items() if k != "kind"})
    except TypeError as exc:  # a required field is missing
        raise RopeSpecError(f"scaling of kind {kind!r}: {exc}") from None
