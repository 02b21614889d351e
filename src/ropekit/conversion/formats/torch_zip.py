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
import functools
import math
import pickle
import struct
import zipfile
from dataclasses import dataclass

from .raw import SIZES, torch_dtype

__all__ = ["TensorRecord", "read_layout", "state_dict_pickle", "plan_pth", "PthZipWriter"]

#: torch's typed storage class names -> safetensors dtype names
_STORAGES = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "Float8_e4m3fnStorage": "F8_E4M3",
    "Float8_e5m2Storage": "F8_E5M2",
    "UInt16Storage": "U16",
    "UInt32Storage": "U32",
    "UInt64Storage": "U64",
}


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
    except (
        _Refused,
        zipfile.BadZipFile,
        KeyError,
        ValueError,
        TypeError,
        EOFError,
        pickle.UnpicklingError,
        struct.error,
    ):
        return None


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------

#: safetensors dtype names -> torch's typed storage class names
_STORAGE_OF = {v: k for k, v in _STORAGES.items()}
#: zip fields are 32-bit; at or past this a value goes to a zip64 extra field (tests lower it)
_ZIP64_AT = 0xFFFFFFFF
#: payloads start on a page unless a source asks for another in-page offset (see PthZipWriter)
_PAGE = 4096
#: zip flag bit 11: names are UTF-8 (the archive folder is the file's name, as torch.save does)
_UTF8 = 0x800
#: the least alignment a payload gets: every dtype's element size, as safetensors guarantees
_MIN_ALIGN = 8


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


def _contiguous_stride(shape) -> tuple[int, ...]:
    stride, acc = [], 1
    for size in reversed(shape):
        stride.append(acc)
        acc *= size
    return tuple(reversed(stride))


def state_dict_pickle(entries) -> bytes:
    """The ``data.pkl`` that ``torch.save`` writes for a dict {name: contiguous tensor}, tensor
    ``i`` of ``entries`` [(name, dtype name, shape)] in its own storage ``str(i)``; written
    opcode by opcode (pickle protocol 2), so neither torch nor its classes are needed.

    >>> import io, pickletools
    >>> p = state_dict_pickle([("w", "BF16", (2, 3))])
    >>> read = _Unpickler(io.BytesIO(p)).load(); read["w"]
    ('tensor', 'BF16', (2, 3), (3, 1), '0', 0)
    """
    out = [b"\x80\x02}("]  # PROTO 2, EMPTY_DICT, MARK
    for i, (name, dtype, shape) in enumerate(entries):
        if i and i % 1000 == 0:  # SETITEMS in batches, as pickle does
            out.append(b"u(")
        shape = tuple(int(s) for s in shape)
        storage = b"(" + _pickle_str("storage") + b"ctorch\n" + _STORAGE_OF[dtype].encode() + b"\n"
        storage += _pickle_str(str(i)) + _pickle_str("cpu") + _pickle_int(math.prod(shape)) + b"tQ"  # TUPLE, BINPERSID
        args = storage + _pickle_int(0) + _pickle_tuple(shape) + _pickle_tuple(_contiguous_stride(shape))
        args += b"\x89ccollections\nOrderedDict\n)R"  # requires_grad=False, OrderedDict() (backward hooks)
        out.append(_pickle_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR")
    out.append(b"u.")  # SETITEMS, STOP
    return b"".join(out)


_CRC_CHUNK = 8 << 20  # read buffer for payload CRCs


@functools.cache
def crc32():
    """``zlib.crc32``, or the same function from zlib-ng when it is installed (the ``fast`` extra).

    Every byte of a written ``.pth`` is summed, on a second core while the kernel copies:
    CPython's zlib (1.2.13 here) sums 1.5 GB/s, zlib-ng (carry-less multiply) 9.8 GB/s.  With
    two idle cores either hides behind the copy; with the second core busy, hf -> meta measured
    0.39x cp with zlib and 0.66x with zlib-ng (benchmarks/convert.py, one contended run).  Same
    polynomial, same results: the test suite checks both against each other.  Both release the
    GIL on large buffers."""
    try:
        from zlib_ng.zlib_ng import crc32 as fast
    except ImportError:
        from zlib import crc32 as plain

        return plain
    return fast


def _local_header(name: bytes, size: int, crc: int, pad_to: int | None, at: int) -> bytes:
    """A zip local file header (STORED) for a ``size``-byte payload, with an extra field of
    padding so that the payload starts at an offset == ``pad_to`` mod a page (as torch pads its
    storages to 64 with a "FB" field)."""
    z64 = size >= _ZIP64_AT
    extra = struct.pack("<HHQQ", 1, 16, size, size) if z64 else b""
    if pad_to is not None:
        pad = (pad_to - (at + 30 + len(name) + len(extra))) % _PAGE
        if pad:
            pad = pad if pad >= 4 else pad + _PAGE
            extra += struct.pack("<HH", 0x4246, pad - 4) + b"Z" * (pad - 4)
    small = 0xFFFFFFFF if z64 else size
    return (
        struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 45 if z64 else 20, _UTF8, 0, 0, 0, crc, small, small, len(name), len(extra)
        )
        + name
        + extra
    )


