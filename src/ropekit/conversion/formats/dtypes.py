"""The one table of element types ropekit stores: safetensors' name, bytes per element, torch's
name, and how ``torch.save`` pickles a storage of it.  Everything else (raw.py, the safetensors and
``.pth`` readers and writers) looks dtypes up here, without importing torch.

``torch.save`` pickles the dtypes that have a typed storage class (``torch.FloatStorage``) with
``_rebuild_tensor_v2``; the newer ones (float8, uint16/32/64) have no such class and go through
``_rebuild_tensor_v3`` with a ``torch.storage.UntypedStorage`` (sized in bytes) and the dtype itself
(read off ``pickletools.dis`` of torch 2.13's output; tests compare against torch.save).

>>> dtype_name("BF16"), itemsize("BF16"), nbytes("F32", (3, 4)), torch_name("F8_E4M3")
('BF16', 2, 48, 'float8_e4m3fn')
>>> storage_class("F32"), storage_class("U16")
('FloatStorage', None)
"""

from __future__ import annotations

import math

from ...errors import RopeCheckpointError

__all__ = [
    "SIZES",
    "dtype_name",
    "itemsize",
    "nbytes",
    "torch_name",
    "torch_dtype",
    "storage_class",
    "from_storage_class",
    "from_torch_name",
]

#: safetensors name -> (bytes per element, torch's name, torch's typed storage class or None)
_TABLE = {
    "F64": (8, "float64", "DoubleStorage"),
    "F32": (4, "float32", "FloatStorage"),
    "F16": (2, "float16", "HalfStorage"),
    "BF16": (2, "bfloat16", "BFloat16Storage"),
    "I64": (8, "int64", "LongStorage"),
    "I32": (4, "int32", "IntStorage"),
    "I16": (2, "int16", "ShortStorage"),
    "I8": (1, "int8", "CharStorage"),
    "U8": (1, "uint8", "ByteStorage"),
    "BOOL": (1, "bool", "BoolStorage"),
    "C64": (8, "complex64", "ComplexFloatStorage"),
    "F8_E4M3": (1, "float8_e4m3fn", None),
    "F8_E5M2": (1, "float8_e5m2", None),
    "U16": (2, "uint16", None),
    "U32": (4, "uint32", None),
    "U64": (8, "uint64", None),
}
SIZES = {k: v[0] for k, v in _TABLE.items()}
_BY_TORCH_NAME = {v[1]: k for k, v in _TABLE.items()}
_BY_STORAGE = {v[2]: k for k, v in _TABLE.items() if v[2]}


def dtype_name(dtype) -> str:
    """The safetensors name of a dtype given by that name or as a torch.dtype."""
    if isinstance(dtype, str):
        if dtype not in _TABLE:
            raise KeyError(dtype)
        return dtype
    name = str(dtype).removeprefix("torch.")  # str(torch.bfloat16) == "torch.bfloat16": no torch import needed
    if name not in _BY_TORCH_NAME:
        raise RopeCheckpointError(f"dtype {name} cannot be stored in safetensors")
    return _BY_TORCH_NAME[name]


def itemsize(dtype) -> int:
    return _TABLE[dtype_name(dtype)][0]


def nbytes(dtype, shape) -> int:
    return math.prod(shape) * itemsize(dtype)


def torch_name(dtype) -> str:
    """``"bfloat16"`` for ``"BF16"`` (what messages print)."""
    return _TABLE[dtype_name(dtype)][1]


def torch_dtype(dtype):
    """The torch.dtype (imports torch: only for paths that need tensors anyway)."""
    import torch

    return getattr(torch, torch_name(dtype))


def storage_class(dtype) -> str | None:
    """torch's typed storage class for the dtype, or None where torch.save uses an untyped one."""
    return _TABLE[dtype_name(dtype)][2]


def from_storage_class(name: str) -> str | None:
    """The safetensors name for a typed storage class name, None for one ropekit does not store."""
    return _BY_STORAGE.get(name)


def from_torch_name(name: str) -> str | None:
    """The safetensors name for torch's dtype name (``"bfloat16"``), None for one ropekit does not store."""
    return _BY_TORCH_NAME.get(name)
