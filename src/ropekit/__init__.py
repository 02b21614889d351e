"""ropekit: one exact, fast, convention-aware rotary position embedding (RoPE) for PyTorch.

``__all__`` below is the whole public API.  Everything but the errors is imported on first use, so
``import ropekit`` stays cheap (no torch) and optional dependencies stay optional.

>>> import ropekit as rk
>>> spec = rk.RopeSpec(head_dim=64, base=10000.0, layout="half")
>>> cos, sin = rk.cos_sin(spec, 16)
>>> tuple(cos.shape)
(16, 32)
"""

from __future__ import annotations

import importlib as _importlib

from .errors import (
    MissingDependencyError,
    RopeArgumentError,
    RopeCheckpointError,
    RopeConfigError,
    RopeConfigWarning,
    RopeError,
    RopePositionError,
    RopeShapeError,
    RopeSpecError,
    RopeSpecTypeError,
    RopeTypeError,
)

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use, see __getattr__)
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
    # checkpoints: q/k rows, whole conversions
    "permute_qk": "ropekit.permute",
    "convert": "ropekit.conversion.driver",
    "ConvertReport": "ropekit.conversion.driver",
    # the transformers boundary
    "RotaryEmbedding": "ropekit.transformers.rotary_embedding",
    # the doctor
    "fingerprint": "ropekit.doctor.probe",
    "Fingerprint": "ropekit.doctor.probe",
    "compare": "ropekit.doctor.comparison",
    "Comparison": "ropekit.doctor.comparison",
    "diff_models": "ropekit.doctor.layerdiff",
    "LayerDiff": "ropekit.doctor.layerdiff",
    "infer_layout": "ropekit.doctor.infer_layout",
}
# subpackages reachable as attributes (``rk.hf.patch``); ``hf`` and ``zoo`` are the first names of
# ``ropekit.transformers.patch`` and ``ropekit.doctor.zoo``
_SUBMODULES = {"hf", "zoo", "kernels", "dialects", "plot", "transformers", "conversion", "doctor"}

__all__ = [
    "Comparison",
    "ConvertReport",
    "Dynamic",
    "Fingerprint",
    "LayerDiff",
    "Linear",
    "Llama3",
    "LongRope",
    "MissingDependencyError",
    "Proportional",
    "RopeArgumentError",
    "RopeCheckpointError",
    "RopeConfigError",
    "RopeConfigWarning",
    "RopeError",
    "RopePositionError",
    "RopeShapeError",
    "RopeSpec",
    "RopeSpecError",
    "RopeSpecTypeError",
    "RopeTypeError",
    "RotaryEmbedding",
    "Yarn",
    "apply_rope",
    "apply_rope_qk",
    "apply_rope_qkv",
    "compare",
    "convert",
    "cos_sin",
    "diff_models",
    "fingerprint",
    "from_config",
    "infer_layout",
    "inv_freq",
    "permute_qk",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cache: __getattr__ runs once per name
        return value
    if name in _SUBMODULES:
        return _importlib.import_module(f"ropekit.{name}")
    raise AttributeError(f"module 'ropekit' has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | _SUBMODULES | {"__version__"})