def _central_entry(name: bytes, size: int, crc: int, at: int) -> bytes:
    z64 = [v for v in (size, size, at) if v >= _ZIP64_AT]  # the order the zip64 field lists them in
    extra = struct.pack("<HH", 1, 8 * len(z64)) + struct.pack(f"<{len(z64)}Q", *z64) if z64 else b""
    fields = [v if v < _ZIP64_AT else 0xFFFFFFFF for v in (size, at)]  # the real value is in the zip64 field
    return (
        struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            45,
            45 if z64 else 20,
            _UTF8,
            0,
            0,
            0,
            crc,
            fields[0],
            fields[0],
            len(name),
            len(extra),
            0,
            0,
            0,
            0,
            fields[1],
        )
        + name
        + extra
    )


def _end_records(count: int, cd_at: int, cd_size: int) -> bytes:
    if max(cd_at, cd_size) < _ZIP64_AT and count < 0xFFFF:
        return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, cd_size, cd_at, 0)
    eocd64_at = cd_at + cd_size
    out = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size, cd_at)
    out += struct.pack("<IIQI", 0x07064B50, 0, eocd64_at, 1)
    return out + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)


def plan_pth(entries, archive: str = "archive", align: dict | None = None, crcs: dict | None = None):
    """Lay out a torch.save zip holding ``entries`` [(name, dtype name, shape)], one storage per
    tensor.  Returns (head, tail, tail_at, offsets): ``head`` [(file offset, bytes)] is
    everything before and between the payloads (records, local headers); ``tail`` (the last
    records, the central directory) goes at ``tail_at``; ``offsets`` {name: payload offset}.  ``align`` {name: wanted
    payload offset mod 4096, a multiple of 8}; others start on a page.  ``crcs`` {name: CRC-32 of
    its payload}: the layout does not depend on them (fixed-size fields), so a writer plans first
    and fills them in once the bytes are written.

    >>> head, tail, tail_at, offsets = plan_pth([("w", "F32", (2, 3))], "x")
    >>> offsets["w"] % 4096, tail_at - offsets["w"]
    (0, 24)
    """
    import hashlib

    from .raw import nbytes

    align = align or {}
    pkl = state_dict_pickle(entries)
    # (record name, its bytes, or for a tensor payload (tensor name, nbytes, wanted offset mod a page))
    before = [("data.pkl", pkl), ("byteorder", b"little")]
    payloads = [(f"data/{i}", (n, nbytes(d, s), align.get(n, 0))) for i, (n, d, s) in enumerate(entries)]
    ident = str(int(hashlib.sha256(pkl).hexdigest(), 16))[:40]  # torch writes 40 decimal digits
    after = [("version", b"3\n"), (".data/serialization_id", ident.encode())]
    head, tail, central, offsets, at, tail_at = [], [], [], {}, 0, None
    for rel, what in before + payloads + after:
        name = f"{archive}/{rel}".encode()
        if isinstance(what, bytes):  # a small record, written now, with its CRC
            crc = crc32()(what)
            piece = _local_header(name, len(what), crc, None, at) + what
            central.append(_central_entry(name, len(what), crc, at))
            if rel == "version":
                tail_at = at  # everything from here on follows the last payload
            (tail if tail_at is not None else head).append(piece if tail_at is not None else (at, piece))
            at += len(piece)
        else:  # a payload: only its header now (its CRC, when known, from ``crcs``)
            tensor, size, pad_to = what
            crc = (crcs or {}).get(tensor, 0)
            local = _local_header(name, size, crc, pad_to, at)
            central.append(_central_entry(name, size, crc, at))
            head.append((at, local))
            offsets[tensor] = at + len(local)
            at += len(local) + size
    cd = b"".join(central)
    tail_bytes = b"".join(tail) + cd + _end_records(len(central), at, len(cd))
    return head, tail_bytes, tail_at, offsets


