"""arguments: the checks every doctor entry point makes on its parameters, before any call to fn.

Each check raises one ropekit error naming the parameter and its value (the CLI maps parameter
names to its flags), and returns the value in the form the caller uses.

>>> check_head_dim(128)
128
>>> check_tolerance(-1.0)
Traceback (most recent call last):
...
ropekit.errors.RopeArgumentError: tolerance_ulps=-1.0 must be a finite number >= 0
"""

from __future__ import annotations

import math

import torch

from ..errors import RopeArgumentError, RopeShapeError

__all__ = [
    "MAX_HEAD_DIM",
    "PROBE_DTYPES",
    "check_head_dim",
    "check_dtype",
    "check_max_position",
    "check_seed",
    "check_tolerance",
    "check_n_heads",
]

#: the probe holds head_dim**2 values per probed position (one basis vector per dim): above this
#: it would need gigabytes, and no published model has heads this wide
MAX_HEAD_DIM = 2048
#: dtypes a probe tensor can be built in (1.0 and small integers exact, a finfo to reason with)
PROBE_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_head_dim(head_dim, name: str = "head_dim") -> int:
    """An integer in [2, MAX_HEAD_DIM]."""
    if not _is_int(head_dim) or not 2 <= head_dim <= MAX_HEAD_DIM:
        raise RopeShapeError(f"{name}={head_dim!r} must be an integer from 2 to {MAX_HEAD_DIM}")
    return head_dim


def check_dtype(dtype, name: str = "dtype") -> torch.dtype:
    if dtype not in PROBE_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in PROBE_DTYPES)
        raise RopeArgumentError(f"{name}={dtype!r} must be one of the torch dtypes {names}")
    return dtype


def check_max_position(max_position, lowest: int, name: str = "max_position") -> int:
    if not _is_int(max_position) or not lowest <= max_position <= 2**31 - 1:
        raise RopeArgumentError(f"{name}={max_position!r} must be an integer from {lowest} to 2**31 - 1")
    return max_position


def check_seed(seed, name: str = "seed") -> int:
    if not _is_int(seed) or not 0 <= seed < 2**63:
        raise RopeArgumentError(f"{name}={seed!r} must be an integer from 0 to 2**63 - 1")
    return seed


def check_tolerance(tolerance, name: str = "tolerance_ulps") -> float:
    """A finite tolerance >= 0: ``inf`` would call any function (one returning zeros) equivalent."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance):
        raise RopeArgumentError(f"{name}={tolerance!r} must be a finite number >= 0")
    if tolerance < 0:
        raise RopeArgumentError(f"{name}={tolerance!r} must be a finite number >= 0")
    return float(tolerance)


def check_n_heads(n_heads, name: str = "n_heads") -> int | None:
    if n_heads is not None and (not _is_int(n_heads) or n_heads < 1):
        raise RopeArgumentError(f"{name}={n_heads!r} must be a positive integer or None")
    return n_heads
