"""The pre-4.45 rotary API: ``(dim, max_position_embeddings, base, device, scaling_factor)``.

Until 4.45, transformers built rotary modules from numbers, not configs
(``LlamaRotaryEmbedding(dim, max_position_embeddings=2048, base=10000, device=None)``, plus
``...LinearScalingRotaryEmbedding`` / ``...DynamicNTKScalingRotaryEmbedding`` taking
``scaling_factor``), called them as ``forward(x, seq_len=n)`` and read ``cos_cached``,
``sin_cached``, ``dim``, ``base`` and ``inv_freq``.  This module turns those arguments into a
RopeSpec, and reproduces the two places where those releases' float32 arithmetic differs from the
current one (``precision="hf"`` only; the exact tables are the same math):

* linear scaling divided the *positions* (``t / scaling_factor``), not the frequencies;
* dynamic NTK computed the grown base from a Python int (double precision), and its table cache
  only grew: after one long sequence every shorter one kept the grown base.

>>> spec_from_legacy(64, 2048, 10000.0, scaling="linear", scaling_factor=4.0).scaling.kind
'linear'
"""

from __future__ import annotations

import torch

from ..errors import RopeSpecError
from ..spec import Dynamic, Linear, RopeSpec

__all__ = ["spec_from_legacy", "legacy_tables_hf", "legacy_angles_hf", "divides_positions", "LEGACY_SCALINGS"]

LEGACY_SCALINGS = (None, "linear", "dynamic")


def spec_from_legacy(dim, max_position_embeddings=2048, base=10000.0, *, scaling=None, scaling_factor=1.0) -> RopeSpec:
    """The spec of ``LlamaRotaryEmbedding(dim, max_position_embeddings, base)`` (and its scaled variants)."""
    if scaling not in LEGACY_SCALINGS:
        raise RopeSpecError(f"scaling={scaling!r} must be one of {LEGACY_SCALINGS} for the legacy constructor")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise RopeSpecError(f"dim={dim!r} must be an integer (the rotary dimension)")
    factor = 1.0 if scaling_factor is None else scaling_factor
    rule = None
    if scaling == "linear":
        rule = Linear(factor=factor)
    elif scaling == "dynamic":
        rule = Dynamic(factor=factor, original_max_position_embeddings=max_position_embeddings)
    return RopeSpec(head_dim=dim, base=base, scaling=rule, max_position_embeddings=max_position_embeddings)


def _exponent(dim: int) -> torch.Tensor:
    return torch.arange(0, dim, 2).float() / dim


def legacy_inv_freq_hf(spec: RopeSpec, cached_len: int) -> torch.Tensor:
    """float32 inv_freq as the pre-4.45 modules held it after caching ``cached_len`` positions."""
    dim, s = spec.rotary_dim, spec.scaling
    base = spec.base
    if isinstance(s, Dynamic) and cached_len > s.original_max_position_embeddings:
        # a Python int seq_len: the grown base is computed in double precision, then used as a scalar
        growth = (s.factor * cached_len / s.original_max_position_embeddings) - (s.factor - 1)
        base = spec.base * growth ** (dim / (dim - 2))
    return 1.0 / (base ** _exponent(dim))


def divides_positions() -> bool:
    """Whether the installed release's legacy linear class divides positions (before 4.43) rather
    than frequencies (4.43 rebuilt the legacy classes on the config-driven code: read in 4.42.4
    and 4.43.0)."""
    try:
        import transformers
    except ImportError:
        return True  # the legacy API is the pre-4.45 one
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return (major, minor) < (4, 43)


def legacy_angles_hf(spec: RopeSpec, positions: torch.Tensor, cached_len: int) -> torch.Tensor:
    """float32 angles ``positions x inv_freq`` with the legacy arithmetic (positions divided for linear)."""
    inv = legacy_inv_freq_hf(spec, cached_len).to(positions.device)
    t = positions.float()
    if isinstance(spec.scaling, Linear):
        if not divides_positions():
            return t[..., None] * (inv / spec.scaling.factor)
        t = t / spec.scaling.factor  # those releases scaled positions, not frequencies
    return t[..., None] * inv


def legacy_tables_hf(spec: RopeSpec, n: int, cached_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact float32 cos/sin of positions ``0..n-1`` with the pre-4.45 arithmetic."""
    freqs = legacy_angles_hf(spec, torch.arange(n), cached_len)
    return freqs.cos(), freqs.sin()