class FixedLayoutWriter:
    """What every writer of a file whose tensor byte ranges are fixed up front shares: subclasses
    set ``path``, ``offsets`` / ``sizes`` {name: payload offset / size} and open ``_f``; tensors
    then arrive in any order, as bytes or as kernel copies from a source file.  Same interface as
    ``safetensors_io.SafetensorsWriter``."""

    def _open(self, path, offsets: dict, sizes: dict, mode: str, file_size: int = 0) -> None:
        """``file_size``: the whole new file's size, reserved at once (``preallocate``)."""
        import os

        from .file_io import SourceFiles, preallocate

        self.path = os.fspath(path)
        self.offsets, self.sizes = offsets, sizes
        self.total_size = sum(sizes.values())
        self._f = open(self.path, mode, buffering=0)
        preallocate(self._f.fileno(), file_size, self.path)
        self.fallback: str | None = None  # as SafetensorsWriter.fallback
        self._sources = SourceFiles()

    def source_fd(self, path: str) -> int:
        """An open descriptor of source file ``path`` (kept open until close / abort)."""
        return self._sources.get(path).fileno()

    def _check(self, name: str, nbytes: int) -> int:
        if self.sizes[name] != nbytes:
            raise RuntimeError(f"tensor {name!r} has {nbytes} bytes, the file reserved {self.sizes[name]}")  # a bug
        return self.offsets[name]

    def write_tensor(self, name: str, t) -> None:
        from .file_io import tensor_bytes

        self.write_bytes(name, tensor_bytes(t))

    def write_bytes(self, name: str, data) -> memoryview:
        """Write the raw bytes of tensor ``name`` (a bytes-like object of exactly its size)."""
        data = memoryview(data).cast("B")
        _pwrite_all(self._f.fileno(), data, self._check(name, data.nbytes))
        return data

    def copy_range(self, name: str, src_path: str, start: int, end: int):
        """Copy source bytes [start, end) into tensor ``name``'s range (kernel copy where it can);
        returns the open source file."""
        from .file_io import copy_bytes

        offset = self._check(name, end - start)
        src = self._sources.get(src_path)
        self.fallback = copy_bytes(src, self._f.fileno(), start, end, offset, name=name) or self.fallback
        return src

    def flush(self) -> None:
        """Nothing is pending: copies are issued at once (offsets are fixed by the layout)."""

    def close(self) -> None:
        self._f.close()
        self._sources.close()

    def abort(self) -> None:
        self._f.close()
        self._sources.close()


