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
>>> RopeSpec(head_dim=64, angle_sign=-1).describe()   # NanoChat: pairs turn by -angle
'half r=64/64 base=10000 angle_sign=-1 (turns by -angle)'
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from . import mrope, scaling
from .errors import RopeSpecError, RopeSpecTypeError, short_repr
from .layouts import LAYOUTS, normalize_layout  # re-exported: spec.normalize_layout is older than layouts
from .scaling import *  # noqa: F403 -- re-exported: the scaling variants are part of the spec's vocabulary
from .scaling import (  # what the spec itself uses
    MAX_HEAD_DIM,
    SCALINGS,
    Dynamic,
    LongRope,
    Proportional,
    Scaling,
    check_int,
    check_number,
    scaling_from_dict,
    scaling_to_dict,
    set_field,
    shown_fields,
)

__all__ = ["RopeSpec", *scaling.__all__, "LAYOUTS", "normalize_layout"]

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
      mrope_axes: multimodal RoPE with any other arrangement: the position axis (0, 1, ...)
        of every rotating pair, rotary_dim / 2 of them (ERNIE-4.5-VL alternates height and
        width, then time).  ``mrope_section`` then counts the pairs of each axis (derived when
        omitted); a map that is one of the section kinds is stored as that kind (``ropekit.mrope``).
      axial: axial RoPE of image models (MLCD, SAM 3, DINOv3, EfficientLoFTR): every position
        axis (row, column, ...) has a frequency ladder of its own over the pairs that follow it, so
        the k-th of the n_a pairs of axis a turns at ``base ** (-k / n_a)`` (``inv_freq[j]`` of the
        1-D ladder otherwise).  Needs the axes (``mrope_section`` / ``mrope_axes``) and no scaling;
        positions may be negative or fractional (patch-centre coordinates).
      angle_sign: the direction pairs turn: pair i at position p turns by
        ``angle_sign * p * inv_freq[i]``.  1 (every family but one); -1 for NanoChat, whose apply
        function is rotate_half with sin negated.  Tables carry it as an exact sign flip of sin.
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
    mrope_axes: tuple[int, ...] | None = None
    axial: bool = False
    angle_sign: int = 1
    source: str | None = dataclasses.field(default=None, compare=False)
    # not a field people set: version of the dict format, for forward compatibility
    FORMAT_VERSION: ClassVar[int] = 1

    def __post_init__(self):
        head_dim = check_int("head_dim", self.head_dim, high=MAX_HEAD_DIM)
        set_field(self, "head_dim", head_dim)
        rotary_dim = head_dim if self.rotary_dim is None else check_int("rotary_dim", self.rotary_dim)
        if rotary_dim % 2:
            raise RopeSpecError(f"rotary_dim={rotary_dim} must be even (dims rotate in pairs)")
        if rotary_dim > head_dim:
            raise RopeSpecError(f"rotary_dim={rotary_dim} must be <= head_dim={head_dim}")
        set_field(self, "rotary_dim", rotary_dim)
        set_field(self, "base", check_number("base", self.base, low=0.0, low_inclusive=False))
        if self.base == 1.0:
            raise RopeSpecError("base=1.0 makes every frequency 1 (no positional information); use base > 1")
        set_field(self, "layout", normalize_layout(self.layout))
        if self.scaling is not None and not isinstance(self.scaling, tuple(SCALINGS.values())):
            if isinstance(self.scaling, dict):
                set_field(self, "scaling", scaling_from_dict(self.scaling))
            else:
                raise RopeSpecTypeError(
                    f"scaling={short_repr(self.scaling)} must be None or one of {sorted(SCALINGS)} "
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
            set_field(
                self, "max_position_embeddings", check_int("max_position_embeddings", self.max_position_embeddings)
            )
        if self.attention_factor is not None:
            set_field(
                self,
                "attention_factor",
                check_number("attention_factor", self.attention_factor, low=0.0, low_inclusive=False),
            )
        # the three mRoPE fields are one fact (the axis of each pair): checked and stored in one form
        section, interleaved, axes = mrope.normalize(
            self.mrope_section, self.mrope_interleaved, self.mrope_axes, rotary_dim // 2
        )
        set_field(self, "mrope_section", section)
        set_field(self, "mrope_interleaved", interleaved)
        set_field(self, "mrope_axes", axes)
        _check_axial(self.axial, section, self.scaling)
        set_field(self, "angle_sign", _check_angle_sign(self.angle_sign))
        if self.source is not None and not isinstance(self.source, str):
            raise RopeSpecTypeError(f"source={short_repr(self.source)} must be a string or None")

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
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise RopeSpecError(f"unknown RopeSpec fields {sorted(unknown)}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def with_layout(self, layout: str) -> RopeSpec:
        return self.replace(layout=normalize_layout(layout))

    def with_rotary_dim(self, rotary_dim: int | None) -> RopeSpec:
        return self.replace(rotary_dim=rotary_dim)

    def with_rotary_fraction(self, fraction: float) -> RopeSpec:
        """rotary_dim = fraction * head_dim (always relative to head_dim, never to the current
        rotary_dim: applying it twice gives the same spec, so partial rotary cannot be halved twice)."""
        fraction = check_number("fraction", fraction, low=0.0, low_inclusive=False)
        rotary_dim = int(self.head_dim * fraction)
        if fraction > 1.0 or rotary_dim < 2:
            raise RopeSpecError(f"fraction={fraction!r} with head_dim={self.head_dim} gives rotary_dim={rotary_dim}")
        return self.replace(rotary_dim=rotary_dim)

    def with_scaling(self, scaling: Scaling | dict | None) -> RopeSpec:
        return self.replace(scaling=scaling)

    def without_mrope(self) -> RopeSpec:
        """The same rotation over one position axis: no mRoPE sections, kind or axis map."""
        if self.axial:
            raise RopeSpecError(
                "an axial spec has no one-axis form: each axis has a frequency ladder of its own, so without "
                "its axes the frequencies would change"
            )
        return self.replace(mrope_section=None, mrope_interleaved=False, mrope_axes=None)

    def turning_forward(self) -> RopeSpec:
        """The same spec turning by +angle: the tables a family's rotary module hands to an apply
        function that applies the direction itself (NanoChat negates sin inside its rotate_half).

        >>> spec = RopeSpec(head_dim=8, angle_sign=-1)
        >>> spec.turning_forward().angle_sign, spec.turning_forward().turning_forward() == spec.turning_forward()
        (1, True)
        """
        return self if self.angle_sign == 1 else self.replace(angle_sign=1)

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
        if self.mrope_axes is not None:  # only when set, so the section kinds' dicts stay as they were
            out["mrope_axes"] = list(self.mrope_axes)
        if self.axial:  # only when set, so existing spec dicts stay as they were
            out["axial"] = True
        if self.angle_sign != 1:  # only when -1, so existing spec dicts (and caches keyed by them) stay
            out["angle_sign"] = self.angle_sign
        if self.source is not None:  # only when set, so existing spec dicts stay as they were
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RopeSpec:
        if not isinstance(data, dict):
            raise RopeSpecTypeError(f"a RopeSpec dict was expected, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise RopeSpecError(
                f"unknown RopeSpec fields {short_repr(sorted(map(str, unknown)))}; known: {sorted(names)}"
            )
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
        if not isinstance(text, (str, bytes, bytearray)):
            raise RopeSpecTypeError(f"RopeSpec JSON must be a str, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, nesting too deep
            raise RopeSpecError(f"RopeSpec JSON is malformed: {short_repr(str(exc), 200)}") from None
        return cls.from_dict(data)

    def describe(self) -> str:
        """One line for people: ``half r=128/128 base=500000 llama3(factor=8, ...)``."""
        parts = [self.layout, f"r={self.rotary_dim}/{self.head_dim}", f"base={self.base:g}"]
        if self.scaling is not None:
            params = ", ".join(f"{f.name}={_short(getattr(self.scaling, f.name))}" for f in shown_fields(self.scaling))
            parts.append(f"{self.scaling.kind}({params})")
        if self.attention_factor is not None:
            parts.append(f"attention_factor={self.attention_factor:g}")
        if self.mrope_axes is not None:
            parts.append(f"mrope={list(self.mrope_section)} axes {mrope.describe_axes(self.mrope_axes)}")
        elif self.mrope_section is not None:
            kind = "interleaved" if self.mrope_interleaved else "contiguous"
            parts.append(f"mrope={list(self.mrope_section)} {kind}")
        if self.axial:
            parts.append("axial (one frequency ladder per axis)")
        if self.angle_sign != 1:
            parts.append("angle_sign=-1 (turns by -angle)")
        return " ".join(parts)


def _check_axial(axial: Any, section, scaling) -> None:
    if not isinstance(axial, bool):
        raise RopeSpecTypeError(f"axial={short_repr(axial)} must be a bool")
    if axial and section is None:
        raise RopeSpecError(
            "axial=True needs the position axes: mrope_section or mrope_axes (which pairs follow which axis)"
        )
    if axial and scaling is not None:
        raise RopeSpecError(
            f"axial=True with scaling={scaling.kind!r}: no axial (image) RoPE scales its frequencies, so ropekit "
            "does not define what that would mean; drop one of them"
        )


def _check_angle_sign(value: Any) -> int:
    # bool is an int to Python, but True is no direction: refuse it rather than read it as 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise RopeSpecTypeError(f"angle_sign={short_repr(value)} must be the int 1 or -1")
    if value not in (1, -1):
        raise RopeSpecError(f"angle_sign={short_repr(value)} must be 1 (rotate by +angle) or -1 (rotate by -angle)")
    return int(value)


def _short(value: Any) -> str:
    if isinstance(value, tuple):
        return f"[{len(value)} values]"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)
