"""Streaming safetensors: read a file's header and tensors without loading the file, write a file
one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape,
data_offsets}}`` (plus optional ``__metadata__``), then the raw bytes.  Reading the header
ourselves lets us (a) validate it and name what is wrong, (b) copy untouched tensors byte for byte
with ``os.copy_file_range`` (kernel-side, like ``cp``), and (c) lay out the output header before
any data exists, so the writer never holds more than one tensor.

>>> import os, tempfile, torch
>>> from ropekit.conversion.formats.safetensors_io import SafetensorsFile, SafetensorsWriter
>>> d = tempfile.mkdtemp(); path = os.path.join(d, "a.safetensors")
>>> w = SafetensorsWriter(path, [("x", torch.float32, (2, 3))])
>>> w.write_tensor("x", torch.arange(6.0).view(2, 3)); w.close()
>>> SafetensorsFile(path).tensor("x").tolist()
[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...dialects.reading import parse_json  # the project's one JSON reader
from ...errors import RopeCheckpointError, RopeConfigError

if TYPE_CHECKING:  # annotations only: this module never imports torch at run time
    import torch
from .raw import SIZES, dtype_name, nbytes, torch_dtype

__all__ = [
    "DTYPES",  # noqa: F822 (built on first use by __getattr__)
    "DTYPE_NAMES",  # noqa: F822
    "TensorInfo",
    "SafetensorsFile",
    "SafetensorsWriter",
    "tensor_bytes",
    "read_range",
    "copy_bytes",
    "preallocate",
]


def __getattr__(attr: str):
    # DTYPES {name: torch.dtype} / DTYPE_NAMES {torch.dtype: name} are built on first use: reading
    # and writing safetensors bytes does not need torch (formats/raw.py)
    if attr in ("DTYPES", "DTYPE_NAMES"):
        dtypes = {name: torch_dtype(name) for name in SIZES}
        globals().update(DTYPES=dtypes, DTYPE_NAMES={v: k for k, v in dtypes.items()})
        return globals()[attr]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


#: a header larger than this is not a safetensors header (the reference reader refuses > 100 MB)
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype_name: str  # safetensors' name ("BF16")
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def dtype(self):
        """The torch.dtype (imports torch)."""
        return torch_dtype(self.dtype_name)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (no copy when it is already contiguous)."""
    import torch

    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data.nbytes:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class SafetensorsFile:
    """One ``.safetensors`` file: validated header, tensors read one at a time, raw byte ranges."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise self._corrupt(f"file is {size} bytes, too short for a header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise self._corrupt(f"header length {n} does not fit in the file ({size} bytes)")
            raw = f.read(n)
        try:
            header = parse_json(raw, "the header")
        except RopeConfigError as exc:
            raise self._corrupt(f"header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise self._corrupt("header is not a JSON object")
        self.metadata = header.pop("__metadata__", None)
        self.data_start = 8 + n
        infos = []
        for name, entry in header.items():
            try:
                dtype = entry["dtype"]
                if dtype not in SIZES:
                    raise KeyError(dtype)
                shape = tuple(int(s) for s in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as exc:
                raise self._corrupt(f"entry {name!r} is malformed ({exc!r})") from None
            itemsize = SIZES[dtype]
            if end - begin != math.prod(shape) * itemsize or begin < 0:
                raise self._corrupt(
                    f"tensor {name!r} shape {list(shape)} {entry['dtype']} needs "
                    f"{math.prod(shape) * itemsize} bytes but data_offsets are [{begin}, {end}]"
                )
            if self.data_start + end > size:
                raise self._corrupt(
                    f"tensor {name!r} ends at byte {self.data_start + end} past the end of the file ({size})"
                )
            infos.append(TensorInfo(name, dtype, shape, self.data_start + begin, self.data_start + end))
        infos.sort(key=lambda i: i.start)  # data order: reading in it is sequential
        self.infos = {i.name: i for i in infos}

    def _corrupt(self, why: str) -> RopeCheckpointError:
        return RopeCheckpointError(f"corrupt safetensors header in {self.path}: {why}")

    def names(self) -> list[str]:
        return list(self.infos)

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor, read into its own buffer (freed with the tensor).

        Not a memory map on purpose: pages of a mapping stay resident, and counted in RSS, until
        the whole file is unmapped, so a long conversion would accumulate every tensor it read."""
        info = self.infos[name]
        return read_range(self.path, info.start, info.end, info.dtype_name, info.shape)


