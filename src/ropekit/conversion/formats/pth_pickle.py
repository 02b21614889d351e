"""The ``data.pkl`` of a ``torch.save`` state dict, read and written without torch and without
running code from the file.

Reading: an unpickler that knows only what a state dict of plain tensors needs -- torch's tensor
rebuild functions (``_rebuild_tensor_v2``, ``_rebuild_tensor_v3``, ``_rebuild_parameter``), typed
and untyped storage classes, dtypes, ``OrderedDict`` -- each replaced by a stand-in that records
what torch would build, and refuses everything else, as ``torch.load(weights_only=True)`` does.

Writing: the pickle ``torch.save`` writes for a dict of contiguous tensors, opcode by opcode
(protocol 2): typed storages with ``_rebuild_tensor_v2`` where torch has a storage class for the
dtype, ``_rebuild_tensor_v3`` over an ``UntypedStorage`` (sized in bytes) where it does not.

>>> p = state_dict_pickle([("w", "BF16", (2, 3)), ("f8", "F8_E4M3", (4,))])
>>> refs = load_state_dict_pickle(p)
>>> refs["w"].dtype_name, refs["w"].shape, refs["w"].stride, refs["f8"].dtype_name, refs["f8"].storage_numel
('BF16', (2, 3), (3, 1), 'F8_E4M3', 4)
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
from dataclasses import dataclass

from .dtypes import SIZES, from_storage_class, from_torch_name, storage_class, torch_name

__all__ = ["TensorRef", "load_state_dict_pickle", "state_dict_pickle", "PickleRefused"]


class PickleRefused(ValueError):
    """The pickle holds something that is not a plain state dict (the message says what)."""


@dataclass(frozen=True)
class TensorRef:
    """One tensor as the pickle describes it: storage key and size, dtype, view geometry."""

    dtype_name: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    key: str
    offset: int  # storage offset, in elements
    storage_numel: int  # elements of the storage


@dataclass(frozen=True)
class _StorageType:
    dtype_name: str | None  # None: torch.storage.UntypedStorage (sized in bytes, dtype given later)


@dataclass(frozen=True)
class _DType:
    dtype_name: str


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype_name: str | None
    numel: int  # elements of a typed storage, bytes of an untyped one


def _int(value, what: str) -> int:
    if type(value) is not int:  # bool is no size
        raise PickleRefused(f"{what} {str(value)[:40]!r} is not an integer")
    return value


def _ints(values, what: str) -> tuple[int, ...]:
    if not isinstance(values, tuple | list):
        raise PickleRefused(f"{what} {str(values)[:40]!r} is not a tuple")
    return tuple(_int(v, what) for v in values)


def _ref(storage, dtype_name: str, numel: int, offset, size, stride) -> TensorRef:
    shape, stride = _ints(size, "shape"), _ints(stride, "stride")
    if len(shape) != len(stride):
        raise PickleRefused(f"shape {list(shape)} and stride {list(stride)} differ in length")
    return TensorRef(dtype_name, shape, stride, storage.key, _int(offset, "storage offset"), numel)


def _rebuild_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage) or storage.dtype_name is None:
        raise PickleRefused("_rebuild_tensor_v2 without a typed storage")
    return _ref(storage, storage.dtype_name, storage.numel, offset, size, stride)


def _rebuild_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(storage, _Storage) or storage.dtype_name is not None or not isinstance(dtype, _DType):
        raise PickleRefused("_rebuild_tensor_v3 without an untyped storage and a dtype")
    item = SIZES[dtype.dtype_name]
    if storage.numel % item:
        raise PickleRefused(f"storage of {storage.numel} bytes is no whole number of {dtype.dtype_name} elements")
    return _ref(storage, dtype.dtype_name, storage.numel // item, offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, TensorRef):
        raise PickleRefused("_rebuild_parameter of something other than a tensor")
    return data


_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.storage", "UntypedStorage"): _StorageType(None),
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[(module, name)]
        if module == "torch" and from_storage_class(name):
            return _StorageType(from_storage_class(name))
        if module == "torch" and from_torch_name(name):
            return _DType(from_torch_name(name))
        raise PickleRefused(f"the pickle asks for {module[:60]}.{name[:60]}, which a plain state dict does not need")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise PickleRefused(f"persistent id {str(pid)[:80]} is not a storage")
        _, kind, key, location, numel = pid
        if not isinstance(key, str) or not isinstance(location, str) or _int(numel, "storage size") < 0:
            raise PickleRefused(f"storage record {str(pid)[:80]} is malformed")
        return _Storage(key, kind.dtype_name, numel)


def load_state_dict_pickle(data: bytes) -> dict[str, TensorRef]:
    """{name: TensorRef} of a pickled flat dict of tensors; PickleRefused says why when it is not
    one (any failure of the pickle machinery on hostile bytes becomes that refusal)."""
    try:
        obj = _Unpickler(io.BytesIO(data)).load()
    except PickleRefused:
        raise
    except Exception as exc:  # hostile bytes: whatever pickle raises is a malformed file
        raise PickleRefused(f"data.pkl is malformed ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(obj, dict):
        raise PickleRefused(f"data.pkl holds a {type(obj).__name__}, not a dict of tensors")
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, TensorRef):
            raise PickleRefused(f"entry {str(name)[:80]!r} is a {type(value).__name__}, not a tensor")
    return dict(obj)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def _pickle_int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _pickle_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _pickle_tuple(items) -> bytes:
    return b"(" + b"".join(_pickle_int(i) for i in items) + b"t" if items else b")"


def contiguous_stride(shape) -> tuple[int, ...]:
    """Row-major strides of ``shape``, in elements."""
    stride, acc = [], 1
    for size in reversed(shape):
        stride.append(acc)
        acc *= size
    return tuple(reversed(stride))


def _tensor_pickle(key: str, dtype: str, shape: tuple[int, ...]) -> bytes:
    """The REDUCE that rebuilds one contiguous tensor in its own storage ``key``."""
    typed = storage_class(dtype)
    numel = math.prod(shape)
    if typed:  # torch.<X>Storage, sized in elements
        rebuild, cls, size = b"ctorch._utils\n_rebuild_tensor_v2\n(", b"ctorch\n" + typed.encode() + b"\n", numel
    else:  # torch.storage.UntypedStorage, sized in bytes; the dtype follows the hooks
        rebuild, cls, size = (
            b"ctorch._utils\n_rebuild_tensor_v3\n(",
            b"ctorch.storage\nUntypedStorage\n",
            numel * SIZES[dtype],
        )
    storage = b"(" + _pickle_str("storage") + cls + _pickle_str(key) + _pickle_str("cpu") + _pickle_int(size) + b"tQ"
    args = storage + _pickle_int(0) + _pickle_tuple(shape) + _pickle_tuple(contiguous_stride(shape))
    args += b"\x89ccollections\nOrderedDict\n)R"  # requires_grad=False, OrderedDict() (backward hooks)
    if not typed:
        args += b"ctorch\n" + torch_name(dtype).encode() + b"\n"
    return rebuild + args + b"tR"


def state_dict_pickle(entries) -> bytes:
    """The ``data.pkl`` that ``torch.save`` writes for a dict {name: contiguous tensor}, tensor
    ``i`` of ``entries`` [(name, dtype name, shape)] in its own storage ``str(i)``."""
    out = [b"\x80\x02}("]  # PROTO 2, EMPTY_DICT, MARK
    for i, (name, dtype, shape) in enumerate(entries):
        if i and i % 1000 == 0:  # SETITEMS in batches, as pickle does
            out.append(b"u(")
        out.append(_pickle_str(name) + _tensor_pickle(str(i), dtype, tuple(int(s) for s in shape)))
    out.append(b"u.")  # SETITEMS, STOP
    return b"".join(out)
