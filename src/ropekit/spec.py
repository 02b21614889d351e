"""RopeSpec: everything that determines a rotary position embedding, validated and frozen.

A spec says *what* rotation a model applies; it knows nothing of configs (see ``dialects``),
of how frequencies are computed (``frequencies``) or of tensors (``tables``, ``apply``).

>>> from ropekit.spec import RopeSpec, Yarn
>>> spec = RopeSpec(head_dim=128, base=1e6, layout="neox",
...                 scaling=Yarn(factor=4.0, original_max_position_embeddings=32768))
>>> spec.layout, spec.rotary_dim, spec.scaling.kind
('half', 128, 'yarn')
>>> spec.with_rotary_fraction(0.5).with_rotary_fraction(0.5).rotary_dim  # never halved twice
64
>>> RopeSpec.from_json(spec.to_json()) == spec
True
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import RopeSpecError

__all__ = [
    "RopeSpec",
    "Scaling",
    "Linear",
    "Dynamic",
    "Yarn",
    "LongRope",
    "Llama3",
    "Proportional",
    "LAYOUTS",
    "normalize_layout",
]

#: canonical layout names and the aliases accepted for them
LAYOUTS = {"half": "half", "neox": "half", "interleaved": "interleaved", "gptj": "interleaved"}


def normalize_layout(layout: str, field_name: str = "layout") -> str:
    """Map ``half|neox`` to ``"half"`` and ``interleaved|gptj`` to ``"interleaved"``."""
    if not isinstance(layout, str) or layout.lower() not in LAYOUTS:
        raise RopeSpecError(
            f"{field_name}={layout!r} is not a RoPE layout; use 'half' (alias 'neox') or 'interleaved' (alias 'gptj')"
        )
    return LAYOUTS[layout.lower()]


# ---------------------------------------------------------------------------------------------
# validation helpers: each names the field and the value
# ---------------------------------------------------------------------------------------------


def _check_number(name: str, value: Any, *, low: float | None = None, low_inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RopeSpecError(f"{name}={value!r} must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise RopeSpecError(f"{name}={value!r} must be finite")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        bound = ">=" if low_inclusive else ">"
        raise RopeSpecError(f"{name}={value!r} must be {bound} {low:g}")
    return value


def _check_int(name: str, value: Any, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise RopeSpecError(f"{name}={value!r} must be an integer")
    if value < low:
        raise RopeSpecError(f"{name}={value!r} must be >= {low}")
    return int(value)


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses normalize fields in __post_init__


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
        _set(self, "factor", _check_number("scaling.factor", self.factor, low=1.0))
        if not isinstance(self.scale_positions, bool):
            raise RopeSpecError(f"scaling.scale_positions={self.scale_positions!r} must be a bool")


@dataclass(frozen=True)
class Dynamic:
    """Dynamic NTK: the base grows with the sequence length once it passes
    ``original_max_position_embeddings`` (transformers reads it from ``max_position_embeddings``)."""

    factor: float
    original_max_position_embeddings: int
    kind: ClassVar[str] = "dynamic"

    def __post_init__(self):
        _set(self, "factor", _check_number("scaling.factor", self.factor, low=1.0))
        _set(
            self,
            "original_max_position_embeddings",
            _check_int("scaling.original_max_position_embeddings", self.original_max_position_embeddings),
        )


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
        _set(self, "factor", _check_number("scaling.factor", self.factor, low=1.0))
        _set(
            self,
            "original_max_position_embeddings",
            _check_int("scaling.original_max_position_embeddings", self.original_max_position_embeddings),
        )
        _set(self, "beta_fast", _check_number("scaling.beta_fast", self.beta_fast, low=0.0, low_inclusive=False))
        _set(self, "beta_slow", _check_number("scaling.beta_slow", self.beta_slow, low=0.0, low_inclusive=False))
        if self.beta_fast < self.beta_slow:
            raise RopeSpecError(f"scaling.beta_fast={self.beta_fast!r} must be >= scaling.beta_slow={self.beta_slow!r}")
        for name in ("mscale", "mscale_all_dim"):
            value = getattr(self, name)
            if value is not None:
                _set(self, name, _check_number(f"scaling.{name}", value, low=0.0))
        if not isinstance(self.truncate, bool):
            raise RopeSpecError(f"scaling.truncate={self.truncate!r} must be a bool")


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
                raise RopeSpecError(f"scaling.{name}={values!r} must be a list of numbers")
            values = tuple(
                _check_number(f"scaling.{name}[{i}]", v, low=0.0, low_inclusive=False) for i, v in enumerate(values)
            )
            _set(self, name, values)
        if len(self.short_factor) != len(self.long_factor):
            raise RopeSpecError(
                f"scaling.short_factor has {len(self.short_factor)} entries but scaling.long_factor has "
                f"{len(self.long_factor)}; both need one per rotating pair (rotary_dim / 2)"
            )
        _set(
            self,
            "original_max_position_embeddings",
            _check_int("scaling.original_max_position_embeddings", self.original_max_position_embeddings),
        )
        _set(self, "factor", _check_number("scaling.factor", self.factor, low=0.0, low_inclusive=False))


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
        _set(self, "factor", _check_number("scaling.factor", self.factor, low=1.0))
        _set(
            self,
            "low_freq_factor",
            _check_number("scaling.low_freq_factor", self.low_freq_factor, low=0.0, low_inclusive=False),
        )
        _set(
            self,
            "high_freq_factor",
            _check_number("scaling.high_freq_factor", self.high_freq_factor, low=0.0, low_inclusive=False),
        )
        if not self.high_freq_factor > self.low_freq_factor:
            raise RopeSpecError(
                f"scaling.high_freq_factor={self.high_freq_factor!r} must be > "
                f"scaling.low_freq_factor={self.low_freq_factor!r}"
            )
        _set(
            self,
            "original_max_position_embeddings",
            _check_int("scaling.original_max_position_embeddings", self.original_max_position_embeddings),
        )


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
        p = _check_number("scaling.partial_rotary_factor", self.partial_rotary_factor, low=0.0)
        if p > 1.0:
            raise RopeSpecError(f"scaling.partial_rotary_factor={p!r} must be <= 1")
        _set(self, "partial_rotary_factor", p)
        _set(self, "factor", _check_number("scaling.factor", self.factor, low=0.0, low_inclusive=False))


Scaling = Linear | Dynamic | Yarn | LongRope | Llama3 | Proportional
SCALINGS: dict[str, type] = {cls.kind: cls for cls in (Linear, Dynamic, Yarn, LongRope, Llama3, Proportional)}


def _shown_fields(scaling) -> list:
    """The fields of a scaling that dicts and descriptions show: a release-specific rounding flag
    only when it is set, so specs of every other release read as before."""
    return [f for f in dataclasses.fields(scaling) if not (f.name == "scale_positions" and not scaling.scale_positions)]


def scaling_to_dict(scaling: Scaling | None) -> dict[str, Any] | None:
    if scaling is None:
        return None
    out: dict[str, Any] = {"kind": scaling.kind}
    for f in _shown_fields(scaling):
        value = getattr(scaling, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def scaling_from_dict(data: dict[str, Any] | None) -> Scaling | None:
    if data is None:
        return None
    if not isinstance(data, dict) or "kind" not in data:
        raise RopeSpecError(f"scaling={data!r} must be None or a dict with a 'kind' key")
    kind = data["kind"]
    if kind not in SCALINGS:
        raise RopeSpecError(f"scaling.kind={kind!r} is not a known scaling; known: {sorted(SCALINGS)}")
    cls = SCALINGS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - {"kind"}
    if unknown:
        raise RopeSpecError(f"scaling of kind {kind!r} has unknown fields {sorted(unknown)}; known: {sorted(names)}")
    try:
        return cls(**{k: v for k, v in data.items() if k != "kind"})
    except TypeError as exc:  # a required field is missing
        raise RopeSpecError(f"scaling of kind {kind!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RopeSpec:
    """What rotation a model applies to each attention head.

    Fields:
      head_dim: size of one q/k head.
      rotary_dim: how many leading dims of each head rotate (default: all).  Always even.
      base: the ``theta`` of ``inv_freq[i] = base ** (-2i / rotary_dim)``.
      layout: ``"half"`` pairs (i, i + r/2) (NeoX, transformers' rotate_half);
        ``"interleaved"`` pairs (2i, 2i+1) (GPT-J, Meta's complex numbers).
      scaling: None or one of Linear, Dynamic, Yarn, LongRope, Llama3, Proportional.
      max_position_embeddings: the context the model is configured for (informational, and
        used by from_config to fill scaling defaults).
      attention_factor: multiplies cos and sin; None means "what the scaling implies"
        (1 for most, a log-based factor for yarn and longrope).
      mrope_section: multimodal RoPE: how many frequencies each position axis (temporal,
        height, width) owns; sums to rotary_dim / 2.  ``mrope_interleaved`` picks Qwen3-VL's
        round-robin assignment instead of Qwen2-VL's contiguous sections.
      source: provenance, for people (e.g. "measured from transformers 5.24 ...").  Not part of
        the rotation: specs that differ only in source are equal.
    """

    head_dim: int
    rotary_dim: int | None = None
    base: float = 10000.0
    layout: str = "half"
    scaling: Scaling | None = None
    max_position_embeddings: int | None = None
    attention_factor: float | None = None
    mrope_section: tuple[int, ...] | None = None
    mrope_interleaved: bool = False
    source: str | None = dataclasses.field(default=None, compare=False)
    # not a field people set: version of the dict format, for forward compatibility
    FORMAT_VERSION: ClassVar[int] = 1

    def __post_init__(self):
        head_dim = _check_int("head_dim", self.head_dim)
        _set(self, "head_dim", head_dim)
        rotary_dim = head_dim if self.rotary_dim is None else _check_int("rotary_dim", self.rotary_dim)
        if rotary_dim % 2:
            raise RopeSpecError(f"rotary_dim={rotary_dim} must be even (dims rotate in pairs)")
        if rotary_dim > head_dim:
            raise RopeSpecError(f"rotary_dim={rotary_dim} must be <= head_dim={head_dim}")
        _set(self, "rotary_dim", rotary_dim)
        _set(self, "base", _check_number("base", self.base, low=0.0, low_inclusive=False))
        if self.base == 1.0:
            raise RopeSpecError("base=1.0 makes every frequency 1 (no positional information); use base > 1")
        _set(self, "layout", normalize_layout(self.layout))
        if self.scaling is not None and not isinstance(self.scaling, tuple(SCALINGS.values())):
            if isinstance(self.scaling, dict):
                _set(self, "scaling", scaling_from_dict(self.scaling))
            else:
                raise RopeSpecError(
                    f"scaling={self.scaling!r} must be None or one of {sorted(SCALINGS)} "
                    f"(ropekit.Linear, ropekit.Yarn, ...)"
                )
        if isinstance(self.scaling, LongRope) and len(self.scaling.short_factor) != rotary_dim // 2:
            raise RopeSpecError(
                f"scaling.short_factor has {len(self.scaling.short_factor)} entries; "
                f"rotary_dim={rotary_dim} needs {rotary_dim // 2} (one per rotating pair)"
            )
        if isinstance(self.scaling, Dynamic) and rotary_dim <= 2:
            # the NTK base growth has exponent rotary_dim / (rotary_dim - 2)
            raise RopeSpecError(f"rotary_dim={rotary_dim} must be > 2 for dynamic scaling")
        if isinstance(self.scaling, Proportional) and rotary_dim != head_dim:
            raise RopeSpecError(
                f"rotary_dim={rotary_dim} must equal head_dim={head_dim} for proportional scaling "
                f"(it pairs the whole head; set scaling.partial_rotary_factor instead)"
            )
        if self.max_position_embeddings is not None:
            _set(self, "max_position_embeddings", _check_int("max_position_embeddings", self.max_position_embeddings))
        if self.attention_factor is not None:
            _set(
                self,
                "attention_factor",
                _check_number("attention_factor", self.attention_factor, low=0.0, low_inclusive=False),
            )
        if self.mrope_section is not None:
            section = self.mrope_section
            if isinstance(section, (str, bytes)) or not hasattr(section, "__iter__"):
                raise RopeSpecError(f"mrope_section={section!r} must be a list of integers")
            section = tuple(_check_int(f"mrope_section[{i}]", s, low=0) for i, s in enumerate(section))
            if sum(section) != rotary_dim // 2:
                raise RopeSpecError(
                    f"mrope_section={list(section)} sums to {sum(section)}; it must sum to "
                    f"rotary_dim / 2 = {rotary_dim // 2}"
                )
            _set(self, "mrope_section", section)
        if not isinstance(self.mrope_interleaved, bool):
            raise RopeSpecError(f"mrope_interleaved={self.mrope_interleaved!r} must be a bool")
        if self.mrope_interleaved and self.mrope_section is None:
            raise RopeSpecError("mrope_interleaved=True needs mrope_section")
        if self.source is not None and not isinstance(self.source, str):
            raise RopeSpecError(f"source={self.source!r} must be a string or None")

    # -- derived facts ---------------------------------------------------------------------------

    @property
    def n_pairs(self) -> int:
        """Number of rotating pairs = length of inv_freq and of a compact table row."""
        return self.rotary_dim // 2

    @property
    def rotary_fraction(self) -> float:
        return self.rotary_dim / self.head_dim

    # -- transformations: each returns a new spec and is idempotent ---------------------------------

    def replace(self, **changes: Any) -> RopeSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_layout(self, layout: str) -> RopeSpec:
        return self.replace(layout=normalize_layout(layout))

    def with_rotary_dim(self, rotary_dim: int | None) -> RopeSpec:
        return self.replace(rotary_dim=rotary_dim)

    def with_rotary_fraction(self, fraction: float) -> RopeSpec:
        """rotary_dim = fraction * head_dim (always relative to head_dim, never to the current
        rotary_dim: applying it twice gives the same spec, so partial rotary cannot be halved twice)."""
        fraction = _check_number("fraction", fraction, low=0.0, low_inclusive=False)
        rotary_dim = int(self.head_dim * fraction)
        if fraction > 1.0 or rotary_dim < 2:
            raise RopeSpecError(f"fraction={fraction!r} with head_dim={self.head_dim} gives rotary_dim={rotary_dim}")
        return self.replace(rotary_dim=rotary_dim)

    def with_scaling(self, scaling: Scaling | dict | None) -> RopeSpec:
        return self.replace(scaling=scaling)

    # -- serialization --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; ``RopeSpec.from_dict(spec.to_dict()) == spec`` exactly."""
        out = {
            "head_dim": self.head_dim,
            "rotary_dim": self.rotary_dim,
            "base": self.base,
            "layout": self.layout,
            "scaling": scaling_to_dict(self.scaling),
            "max_position_embeddings": self.max_position_embeddings,
            "attention_factor": self.attention_factor,
            "mrope_section": None if self.mrope_section is None else list(self.mrope_section),
            "mrope_interleaved": self.mrope_interleaved,
        }
        if self.source is not None:  # only when set, so existing spec dicts stay as they were
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RopeSpec:
        if not isinstance(data, dict):
            raise RopeSpecError(f"a RopeSpec dict was expected, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise RopeSpecError(f"unknown RopeSpec fields {sorted(unknown)}; known: {sorted(names)}")
        if "head_dim" not in data:
            raise RopeSpecError("head_dim is missing from the RopeSpec dict")
        data = dict(data)
        data["scaling"] = scaling_from_dict(data.get("scaling"))
        return cls(**data)

    def to_json(self, **kwargs: Any) -> str:
        # Python's float repr is shortest-round-trip, so JSON floats come back bit-identical.
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> RopeSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RopeSpecError(f"RopeSpec JSON is malformed: {exc}") from None
        return cls.from_dict(data)

    def describe(self) -> str:
        """One line for people: ``half r=128/128 base=500000 llama3(factor=8, ...)``."""
        parts = [self.layout, f"r={self.rotary_dim}/{self.head_dim}", f"base={self.base:g}"]
        if self.scaling is not None:
            params = ", ".join(f"{f.name}={_short(getattr(self.scaling, f.name))}" for f in _shown_fields(self.scaling))
            parts.append(f"{self.scaling.kind}({params})")
        if self.attention_factor is not None:
            parts.append(f"attention_factor={self.attention_factor:g}")
        if self.mrope_section is not None:
            kind = "interleaved" if self.mrope_interleaved else "contiguous"
            parts.append(f"mrope={list(self.mrope_section)} {kind}")
        return " ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, tuple):
        return f"[{len(value)} values]"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)
