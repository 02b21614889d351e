"""ropekit's one family of errors.

Every message names the offending parameter (or field, or tensor) and its value, so a user can fix
the input without reading a traceback from deep inside torch.  One class per kind of mistake:

==========================  ================================================  ==================
class                       raised for                                        also a
==========================  ================================================  ==================
``RopeSpecError``           a RopeSpec field or scaling parameter             ``ValueError``
``RopeConfigError``         a model config that cannot be read as a spec      ``ValueError``
``RopeShapeError``          tensors whose shapes, dtypes or devices clash     ``ValueError``
``RopePositionError``       positions out of range or not integers            ``ValueError``
``RopeArgumentError``       any other argument value (format=, backend=, ...) ``ValueError``
``RopeCheckpointError``     a malformed or mismatched checkpoint              ``ValueError``
``RopeTypeError``           an argument of the wrong type                     ``TypeError``
``RopeSpecTypeError``       a spec/config field of the wrong type             ``TypeError``
``MissingDependencyError``  an optional dependency that is not installed      ``ImportError``
==========================  ================================================  ==================

``RopeError`` itself derives from ``Exception`` only, so that a missing dependency is not a
``ValueError``; every bad-value kind keeps ``ValueError`` as a second base so code that already
guards with ``except ValueError`` keeps working, and wrong types are also ``TypeError``.

>>> from ropekit.errors import RopeTypeError, RopeArgumentError
>>> issubclass(RopeTypeError, RopeArgumentError) and issubclass(RopeTypeError, TypeError)
True
>>> short_repr(list(range(1000)))[-20:]
'.. (4890 characters)'
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
    "RopeTypeError",
    "RopeSpecTypeError",
    "MissingDependencyError",
    "require",
    "short_repr",
    "RopeConfigWarning",
]


class RopeError(Exception):
    """Base class of every error ropekit raises on bad input."""


class RopeSpecError(RopeError, ValueError):
    """A RopeSpec field (or scaling parameter) has an invalid value."""


class RopeConfigError(RopeSpecError):
    """A model config (transformers, Meta, LitGPT, ...) cannot be read as a RoPE spec."""


class RopeConfigWarning(UserWarning):
    """A config reads, but not as its author probably meant (keys a transformers release ignores)."""


class RopeShapeError(RopeError, ValueError):
    """Tensors passed to a rotation have incompatible shapes, dtypes or devices."""


class RopeArgumentError(RopeError, ValueError):
    """An argument of a public function has an invalid value (not a shape, position or spec field)."""


class RopePositionError(RopeError, ValueError):
    """Positions are out of range (negative, beyond the table, or beyond exact integer range)."""


class RopeCheckpointError(RopeError, ValueError):
    """A checkpoint is malformed, incomplete, or does not match the model it claims to be."""


class RopeTypeError(RopeArgumentError, TypeError):
    """An argument of a public function has the wrong type (a str where a bool is needed, ...)."""


class RopeSpecTypeError(RopeSpecError, TypeError):
    """A RopeSpec field (or scaling parameter) has the wrong type."""


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


#: longest repr of a value that goes into a message (a tensor's repr can run to megabytes)
REPR_LIMIT = 80


def short_repr(value, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` bounded to about ``limit`` characters; tensors by shape and dtype only."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None and not isinstance(value, (str, bytes)):
        try:
            dims = ", ".join(str(int(n)) for n in shape)
        except (TypeError, ValueError):
            dims = "?"
        return f"<{type(value).__name__} [{dims}] {dtype}>"
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not replace the real error
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}... ({len(text)} characters)"
