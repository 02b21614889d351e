"""Tensors as bytes, without torch: dtype names and sizes, q/k row orders, permuted reads.

Converting a safetensors checkpoint between RoPE layouts only moves whole rows of the q/k
tensors (``ropekit.permute``): no value is read as a number.  So the converter can stay in bytes
and skip ``import torch`` (over a second per run, more than the copy of a 2 GB checkpoint takes):
a row is ``prod(shape[1:]) * itemsize`` contiguous bytes in any dtype, and a permuted tensor is
read with ``preadv`` straight into its new row order (one copy out of the page cache).

Dtypes are safetensors' names (``"BF16"``, the table is ``formats/dtypes.py``); a torch.dtype is
accepted wherever a name is and turned into one by its printed name, which needs no torch import.

>>> from ropekit.conversion.formats.base import Geometry
>>> g = Geometry(n_heads=1, n_kv_heads=1, head_dim=8, rotary_dim=8)
>>> row_order("q", g, "half", "interleaved", 8)
[0, 4, 1, 5, 2, 6, 3, 7]
>>> row_order("q", g, "interleaved", "half", 8)
[0, 2, 4, 6, 1, 3, 5, 7]
"""

from __future__ import annotations

import os
import threading

from ...errors import RopeCheckpointError, RopeShapeError
from ...layouts import PERMUTED_ROLES, QK_ROLES, qk_row_count, stacked_head_order

__all__ = [
    "row_order",
    "read_rows",
    "row_targets",
    "RowReader",
]

#: preadv takes at most IOV_MAX buffers per call (1024 on Linux)
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 1024


def row_order(role: str, g, src: str, dst: str, rows: int) -> list[int]:
    """Source row of every destination row of a stored q/k tensor (``role`` as in
    ``formats.base.role_of``, geometry ``g``), checking the row count like ``permute_tensor``."""
    if role not in PERMUTED_ROLES:
        raise RopeShapeError(f"role {role!r} has no q/k rows to permute")
    want, what = qk_row_count(role, g.n_heads, g.n_kv_heads, g.head_dim)
    if rows != want:
        raise RopeShapeError(f"{rows} rows but {what}")
    if role in QK_ROLES:
        return stacked_head_order(g.heads_for(role), g.head_dim, g.rotary_dim, src, dst)
    if role == "qkv_neox":  # per head [q_h, k_h, v_h]: q_h and k_h move like two heads, v_h stays
        hd = g.head_dim
        qk = stacked_head_order(2 * g.n_heads, hd, g.rotary_dim, src, dst)  # over the q/k rows only
        out = []
        for h in range(g.n_heads):
            out += [(r // (2 * hd)) * 3 * hd + r % (2 * hd) for r in qk[2 * h * hd : 2 * (h + 1) * hd]]
            out += range(h * 3 * hd + 2 * hd, (h + 1) * 3 * hd)
        return out
    qk = stacked_head_order(g.n_heads + g.n_kv_heads, g.head_dim, g.rotary_dim, src, dst)  # [q; k; v]
    return qk + list(range(len(qk), want))


def read_rows(
    fd: int, start: int, end: int, order: list[int], path: str = "?", into: memoryview | None = None, targets=None
):
    """Bytes [start, end) of an open file, as ``len(order)`` equal rows put in ``order``
    (``out row i = file row order[i]``).  ``preadv`` scatters each source row straight to its
    place, so the bytes are copied once, in the kernel, and never touched in Python.  ``into``:
    a buffer to fill (default: a new bytearray); ``targets``: its row views in source order, as
    returned by ``row_targets`` (cached by ``RowReader``).  Returns the buffer."""
    out = bytearray(end - start) if into is None else into
    if targets is None:
        targets = row_targets(memoryview(out), order)
    n = len(targets)
    row = len(out) // n if n else 0
    for k in range(0, n, _IOV_MAX):
        bufs, pos = targets[k : k + _IOV_MAX], start + k * row
        want = row * len(bufs)
        while want:
            got = os.preadv(fd, bufs, pos)
            if got <= 0:
                raise RopeCheckpointError(f"{path} ended at byte {pos} while reading a tensor")
            pos, want = pos + got, want - got
            if want:  # a short read (signal, huge request): go on where it stopped
                i = 0
                while got >= bufs[i].nbytes:
                    got -= bufs[i].nbytes
                    i += 1
                bufs = [bufs[i][got:]] + bufs[i + 1 :]
    return out


def row_targets(out: memoryview, order: list[int]) -> list[memoryview]:
    """The rows of ``out`` in the order the source holds them (``preadv``'s scatter list)."""
    n = len(order)
    if not n or not out.nbytes:
        return []
    row = out.nbytes // n
    if row * n != out.nbytes:
        raise RopeShapeError(f"{out.nbytes} bytes do not split into {n} rows")
    place = [0] * n
    for i, s in enumerate(order):
        place[s] = i
    return [out[i * row : (i + 1) * row] for i in place]


class RowReader:
    """``read_rows`` into reused buffers: a conversion reads many tensors of a few shapes (q, k),
    and a fresh buffer costs a page fault per 4 KiB and a Python view per row, each time.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "f"); _ = open(p, "wb").write(b"aabbccdd")
    >>> fd = os.open(p, os.O_RDONLY); r = RowReader()
    >>> handle, data = r.read(fd, 0, 8, "key", lambda: [0, 2, 1, 3]); bytes(data)
    b'aaccbbdd'
    >>> r.release(handle); os.close(fd)
    """

    def __init__(self):
        self._free: dict = {}  # (key, nbytes) -> [(buffer, targets)]
        self._lock = threading.Lock()

    def read(self, fd: int, start: int, end: int, key, order, path: str = "?"):
        """(handle, buffer): the tensor's bytes in row order ``order()`` (called only when no
        buffer for ``key`` and this size is free).  Give the handle back with ``release``."""
        k = (key, end - start)
        with self._lock:
            free = self._free.setdefault(k, [])
            item = free.pop() if free else None
        if item is None:
            buf = memoryview(bytearray(end - start))
            item = (buf, row_targets(buf, order()))
        read_rows(fd, start, end, None, path, item[0], item[1])
        return (k, item), item[0]

    def release(self, handle) -> None:
        k, item = handle
        with self._lock:
            self._free[k].append(item)
