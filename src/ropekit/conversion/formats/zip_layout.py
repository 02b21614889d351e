"""The zip container of a ``torch.save`` file, laid out before any tensor byte exists: local
headers (payloads padded to a chosen in-page offset with an extra field, as torch pads to 64),
the central directory, zip64 records where sizes need them.

>>> head, tail, tail_at, offsets = plan_pth([("w", "F32", (2, 3))], "x")
>>> offsets["w"] % 4096, tail_at - offsets["w"]
(0, 24)
"""

from __future__ import annotations

import functools
import struct

from .dtypes import nbytes
from .file_io import PAGE
from .pth_pickle import state_dict_pickle

__all__ = ["plan_pth", "crc32", "ZIP64_AT"]

#: zip fields are 32-bit; at or past this a value goes to a zip64 extra field (tests lower it)
ZIP64_AT = 0xFFFFFFFF
#: zip flag bit 11: names are UTF-8 (the archive folder is the file's name, as torch.save does)
_UTF8 = 0x800


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
    z64 = size >= ZIP64_AT
    extra = struct.pack("<HHQQ", 1, 16, size, size) if z64 else b""
    if pad_to is not None:
        pad = (pad_to - (at + 30 + len(name) + len(extra))) % PAGE
        if pad:
            pad = pad if pad >= 4 else pad + PAGE
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
    z64 = [v for v in (size, size, at) if v >= ZIP64_AT]  # the order the zip64 field lists them in
    extra = struct.pack("<HH", 1, 8 * len(z64)) + struct.pack(f"<{len(z64)}Q", *z64) if z64 else b""
    fields = [v if v < ZIP64_AT else 0xFFFFFFFF for v in (size, at)]  # the real value is in the zip64 field
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
    if max(cd_at, cd_size) < ZIP64_AT and count < 0xFFFF:
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

    """
    import hashlib

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
