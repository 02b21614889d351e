"""Meta ``params.json`` (Llama 1/2/3 reference checkpoints) -> RopeSpec.

Meta's reference code rotates with complex numbers over ``(2i, 2i+1)`` pairs, so the layout is
always ``interleaved``; ``head_dim = dim // n_heads``; every dim rotates.  ``rope_theta`` is
10000 when absent (Llama 1/2 wrote no key; Llama 3 always writes 500000).

``use_scaled_rope: true`` is Llama 3.1's frequency scaling, which Meta's ``apply_scaling``
hard-codes as factor 8, low_freq_factor 1, high_freq_factor 4 over an 8192-token original
context.  Llama 3.2 checkpoints carry the same flag but their transformers configs use factor 32;
the optional keys ``rope_scaling_factor``, ``rope_low_freq_factor``, ``rope_high_freq_factor`` and
``rope_original_max_position_embeddings`` (or ``from_config(..., scaling=...)``) say otherwise.

>>> from ropekit.dialects.meta_params import read
>>> from ropekit.dialects.reading import Source
>>> spec = read(Source({"dim": 4096, "n_heads": 32, "rope_theta": 500000.0, "use_scaled_rope": True}, "dict"))
>>> spec.layout, spec.head_dim, spec.scaling.kind, spec.scaling.factor
('interleaved', 128, 'llama3', 8.0)
"""

from __future__ import annotations

from ..errors import RopeConfigError, RopeSpecError
from ..spec import Llama3, RopeSpec, normalize_layout
from .reading import Source, flag, integer, number, spec_error

__all__ = ["read", "looks_like_meta"]


def looks_like_meta(cfg: dict) -> bool:
    """params.json has ``dim`` and ``n_heads`` (and no transformers ``model_type``)."""
    return "dim" in cfg and "n_heads" in cfg and "model_type" not in cfg


def read(source: Source, layer_type: str | None = None, layout: str | None = None) -> RopeSpec:
    cfg = source.data.get("model", source.data)  # some params.json nest everything under "model"
    if not isinstance(cfg, dict):
        raise RopeConfigError(f"{source.origin}: model={cfg!r} must be an object")
    if layer_type is not None:
        raise RopeConfigError(f"layer_type={layer_type!r} was given but Meta params.json has one RoPE for every layer")
    dim, n_heads = integer(cfg, "dim"), integer(cfg, "n_heads")
    if dim % n_heads:
        raise RopeConfigError(f"dim={dim} is not divisible by n_heads={n_heads}")
    scaling = None
    if flag(cfg, "use_scaled_rope", False):
        try:
            scaling = Llama3(
                factor=number(cfg, "rope_scaling_factor", 8.0),
                low_freq_factor=number(cfg, "rope_low_freq_factor", 1.0),
                high_freq_factor=number(cfg, "rope_high_freq_factor", 4.0),
                original_max_position_embeddings=integer(cfg, "rope_original_max_position_embeddings", 8192),
            )
        except RopeSpecError as exc:
            raise spec_error(source, exc) from None
    max_seq = cfg.get("max_seq_len")
    try:
        return RopeSpec(
            head_dim=dim // n_heads,
            base=number(cfg, "rope_theta", 10000.0),
            layout=normalize_layout(layout) if layout is not None else "interleaved",
            scaling=scaling,
            max_position_embeddings=None if max_seq is None else integer(cfg, "max_seq_len"),
        )
    except RopeConfigError:
        raise
    except RopeSpecError as exc:
        raise spec_error(source, exc) from None
