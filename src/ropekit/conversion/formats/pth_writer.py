"""``torch.save``-format files written tensor by tensor, without torch.

>>> import os, tempfile, torch
>>> from ropekit.conversion.formats.torch_zip import read_layout
>>> p = os.path.join(tempfile.mkdtemp(), "sd.pth")
>>> w = PthZipWriter(p, [("w", "U16", (2,))])
>>> w.write_tensor("w", torch.tensor([1, 65535], dtype=torch.uint16)); w.close()
>>> torch.load(p, weights_only=True)["w"].tolist()
[1, 65535]
"""

from __future__ import annotations

import os

from .dtypes import dtype_name, nbytes
from .file_io import pwrite_all
from .fixed_writer import FixedLayoutWriter
from .zip_layout import crc32, plan_pth

__all__ = ["PthZipWriter"]

_CRC_CHUNK = 8 << 20  # read buffer for payload CRCs
#: the least alignment a payload gets: every dtype's element size, as safetensors guarantees
_MIN_ALIGN = 8


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
    >>> from ropekit.conversion.formats.torch_zip import read_layout
    >>> p = os.path.join(tempfile.mkdtemp(), "sd.pth")
    >>> w = PthZipWriter(p, [("w", "F32", (2, 3))]); w.write_tensor("w", torch.arange(6.0).view(2, 3)); w.close()
    >>> torch.load(p, weights_only=True)["w"].tolist(), read_layout(p)["w"].start % 4096
    ([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], 0)
    """

    def __init__(self, path, entries, align: dict | None = None):
        entries = [(n, dtype_name(d), tuple(s)) for n, d, s in entries]
        align = {n: a for n, a in (align or {}).items() if a % _MIN_ALIGN == 0}
        archive = os.path.splitext(os.path.basename(os.fspath(path)))[0] or "archive"
        self._plan = (entries, archive, align)
        head, tail, tail_at, offsets = plan_pth(entries, archive, align)
        self.open_output(path, offsets, {n: nbytes(d, s) for n, d, s in entries}, "w+b", tail_at + len(tail))
        self._write_layout(head, tail, tail_at)
        self._crcs: dict = {}  # name -> CRC-32, or a Future of it
        self._summer = None  # the worker thread that sums copied ranges

    def _write_layout(self, head, tail, tail_at) -> None:
        fd = self._f.fileno()
        for at, piece in head + [(tail_at, tail)]:
            pwrite_all(fd, memoryview(piece), at)

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
    buf, crc, add = buf if buf is not None else bytearray(min(size, _CRC_CHUNK)), 0, crc32()
    while size:
        n = os.preadv(fd, [memoryview(buf)[: min(size, len(buf))]], at)
        if n <= 0:
            raise OSError(f"short read at byte {at} while computing a CRC")
        crc = add(memoryview(buf)[:n], crc)
        at, size = at + n, size - n
    return crc