def read_range(path: str, start: int, end: int, dtype, shape):
    """Bytes [start, end) of a file as a tensor of ``dtype`` (a torch.dtype or its safetensors
    name) and ``shape``."""
    import torch

    dtype = torch_dtype(dtype)
    buf = bytearray(end - start)
    if buf:
        with open(path, "rb", buffering=0) as f:
            view, pos = memoryview(buf), start
            while view.nbytes:
                n = os.preadv(f.fileno(), [view], pos)
                if n == 0:
                    raise RopeCheckpointError(f"{path} ended at byte {pos} while reading a tensor")
                view, pos = view[n:], pos + n
    else:
        return torch.empty(tuple(shape), dtype=dtype)
    return torch.frombuffer(buf, dtype=torch.uint8).view(dtype).view(tuple(shape))


#: errors that mean "this kernel / file system pair cannot copy_file_range", not "the copy failed"
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM)
#: The kernel copies page-cache pages fastest when source and destination sit at the same offset
#: within a page.  Shifted, copy_file_range is 2.5x slower, and a user-space copy through a small
#: reused buffer (it stays in the CPU cache) is as fast as the aligned kernel copy
#: (benchmarks/copy_alignment.py): so writers align to their sources where they can, and
#: copy_bytes picks the path by alignment.
PAGE = 4096
_BUFFER = 1 << 20
_buffers = threading.local()


class _source:
    """An open source file: a path is opened for the copy, an open file object is borrowed."""

    def __init__(self, src):
        self.owned = not hasattr(src, "fileno")
        self.f = open(src, "rb", buffering=0) if self.owned else src

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        if self.owned:
            self.f.close()


class SourceFiles:
    """Source files kept open across many copies (one open per file, not per tensor)."""

    def __init__(self):
        self._open: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, path: str):
        with self._lock:
            f = self._open.get(path)
            if f is None:
                f = self._open[path] = open(path, "rb", buffering=0)
            return f

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


def copy_bytes(
    src_path, dst_fd: int, start: int, end: int, dst_offset: int | None = None, name: str = "?"
) -> str | None:
    """Copy bytes [start, end) of ``src_path`` (a path or an open binary file) to ``dst_fd`` (at ``dst_offset``, or at and
    advancing the descriptor's position when None): in the kernel with ``copy_file_range``
    when both sides share their in-page offset, else through a reused 1 MiB buffer.

    Returns None, or why the kernel copy was not available (old kernel, a file-system pair that
    does not support it, a platform without it); the bytes are then copied through user space,
    identical, and the caller reports the reason.

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp(); a = os.path.join(d, "a")
    >>> _ = open(a, "wb").write(b"0123456789")
    >>> fd = os.open(os.path.join(d, "b"), os.O_WRONLY | os.O_CREAT)
    >>> copy_bytes(a, fd, 2, 7); os.close(fd)
    >>> open(os.path.join(d, "b"), "rb").read()
    b'23456'
    """
    why = None
    with _source(src_path) as src:
        pos, out = start, dst_offset
        here = out if out is not None else os.lseek(dst_fd, 0, os.SEEK_CUR)
        if not hasattr(os, "copy_file_range"):
            why = "no copy_file_range on this platform"
        elif (pos - here) % PAGE == 0:
            try:
                while pos < end:
                    n = os.copy_file_range(src.fileno(), dst_fd, end - pos, pos, out)
                    if n == 0:
                        raise RopeCheckpointError(f"{src.name} ended at byte {pos} while copying tensor {name!r}")
                    pos += n
                    out = None if out is None else out + n
                return None
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                why = f"copy_file_range: {os.strerror(exc.errno)}"
        buf = getattr(_buffers, "buf", None)
        if buf is None:
            buf = _buffers.buf = memoryview(bytearray(_BUFFER))
        while pos < end:
            n = os.preadv(src.fileno(), [buf[: min(_BUFFER, end - pos)]], pos)
            if n == 0:
                raise RopeCheckpointError(f"{src.name} ended at byte {pos} while copying tensor {name!r}")
            view = buf[:n]
            while view.nbytes:
                k = os.write(dst_fd, view) if out is None else os.pwrite(dst_fd, view, out)
                view = view[k:]
                out = None if out is None else out + k
            pos += n
    return why


