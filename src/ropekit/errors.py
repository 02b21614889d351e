"""ropekit's one family of errors.

Every message names the offending field (or tensor) and its value, so a user can fix the input
without reading a traceback from deep inside torch.  All of them derive from ``ValueError`` so code
that already guards against bad values keeps working.
"""

from __future__ import annotations

__all__ = [
    "RopeError",
    "RopeSpecError",
    "RopeConfigError",
    "RopeShapeError",
    "RopePositionError",
    "RopeArgumentError",
    "RopeCheckpointError",
    "MissingDependencyError",
    "RopeConfigWarning",
]


class RopeError(ValueError):
    """Base class of every error ropekit raises on bad input."""


class RopeSpecError(RopeError):
    """A RopeSpec field (or scaling parameter) has an invalid value."""


class RopeConfigError(RopeSpecError):
    """A model config (transformers, Meta, LitGPT, ...) cannot be read as a RoPE spec."""


class RopeConfigWarning(UserWarning):
    """A config reads, but not as its author probably meant (keys a transformers release ignores)."""


class RopeShapeError(RopeError):
    """Tensors passed to a rotation have incompatible shapes, dtypes or devices."""


class RopeArgumentError(RopeError):
    """An argument of a public function has an invalid value (not a shape, position or spec field)."""


class RopePositionError(RopeError):
    """Positions are out of range (negative, beyond the table, or beyond exact integer range)."""


class RopeCheckpointError(RopeError):
    """A checkpoint is malformed, incomplete, or does not match the model it claims to be."""


class MissingDependencyError(RopeError, ImportError):
    """An optional dependency (transformers, safetensors, triton, matplotlib) is not installed."""


def require(module: str, extra: str):
    """Import an optional dependency, or raise an error that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only where the extra is missing
        raise MissingDependencyError(
            f"{module} is required for this feature but is not installed: pip install 'ropekit[{extra}]'"
        ) from exc
