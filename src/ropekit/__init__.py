"""ropekit: one exact, fast, convention-aware rotary position embedding (RoPE) for PyTorch.

The names below are the whole public API; submodules are imported on first use so that
``import ropekit`` stays cheap and optional dependencies stay optional.

>>> import ropekit as rk
>>> spec = rk.RopeSpec(head_dim=64, base=10000.0, layout="half")
>>> cos, sin = rk.cos_sin(spec, 16)
>>> tuple(cos.shape)
(16, 32)
"""

from __future__ import annotations

import importlib

from .errors import (
    MissingDependencyError,
    RopeCheckpointError,
    RopeConfigError,
    RopeError,
    RopePositionError,
    RopeShapeError,
    RopeSpecError,
)

# public name -> module that defines it (imported lazily, see __getattr__)
_LAZY = {
    # the spec and its scaling variants
    "RopeSpec": "ropekit.spec",
    "Linear": "ropekit.spec",
    "Dynamic": "ropekit.spec",
    "Yarn": "ropekit.spec",
    "LongRope": "ropekit.spec",
    "Llama3": "ropekit.spec",
    "Proportional": "ropekit.spec",
    # config dialects -> spec
    "from_config": "ropekit.dialects",
    # spec -> frequencies -> tables
    "inv_freq": "ropekit.frequencies",
    "cos_sin": "ropekit.tables",
    # tables -> rotation
    "apply_rope": "ropekit.apply",
    "apply_rope_qk": "ropekit.apply",
    "apply_rope_qkv": "ropekit.apply",
    # the transformers-compatible module
    "RotaryEmbedding": "ropekit.module",
    # interop
    "permute_qk": "ropekit.permute",
    # doctor
    "fingerprint": "ropekit.probe",
    "compare": "ropekit.comparison",  # not ropekit.compare: a submodule of that name would shadow the function
    "diff_models": "ropekit.layerdiff",
}
_SUBMODULES = {"hf", "zoo", "kernels", "dialects", "convert", "plot"}

__all__ = sorted(
    [
        *_LAZY,
        "RopeError",
        "RopeSpecError",
        "RopeConfigError",
        "RopeShapeError",
        "RopePositionError",
        "RopeCheckpointError",
        "MissingDependencyError",
    ]
)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cache: __getattr__ runs once per name
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"ropekit.{name}")
    raise AttributeError(f"module 'ropekit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