class PthZipWriter(FixedLayoutWriter):
    """Writes a ``torch.save``-format file tensor by tensor, without torch.

    The zip (STORED entries: ``data.pkl``, ``byteorder``, ``data/N`` per tensor, ``version``,
    ``.data/serialization_id``) is laid out before any tensor arrives: the pickle
    (``state_dict_pickle``) says everything but the bytes.  Each payload starts on a page, or at
    the in-page offset ``align`` asks for (that of its source, so the kernel copies it at full
    speed, see safetensors_io.copy_bytes); torch pads its payloads to 64 bytes the same way, with
    a local-header extra field.  No ``.format_version`` record: with it, a meta-device
    ``torch.load`` would compute offsets assuming torch's own padding instead of reading them.
    Every payload gets its CRC-32 (``torch.load`` checks none, but zip tools and zipfile-based
    readers, e.g. other converters' lazy ``.pth`` loaders, do; torch.save writes them): bytes
    written from memory are summed at once; a range copied by the kernel is summed from its source
    on a worker thread while the copies go on (zlib and preadv release the GIL), so the sum costs
    a second core rather than a second pass.  ``close`` rewrites the headers with the CRCs.

    >>> import os, tempfile, torch
    >>> p = os.path.join(tempfile.mkdtemp(), "sd.pth")
    >>> w = PthZipWriter(p, [("w", "F32", (2, 3))]); w.write_tensor("w", torch.arange(6.0).view(2, 3)); w.close()
    >>> torch.load(p, weights_only=True)["w"].tolist(), read_layout(p)["w"].start % 4096
    ([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], 0)
    """

    def __init__(self, path, entries, align: dict | None = None):
        import os

        from .raw import dtype_name, nbytes

        entries = [(n, dtype_name(d), tuple(s)) for n, d, s in entries]
        align = {n: a for n, a in (align or {}).items() if a % _MIN_ALIGN == 0}
        archive = os.path.splitext(os.path.basename(os.fspath(path)))[0] or "archive"
        self._plan = (entries, archive, align)
        head, tail, tail_at, offsets = plan_pth(entries, archive, align)
        self._open(path, offsets, {n: nbytes(d, s) for n, d, s in entries}, "w+b", tail_at + len(tail))
        self._write_layout(head, tail, tail_at)
        self._crcs: dict = {}  # name -> CRC-32, or a Future of it
        self._summer = None  # the worker thread that sums copied ranges

    def _write_layout(self, head, tail, tail_at) -> None:
        fd = self._f.fileno()
        for at, piece in head + [(tail_at, tail)]:
            _pwrite_all(fd, memoryview(piece), at)

    def write_bytes(self, name: str, data) -> memoryview:
        data = super().write_bytes(name, data)
        self._crcs[name] = crc32()(data)
        return data

    def copy_range(self, name: str, src_path: str, start: int, end: int):
        from concurrent.futures import ThreadPoolExecutor

        src = super().copy_range(name, src_path, start, end)
        if self._summer is None:  # one worker, so one read buffer serves every sum in turn
            self._summer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ropekit-crc")
            self._summer_buf = bytearray(_CRC_CHUNK)
        # the payload is a byte-for-byte copy of this range: its CRC is the range's
        self._crcs[name] = self._summer.submit(_crc_of_range, src.fileno(), start, end - start, self._summer_buf)
        return src

    def _payload_crcs(self) -> dict:
        """CRC-32 of every payload; one never written (a bug upstream) is summed from the file."""
        crcs = {name: (c if isinstance(c, int) else c.result()) for name, c in self._crcs.items()}
        for name, size in self.sizes.items():
            if name not in crcs:
                crcs[name] = _crc_of_range(self._f.fileno(), self.offsets[name], size)
        return crcs

    def _stop_summer(self, cancel: bool) -> None:
        if self._summer is not None:
            self._summer.shutdown(wait=True, cancel_futures=cancel)
            self._summer = None

    def close(self) -> None:
        try:
            head, tail, tail_at, offsets = plan_pth(*self._plan, crcs=self._payload_crcs())
            assert offsets == self.offsets  # CRCs are fixed-size fields: nothing moves
            self._write_layout(head, tail, tail_at)
        finally:
            self._stop_summer(cancel=True)
            super().close()

    def abort(self) -> None:
        self._stop_summer(cancel=True)
        super().abort()


def _crc_of_range(fd: int, at: int, size: int, buf: bytearray | None = None) -> int:
    """CRC-32 of ``size`` bytes of ``fd`` from ``at`` (pread: the file position is not touched).
    ``buf``: a reused read buffer (one per thread), so a checkpoint is not memset tensor by tensor."""
    import os

    buf, crc, add = buf if buf is not None else bytearray(min(size, _CRC_CHUNK)), 0, crc32()
    while size:
        n = os.preadv(fd, [memoryview(buf)[: min(size, len(buf))]], at)
        if n <= 0:
            raise OSError(f"short read at byte {at} while computing a CRC")
        crc = add(memoryview(buf)[:n], crc)
        at, size = at + n, size - n
    return crc


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    import os

    while data.nbytes:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