@functools.cache
def _fallocate():
    """libc's fallocate(2) and errno reader, or None (not glibc/Linux: nothing to reserve with)."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fn, ctypes.get_errno


def preallocate(fd: int, size: int, path: str = "?") -> None:
    """Reserve the blocks of a new output file of ``size`` bytes before anything is written.

    Why: on ext4 a 2 GB file written by copy_file_range took 0.71 s best of 8 here, 0.59 s when
    preallocated (five 400 MB files: 0.52 -> 0.41 s); blocks are allocated in one go instead of
    extent by extent during writeback.  And a full disk is found now, before hours of work,
    with a clear error.  Linux ``fallocate(2)`` called directly: glibc's ``posix_fallocate`` (what
    ``os.posix_fallocate`` calls) *emulates* it where the file system lacks it by writing every
    block, a second full write; here such file systems (and other platforms) just skip it.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "f"); fd = os.open(p, os.O_RDWR | os.O_CREAT)
    >>> preallocate(fd, 10000); os.fstat(fd).st_size; os.close(fd)
    10000
    """
    libc = _fallocate() if size > 0 else None
    if libc is None:
        return
    fn, get_errno = libc
    if fn(fd, 0, 0, size) != 0:
        err = get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise RopeCheckpointError(f"cannot reserve {size} bytes for {path}: {os.strerror(err)}")
        # EOPNOTSUPP, ENOSYS, EINVAL...: the file system cannot; it is only a speed-up


def best_alignment(pairs, modulus: int = PAGE, step: int = 8) -> int | None:
    """The data-start residue (mod ``modulus``, a multiple of ``step``) that puts the most bytes of
    ``pairs`` = [(source offset, offset in the data region, nbytes)] at the same in-page offset
    as their source; None when no pair can be aligned.

    >>> best_alignment([(1000, 0, 10), (5000, 4000, 10), (1064, 100, 99)])
    1000
    """
    weight: dict[int, int] = {}
    for src, rel, size in pairs:
        want = (src - rel) % modulus
        if want % step == 0:
            weight[want] = weight.get(want, 0) + size
    return max(weight, key=weight.get) if weight else None


class SafetensorsWriter:
    """Writes one safetensors file tensor by tensor.

    The header (names, dtypes, shapes, offsets) is written first; every tensor then goes to its
    own byte range (positional writes), so tensors may arrive in any order, from any thread (one
    thread per tensor), and nothing accumulates in memory.  ``align``: a data-start residue mod
    ``PAGE`` (see ``best_alignment``); the header is padded with spaces (which the format allows)
    to reach it.  Byte ranges copied back to back from one source are merged into one kernel copy.

    ``clone``: the source SafetensorsFile, when this file may be the same bytes with some tensors
    rewritten (a layout change).  If its header says exactly what this one would (same tensors,
    dtypes, shapes, order, metadata, packed data), the whole source file is copied in one kernel
    call, as ``cp`` does (measured 25% faster than the same bytes in several calls), before the
    first tensor is written over it; the source header is kept verbatim.  Otherwise ignored.
    """

    def __init__(
        self,
        path,
        entries,
        metadata: dict | None = None,
        align: int | None = None,
        clone: SafetensorsFile | None = None,
    ):
        self.path = os.fspath(path)
        header: dict = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        self._where: dict[str, tuple[int, int]] = {}  # name -> (offset in the data region, nbytes)
        for name, dtype, shape in entries:
            size = nbytes(dtype, shape)
            header[name] = {"dtype": dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._where[name] = (offset, size)
            offset += size
        self.total_size = offset
        self.fallback: str | None = None  # why pass-through bytes went through user space (None: all in the kernel)
        self._done: set[str] = set()
        self._pending: list | None = None  # [src_path, start, end, dst offset, name]: a copy not issued yet
        self._sources = SourceFiles()
        self._clone_lock = threading.Lock()
        self._cloned = False
        self._clone = clone if clone is not None and self._same_layout(clone, header) else None
        if self._clone is not None:
            self.data_start = clone.data_start
            self._f = open(self.path, "wb", buffering=0)
            preallocate(self._f.fileno(), self.data_start + self.total_size, self.path)
            return
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # data starts 8-aligned, as the reference writer does
        if align is not None and align % 8 == 0:
            raw += b" " * ((align - 8 - len(raw)) % PAGE)
        self.data_start = 8 + len(raw)
        self._f = open(self.path, "wb", buffering=0)
        preallocate(self._f.fileno(), self.data_start + self.total_size, self.path)
        _pwrite_all(self._f.fileno(), memoryview(struct.pack("<Q", len(raw)) + raw), 0)

    @staticmethod
    def _same_layout(src: SafetensorsFile, header: dict) -> bool:
        """Does ``src`` hold every tensor exactly where this header puts it (relative to its own
        data start), with the same metadata and nothing else?"""
        if (src.metadata or None) != header.get("__metadata__"):
            return False
        entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
        if len(entries) != len(src.infos):
            return False
        for (name, e), info in zip(entries, src.infos.values()):
            rel = info.start - src.data_start
            if (
                name != info.name
                or e["dtype"] != info.dtype_name
                or tuple(e["shape"]) != info.shape
                or e["data_offsets"] != [rel, rel + info.nbytes]
            ):
                return False
        return os.path.getsize(src.path) == src.data_start + sum(i.nbytes for i in src.infos.values())

    def source_fd(self, path: str) -> int:
        """An open descriptor of source file ``path`` (kept open until close / abort)."""
        return self._sources.get(path).fileno()

    def _ensure_cloned(self) -> None:
        """Copy the whole source file once, before anything is written over it (whichever
        thread comes first does it; the others wait).  One call, not one per run of untouched
        tensors: the page cache keeps files in folios of up to 2 MiB, and kernel copies whose
        ends split folios are 25% slower (measured; skipping the 2 MiB blocks inside q/k tensors
        did not pay either, writing fresh pages costs what copying them saves)."""
        with self._clone_lock:
            if self._clone is not None and not self._cloned:
                end = os.path.getsize(self._clone.path)
                src = self._sources.get(self._clone.path)
                self.fallback = copy_bytes(src, self._f.fileno(), 0, end, 0, name="(whole file)") or self.fallback
                self._cloned = True

    def _expect(self, name: str, nbytes: int) -> int:
        """The file offset for tensor ``name`` (checked: known, its size, written once)."""
        if name not in self._where or name in self._done:
            raise RuntimeError(
                f"safetensors writer: tensor {name!r} is {'already written' if name in self._done else 'not in the header'}"
            )
        rel, want = self._where[name]
        if want != nbytes:
            raise RuntimeError(f"tensor {name!r} has {nbytes} bytes, header says {want}")  # a bug, not bad input
        self._done.add(name)
        return self.data_start + rel

    def write_tensor(self, name: str, t) -> None:
        self.write_bytes(name, tensor_bytes(t))

    def write_bytes(self, name: str, data) -> None:
        """Write the raw bytes of tensor ``name`` (a bytes-like object of exactly its size)."""
        data = memoryview(data).cast("B")
        offset = self._expect(name, data.nbytes)
        self._ensure_cloned()
        _pwrite_all(self._f.fileno(), data, offset)

    def copy_range(self, name: str, src_path: str, start: int, end: int) -> None:
        """Copy bytes [start, end) of another file in the kernel (no trip through Python).  Issued
        lazily (call ``flush``): a range that continues the previous one, from the same file
        into the next bytes of this one, extends it."""
        offset = self._expect(name, end - start)
        if self._clone is not None:
            if src_path != self._clone.path or start != offset:  # a bug: cloning was decided from the header
                raise RuntimeError(
                    f"tensor {name!r}: copy from {src_path}@{start} into a clone of {self._clone.path}@{offset}"
                )
            self._ensure_cloned()  # the bytes are already in place
            return
        p = self._pending
        if p is not None and p[0] == src_path and p[2] == start and p[3] + (p[2] - p[1]) == offset:
            p[2] = end
            return
        self.flush()
        self._pending = [src_path, start, end, offset, name]

    def flush(self) -> None:
        """Issue the pending merged copy now."""
        self._ensure_cloned()
        if self._pending is not None:
            src_path, start, end, offset, name = self._pending
            self._pending = None
            src = self._sources.get(src_path)
            self.fallback = copy_bytes(src, self._f.fileno(), start, end, offset, name=name) or self.fallback

    def close(self) -> None:
        missing = [n for n in self._where if n not in self._done]
        if missing:
            self.abort()
            raise RuntimeError(f"safetensors writer closed before writing {missing[:3]}")
        self.flush()
        self._f.close()
        self._sources.close()

    def abort(self) -> None:
        self._f.close()
        self._sources.close()
