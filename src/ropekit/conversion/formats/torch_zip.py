"""The layout of a ``torch.save`` file (zip + pickle) read without torch, without running code
from it, and checked record by record against the rules ``torch.load`` applies.

``torch.save`` writes a zip: ``data.pkl`` names each tensor's storage, dtype, offset, shape and
stride (read by ``pth_pickle``), each storage is a record ``data/KEY``, ``version`` says the
format generation and ``byteorder`` the byte order.  Everything torch would refuse is refused here
with one RopeCheckpointError naming the file and the record: a missing ``version`` or one torch
does not read, a missing storage record, a record whose size is not what the pickle says
(``DoubleStorage`` over float32 bytes), a negative storage offset or stride, a view reaching past
its storage.  What torch reads but ropekit does not convert is refused too, with its reason
(big-endian data, the legacy non-zip format, a dtype ropekit does not store).  Payloads are found
where their local headers put them (a re-zipped file has no 64-byte padding), and DEFLATE
records, which torch also reads, are read by decompressing them.

>>> import os, tempfile, torch
>>> p = os.path.join(tempfile.mkdtemp(), "sd.pth")
>>> torch.save({"w": torch.arange(6.0).view(2, 3)}, p)
>>> r = read_layout(p)["w"]
>>> r.dtype_name, r.shape, r.is_contiguous(), r.end - r.start
('F32', (2, 3), True, 24)
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass

from ...errors import RopeCheckpointError
from .dtypes import SIZES, torch_dtype
from .pth_pickle import PickleRefused, TensorRef, load_state_dict_pickle

__all__ = ["TensorRecord", "read_layout", "MAX_VERSION"]

#: the newest ``version`` record torch 2.13 reads (it refuses 0 and anything above 10)
MAX_VERSION = 10
#: a data.pkl larger than this is not a state dict's (each tensor takes ~150 bytes)
_MAX_PICKLE = 1 << 30


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a torch.save file: what a meta-device load would say, plus its bytes' place."""

    dtype_name: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    key: str  # storage key: tensors sharing a storage share it
    offset: int  # storage offset, in elements
    data_start: int | None  # absolute file offset of the storage's bytes; None: a DEFLATE record
    storage_bytes: int
    record: str = ""  # the zip entry holding the storage

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


def _open_zip(path: str, size: int) -> zipfile.ZipFile:
    with open(path, "rb") as f:
        magic = f.read(4)
    if size == 0:
        raise ValueError("the file is empty")
    if (
        magic[:1] == b"\x80"
    ):  # a pickle protocol opcode: torch.save before 1.6 (or _use_new_zipfile_serialization=False)
        raise ValueError(
            "it is in the legacy (non-zip) torch.save format, which ropekit does not read; "
            "load it with torch.load and save it again with torch.save"
        )
    if magic != b"PK\x03\x04":
        raise ValueError("it is not a zip file (a torch.save file is one)")
    return zipfile.ZipFile(path)


def _archive(z: zipfile.ZipFile) -> str:
    """The archive folder (``name/``) and checks on its ``version`` and ``byteorder`` records."""
    pkl = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise ValueError(f"it has {len(pkl)} data.pkl records (a torch.save file has one)")
    prefix = pkl[0][: -len("data.pkl")]
    names = set(z.namelist())
    version = next((prefix + v for v in (".data/version", "version") if prefix + v in names), None)
    if version is None:
        raise ValueError("it has no version record (torch.load refuses it)")
    text = z.read(version).strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_VERSION:
        raise ValueError(f"its version record says {text[:20]!r}; torch reads versions 1 to {MAX_VERSION}")
    if prefix + "byteorder" in names:
        order = z.read(prefix + "byteorder").strip()
        if order != b"little":
            raise ValueError(f"its byteorder record says {order[:20]!r}; ropekit reads little-endian files only")
    return prefix


def _check_records(f, z: zipfile.ZipFile, size: int) -> None:
    """Every record's local header where the central directory says, under the same name and
    method, its bytes before the central directory; and the small records torch parses, parsed
    (torch refuses the whole file when any of these is broken, whatever the tensors say)."""
    for info in z.infolist():
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            raise ValueError(f"record {info.filename[:80]} has no local header at byte {info.header_offset}")
        method, n, e = struct.unpack("<H", head[8:10])[0], *struct.unpack("<HH", head[26:30])
        name = f.read(n)
        if method != info.compress_type or name.decode("utf-8", "replace") != info.filename:
            raise ValueError(f"record {info.filename[:80]}: its local header disagrees with the central directory")
        if info.header_offset + 30 + n + e + info.compress_size > z.start_dir:
            raise ValueError(f"record {info.filename[:80]} runs into the central directory")
    prefix = z.namelist()[0].split("/", 1)[0] + "/"
    for rel in (".format_version", ".storage_alignment"):
        if prefix + rel in z.namelist() and not z.read(prefix + rel).strip().isdigit():
            raise ValueError(f"its {rel} record is not a number")
    if prefix + ".data/serialization_id" in z.namelist():
        z.read(prefix + ".data/serialization_id").decode("utf-8")  # UnicodeDecodeError is a ValueError


