"""Specs as a table: one row per (model, layer type), the fields people compare side by side
(``ropekit spec --catalog`` prints the catalog this way).

>>> from ropekit.spec import RopeSpec
>>> print(spec_table([("tiny", None, RopeSpec(head_dim=8))]))
model  layer  layout  rotary/head  base   scaling  attn factor  max pos
-----  -----  ------  -----------  -----  -------  -----------  -------
tiny   all    half    8/8          10000  none     1
"""

from __future__ import annotations

from ..mrope import describe_axes
from ..spec import RopeSpec

__all__ = ["spec_table", "describe_scaling"]


def describe_scaling(spec: RopeSpec) -> str:
    """A short, table-friendly description of the scaling (and mRoPE) of a spec."""
    s = spec.scaling
    parts = []
    if s is None:
        parts.append("none")
    elif s.kind in ("linear", "proportional"):
        parts.append(f"{s.kind} x{s.factor:g}")
    elif s.kind == "dynamic":
        parts.append(f"dynamic x{s.factor:g} from {s.original_max_position_embeddings}")
    elif s.kind == "llama3":
        parts.append(
            f"llama3 x{s.factor:g} (orig {s.original_max_position_embeddings}, "
            f"low {s.low_freq_factor:g}, high {s.high_freq_factor:g})"
        )
    elif s.kind == "yarn":
        extra = [f"orig {s.original_max_position_embeddings}", f"beta {s.beta_fast:g}/{s.beta_slow:g}"]
        if s.mscale is not None or s.mscale_all_dim is not None:
            extra.append(f"mscale {s.mscale}/{s.mscale_all_dim}")
        if not s.truncate:
            extra.append("no truncate")
        parts.append(f"yarn x{s.factor:g} ({', '.join(extra)})")
    elif s.kind == "longrope":
        parts.append(
            f"longrope x{s.factor:g} (orig {s.original_max_position_embeddings}, {len(s.long_factor)} factors)"
        )
    if spec.mrope_axes is not None:
        parts.append(f"mrope {list(spec.mrope_section)} axes {describe_axes(spec.mrope_axes)}")
    elif spec.mrope_section is not None:
        parts.append(f"mrope {list(spec.mrope_section)} {'interleaved' if spec.mrope_interleaved else 'contiguous'}")
    return ", ".join(parts)


def spec_table(rows: list[tuple[str, str | None, RopeSpec]], markdown: bool = False) -> str:
    """The normalized specs as an aligned text (or markdown) table."""
    from ..frequencies import attention_factor

    header = ["model", "layer", "layout", "rotary/head", "base", "scaling", "attn factor", "max pos"]
    body = []
    for name, layer_type, spec in rows:
        body.append(
            [
                name,
                {"full_attention": "full", "sliding_attention": "sliding"}.get(layer_type, layer_type or "all"),
                spec.layout if spec.angle_sign == 1 else f"{spec.layout} -angle",
                f"{spec.rotary_dim}/{spec.head_dim}",
                format(spec.base, ".10g"),
                describe_scaling(spec),
                f"{attention_factor(spec):.6g}",
                "" if spec.max_position_embeddings is None else str(spec.max_position_embeddings),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row).rstrip() for row in [header, ["-" * w for w in widths], *body])
