"""Rotation backends behind the one dispatcher in ``ropekit.apply``.

Every backend implements the contract documented in ``kernels.reference``.
"""

from __future__ import annotations

from .reference import compute_dtype, rotate_reference

__all__ = ["rotate_reference", "compute_dtype"]