def _payload_start(f, info: zipfile.ZipInfo, size: int) -> int:
    """Where a STORED record's bytes begin: after its local header, whatever padding it has."""
    f.seek(info.header_offset)
    head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise ValueError(f"record {info.filename} has no local header at byte {info.header_offset}")
    n, e = struct.unpack("<HH", head[26:30])
    start = info.header_offset + 30 + n + e
    if info.compress_size != info.file_size or start + info.file_size > size:
        raise ValueError(f"record {info.filename} ({info.file_size} bytes at {start}) runs past the end of the file")
    return start


def _check_view(name: str, ref: TensorRef) -> None:
    """torch's rules for a tensor over its storage (``set_`` / ``as_strided``)."""
    if ref.offset < 0:
        raise ValueError(f"tensor {name!r} has storage offset {ref.offset}")
    if any(s < 0 for s in ref.shape) or any(s < 0 for s in ref.stride):
        raise ValueError(f"tensor {name!r} has shape {list(ref.shape)} stride {list(ref.stride)} (negative)")
    if (
        math.prod(ref.shape)
        and ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride)) >= ref.storage_numel
    ):
        raise ValueError(
            f"tensor {name!r} {list(ref.shape)} at offset {ref.offset} stride {list(ref.stride)} reaches past "
            f"its storage of {ref.storage_numel} elements"
        )


def _records(path: str, size: int) -> dict[str, TensorRecord]:
    with _open_zip(path, size) as z:
        prefix = _archive(z)
        with open(path, "rb") as f:
            _check_records(f, z, size)
        pkl = z.getinfo(prefix + "data.pkl")
        if pkl.file_size > _MAX_PICKLE:
            raise ValueError(f"its data.pkl is {pkl.file_size} bytes")
        refs = load_state_dict_pickle(z.read(pkl))
        storages: dict[str, tuple] = {}
        out = {}
        with open(path, "rb") as f:
            for name, ref in refs.items():
                want = (ref.dtype_name, ref.storage_numel)
                if ref.key not in storages:
                    record = prefix + "data/" + ref.key
                    try:
                        info = z.getinfo(record)
                    except KeyError:
                        raise ValueError(f"tensor {name!r}: storage record data/{ref.key} is missing") from None
                    nbytes = ref.storage_numel * SIZES[ref.dtype_name]
                    if info.file_size != nbytes:
                        raise ValueError(
                            f"tensor {name!r}: record data/{ref.key} holds {info.file_size} bytes but its "
                            f"{ref.dtype_name} storage of {ref.storage_numel} elements needs {nbytes}"
                        )
                    if info.compress_type == zipfile.ZIP_STORED:
                        start = _payload_start(f, info, size)
                    elif info.compress_type == zipfile.ZIP_DEFLATED:
                        start = None
                    else:
                        raise ValueError(f"record data/{ref.key} uses compression method {info.compress_type}")
                    storages[ref.key] = (want, start, nbytes, record)
                elif storages[ref.key][0] != want:
                    raise ValueError(f"tensor {name!r}: storage data/{ref.key} is used with two dtypes or sizes")
                _check_view(name, ref)
                _, start, nbytes, record = storages[ref.key]
                out[name] = TensorRecord(
                    ref.dtype_name, ref.shape, ref.stride, ref.key, ref.offset, start, nbytes, record
                )
    return out


def read_layout(path) -> dict[str, TensorRecord]:
    """{name: TensorRecord} of a torch.save file holding a flat dict of tensors; anything else
    (or anything torch would refuse) is one RopeCheckpointError that says why."""
    path = os.fspath(path)
    try:
        return _records(path, os.path.getsize(path))
    except (PickleRefused, ValueError) as exc:  # bounded: names in the file can be of any length
        raise RopeCheckpointError(
            f"{path} is not a weights-only PyTorch state dict ropekit reads: {str(exc)[:300]}"
        ) from None
    except _ZIP_DAMAGE as exc:
        why = f"{type(exc).__name__}: {str(exc)[:160]}"
        raise RopeCheckpointError(
            f"{path} is not a weights-only PyTorch state dict ropekit reads (the zip is damaged: {why})"
        ) from None


#: what zipfile raises on hostile zips: bad directories, encrypted or unknown records, bad CRCs,
#: broken DEFLATE streams, sizes past the file
_ZIP_DAMAGE = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    RuntimeError,
    EOFError,
    OSError,
    struct.error,
    OverflowError,
    zlib.error,
)
