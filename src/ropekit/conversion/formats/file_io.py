"""Byte-level file I/O every checkpoint reader and writer shares: tensors read from byte ranges,
byte ranges copied between files in the kernel, output files preallocated, tensors as raw bytes.

>>> import os, tempfile
>>> p = os.path.join(tempfile.mkdtemp(), "f"); _ = open(p, "wb").write(bytes(range(8)))
>>> read_range(p, 2, 6, "U8", (2, 2)).tolist()
[[2, 3], [4, 5]]
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from typing import TYPE_CHECKING

from ...errors import RopeCheckpointError
from .dtypes import torch_dtype

if TYPE_CHECKING:  # annotations only: this module never imports torch at run time
    import torch

__all__ = [
    "PAGE",
    "read_range",
    "copy_bytes",
    "preallocate",
    "best_alignment",
    "pwrite_all",
    "tensor_bytes",
    "SourceFiles",
]


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
    """Copy bytes [start, end) of ``src_path`` (a path or an open binary file) to ``dst_fd`` (at
    ``dst_offset``, or at and advancing the descriptor's position when None): in the kernel with ``copy_file_range``
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


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor (no copy when it is already contiguous)."""
    import torch

    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    n = flat.numel() * flat.element_size()
    if n == 0:
        return memoryview(b"")
    # a ctypes view of the storage, not .numpy(): numpy is optional; the view keeps the tensor alive
    import ctypes

    buf = (ctypes.c_char * n).from_address(flat.cpu().data_ptr())
    buf.keep = flat
    return memoryview(buf).cast("B")


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (pwrite may write less than asked)."""
    while data.nbytes:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
