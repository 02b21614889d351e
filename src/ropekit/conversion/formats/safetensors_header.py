"""The safetensors header, read and checked the way the safetensors library (Rust) checks it.

A file is an 8-byte little-endian header length ``n``, ``n`` bytes of UTF-8 JSON, then the data.
The reference reader accepts a header only when: ``n`` is at most 100 MB and fits in the file; the
JSON is strict (no NaN, no lone surrogate escapes, no control characters in strings); every entry is
``{dtype, shape, data_offsets}`` with a known dtype and non-negative integer dims and offsets (an
integer written as ``2.0`` or ``-0`` is a float to it, ``true`` is no integer); ``__metadata__`` is
null or a string -> string map; and, sorted by offsets, the tensors tile the data region from 0 to
the end of the file exactly: no overlap, no hole, no trailing byte, each range as long as its
shape and dtype say.  Ropekit refuses all of that too, and also what the reference lets through by
picking one of two meanings: a name (or a field of an entry) given twice.

>>> import json, struct
>>> head = json.dumps({"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}).encode()
>>> parse_header(struct.pack("<Q", len(head)) + head, 8 + len(head) + 2, "f")[2]
[('w', 'U8', (2,), 0, 2)]
>>> parse_header(struct.pack("<Q", len(head)) + head, 8 + len(head) + 3, "f")
Traceback (most recent call last):
...
ropekit.errors.RopeCheckpointError: corrupt safetensors header in f: the tensors end at byte 70
    but the file has 71 bytes (trailing bytes)
"""

from __future__ import annotations

import math

from ...dialects.reading import parse_json
from ...errors import RopeCheckpointError
from .dtypes import SIZES

__all__ = ["MAX_HEADER", "parse_header", "REFERENCE_ONLY_DTYPES"]

#: a header larger than this is not a safetensors header (the reference reader refuses > 100 MB)
MAX_HEADER = 100_000_000
#: dtypes the safetensors library knows that ropekit does not store (refused with that reason)
REFERENCE_ONLY_DTYPES = ("F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ")
_U64 = 1 << 64
#: nesting deeper than this is refused (the reference's JSON parser stops at 128)
_MAX_DEPTH = 64


class _NegativeInt(int):
    """A JSON integer literal with a minus sign: ``-0`` is a float to the reference parser, and no
    negative number is a valid dim or offset, so the sign must survive parsing."""


def _pairs(pairs):
    """A JSON object, refusing a key given twice (the reference keeps one of them silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key[:80]!r} appears twice")
        out[key] = value
    return out


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _parse_int(text: str):
    return _NegativeInt(int(text)) if text.startswith("-") else int(text)


def _check_strings(obj, depth: int = 0) -> None:
    """Every string encodes as UTF-8 (Python accepts lone surrogate escapes, the reference does not)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"nested deeper than {_MAX_DEPTH} levels")
    if isinstance(obj, str):
        obj.encode("utf-8")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            k.encode("utf-8")
            _check_strings(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _check_strings(v, depth + 1)


def _load_json(raw: bytes) -> dict:
    # the project's one JSON reader, with the hooks that make it as strict as the reference parser
    # (duplicate names, NaN/Infinity, negative integers); its ValueError is the caller's "corrupt"
    obj = parse_json(
        raw, "the header", ValueError, object_pairs_hook=_pairs, parse_constant=_no_constants, parse_int=_parse_int
    )
    _check_strings(obj)
    return obj


def _u64(value, what: str) -> int:
    if type(value) is not int or not 0 <= value < _U64:  # bool, float, _NegativeInt are not
        raise ValueError(f"{what} {value!r} is not an unsigned 64-bit integer")
    return value


def _entry(name: str, entry) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(entry, dict):
        raise ValueError(f"entry {name!r} is {type(entry).__name__}, not an object")
    for field in ("dtype", "shape", "data_offsets"):
        if field not in entry:
            raise ValueError(f"entry {name!r} has no {field!r}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype in REFERENCE_ONLY_DTYPES:
        raise ValueError(f"tensor {name!r} has dtype {dtype}, which ropekit does not convert")
    if not isinstance(dtype, str) or dtype not in SIZES:
        raise ValueError(f"tensor {name!r} has unknown dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list):
        raise ValueError(f"tensor {name!r} shape {str(shape)[:40]} is not a list")
    dims = tuple(_u64(d, f"tensor {name!r} dim") for d in shape)
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise ValueError(f"tensor {name!r} data_offsets {str(offsets)[:60]} are not [begin, end]")
    begin, end = (_u64(o, f"tensor {name!r} offset") for o in offsets)
    return dtype, dims, begin, end


def parse_header(head: bytes, size: int, path: str):
    """(metadata or None, data start, [(name, dtype, shape, begin, end)] sorted by offsets, data
    offsets relative to the data start) from the first bytes of a ``size``-byte file; ``head`` holds
    at least 8 + the header length bytes where the file has them.  Raises one RopeCheckpointError
    naming the file and what is wrong."""

    def corrupt(why: str) -> RopeCheckpointError:
        return RopeCheckpointError(f"corrupt safetensors header in {path}: {why}")

    if size < 8 or len(head) < 8:
        raise corrupt(f"file is {size} bytes, too short for a header")
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER or 8 + n > size or len(head) < 8 + n:
        raise corrupt(f"header length {n} does not fit in the file ({size} bytes, at most {MAX_HEADER})")
    try:
        header = _load_json(head[8 : 8 + n])
    except (UnicodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise corrupt(f"header is not JSON ({str(exc)[:200]})") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise corrupt("__metadata__ must be an object of strings")
    try:
        infos = [(name, *_entry(name, entry)) for name, entry in header.items()]
    except ValueError as exc:
        raise corrupt(str(exc)) from None
    infos.sort(key=lambda i: (i[3], i[4]))  # by data_offsets, as the reference validates them
    at = 0
    for name, dtype, shape, begin, end in infos:
        if begin != at or end < begin:
            why = "overlaps the one before" if begin < at else "leaves a hole before it" if begin > at else "ends first"
            raise corrupt(f"tensor {name!r} data_offsets [{begin}, {end}] {why} (expected to start at {at})")
        want = math.prod(shape) * SIZES[dtype]
        if end - begin != want:
            raise corrupt(
                f"tensor {name!r} shape {list(shape)} {dtype} needs {want} bytes but data_offsets are [{begin}, {end}]"
            )
        at = end
    if 8 + n + at > size:
        raise corrupt(f"the tensors end at byte {8 + n + at}, past the end of the file ({size} bytes)")
    if 8 + n + at < size:
        raise corrupt(f"the tensors end at byte {8 + n + at} but the file has {size} bytes (trailing bytes)")
    return metadata, 8 + n, infos
