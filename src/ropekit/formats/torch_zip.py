"""The layout of a ``torch.save`` file (zip + pickle) read without torch, and without running
any code from it.

``torch.save`` writes a zip whose ``data.pkl`` names each tensor's storage, dtype, offset, shape
and stride, and stores each storage uncompressed as ``data/KEY``.  To know where every tensor's
bytes lie we only need that pickle, read by an unpickler that knows exactly four globals (the
tensor rebuild function, typed storage classes, ``OrderedDict``) and refuses everything else,
like ``torch.load(weights_only=True)`` does.  Anything unusual (a legacy non-zip file, big-endian
data, another global) returns None and the caller asks torch, which also gives the right error.

>>> import os, tempfile, torch
>>> p = os.path.join(tempfile.mkdtemp(), "sd.pth")
>>> torch.save({"w": torch.arange(6.0).view(2, 3)}, p)
>>> r = read_layout(p)["w"]
>>> r.dtype_name, r.shape, r.is_contiguous(), r.end - r.start
('F32', (2, 3), True, 24)
"""

from __future__ import annotations

import collections
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass

from .raw import SIZES, torch_dtype

__all__ = ["TensorRecord", "read_layout"]

#: torch's typed storage class names -> safetensors dtype names
_STORAGES = {
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8",
    "BoolStorage": "BOOL", "Float8_e4m3fnStorage": "F8_E4M3", "Float8_e5m2Storage": "F8_E5M2",
    "UInt16Storage": "U16", "UInt32Storage": "U32", "UInt64Storage": "U64",
}  # fmt: skip


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a torch.save file: what a meta-device load would say, plus its bytes' place."""

    dtype_name: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    key: str  # storage key: tensors sharing a storage share it
    offset: int  # storage offset, in elements
    data_start: int  # absolute file offset of the storage's bytes
    storage_bytes: int

    @property
    def dtype(self):
        """The torch.dtype (imports torch)."""
        return torch_dtype(self.dtype_name)

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in reversed(list(zip(self.shape, self.stride))):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    @property
    def start(self) -> int:
        return self.data_start + self.offset * SIZES[self.dtype_name]

    @property
    def end(self) -> int:
        return self.start + self.numel() * SIZES[self.dtype_name]


class _Refused(Exception):
    pass


class _Storage:
    def __init__(self, dtype_name: str):
        self.dtype_name = dtype_name


def _rebuild(storage, offset, shape, stride, requires_grad=False, hooks=None, metadata=None):
    key, dtype_name = storage
    return ("tensor", dtype_name, tuple(shape), tuple(stride), key, offset)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGES:
            return _Storage(_STORAGES[name])
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise _Refused(f"persistent id {pid!r}")
        return (str(pid[2]), pid[1].dtype_name)


def read_layout(path) -> dict[str, TensorRecord] | None:
    """{name: TensorRecord} of a torch.save file holding a flat dict of tensors, or None when the
    file is anything else (the caller then uses torch.load, which explains what is wrong)."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                return None
            prefix = pkl[0][: -len("data.pkl")]
            names = set(z.namelist())
            if prefix + "byteorder" in names and z.read(prefix + "byteorder").strip() != b"little":
                return None
            obj = _Unpickler(z.open(pkl[0])).load()
            if not isinstance(obj, dict):
                return None
            starts: dict[str, tuple[int, int]] = {}
            out = {}
            with open(path, "rb") as f:
                for name, rec in obj.items():
                    if not (isinstance(name, str) and isinstance(rec, tuple) and rec[:1] == ("tensor",)):
                        return None
                    _, dtype_name, shape, stride, key, offset = rec
                    if key not in starts:
                        info = z.getinfo(prefix + "data/" + key)
                        if info.compress_type != zipfile.ZIP_STORED:
                            return None
                        f.seek(info.header_offset)
                        head = f.read(30)
                        if head[:4] != b"PK\x03\x04":
                            return None
                        n, e = struct.unpack("<HH", head[26:30])
                        starts[key] = (info.header_offset + 30 + n + e, info.file_size)
                    rec = TensorRecord(dtype_name, shape, stride, key, int(offset), *starts[key])
                    if rec.is_contiguous() and rec.end > rec.data_start + rec.storage_bytes:
                        return None  # the tensor reaches past its storage: let torch say so
                    out[name] = rec
            return out
    except (_Refused, zipfile.BadZipFile, KeyError, ValueError, TypeError, EOFError, pickle.UnpicklingError, struct.error):
        return None
