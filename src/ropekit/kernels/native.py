"""The native CPU rotation: a small C kernel (``kernels.native_code``), built once per machine and
cached on disk, called through ctypes.

Why not ``torch.compile``: inductor fuses the rotation well, but its first call of each variant
costs seconds in every fresh process (measured 12-17 s for the first ``apply_rope_qk`` on a
2x4096x32x128 tensor, several more for each new dtype or in place), and it cannot rotate a buffer
into itself.  This kernel builds in ~0.5 s *once per machine* (plain C, no torch headers), loads
in about a millisecond in every later process, does in place in one pass, and is bit for bit the
reference.

The first build never blocks a call: ``ensure(wait=False)`` starts it on a background thread and
the caller takes the lean eager path meanwhile (logged once on the ``ropekit`` logger;
``status()`` says so).  ``ensure(wait=True)`` builds synchronously (``backend="cpu"``, asked for by
name, waits).  Without a C compiler (or if the build fails) CPU calls stay on the lean eager path,
with a warning.

The cache lives in ``$ROPEKIT_CACHE_DIR`` (default ``$XDG_CACHE_HOME/ropekit`` or
``~/.cache/ropekit``), one file per (source, compiler, CPU features), written atomically.

Threads: ctypes releases the GIL during the call, so calls of more than ``PARALLEL_MIN_NUMEL``
elements are split by token rows over ``torch.get_num_threads()`` threads: torch's own OpenMP
team where torch runs on GNU OpenMP (``_flags`` says why), else the calling thread and the
library's own helpers (``native_pool``: chunks claimed, no waiting for a thread the OS has not
scheduled).

>>> from ropekit.kernels import native
>>> sorted(native.status())
['cache', 'reason', 'state', 'threads']
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import threading

import torch

from ..errors import RopeArgumentError, RopePositionError
from .native_code import ARGS, MAX_PAIRS, PER_TENSOR
from .native_code import C_SOURCE as ROTATION_SOURCE
from .native_pool import POOL_SOURCE

__all__ = ["ensure", "status", "rotate_native", "supports", "FLAGS", "MAX_PAIRS", "PositionOutOfTable"]

log = logging.getLogger("ropekit")

#: -ffp-contract=off: no fused multiply-add, so the rounding is the reference's (see native_code)
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-shared", "-fPIC", "-std=gnu11", "-pthread")
#: the library's source: the rotation, then the thread split
C_SOURCE = ROTATION_SOURCE + POOL_SOURCE

#: below this many elements one thread does the whole call (torch's own elementwise ops split from
#: 32K).  A Llama-3-8B decode step (32 sequences x 40 heads x 128 = 164K elements) is split: on 2
#: cores of a Xeon, fp32 out of place 38.6 -> 28.8 us on ropekit's helper threads (Meta's complex
#: form 30 us) on a quiet machine, 27 us on torch's team (see _flags for the loaded machine)
PARALLEL_MIN_NUMEL = 1 << 17

#: out-of-place calls writing at least this many bytes stream their outputs: stores that bypass the
#: cache (an output this much bigger than the last-level cache is evicted before anyone reads it,
#: and a cached store first reads the line it overwrites) and pages populated a chunk at a time.
#: 64 MiB, not 16: at S=512 fp32, Llama-3-8B heads (20 MiB of q + k), the two thresholds timed
#: against each other in both slots of benchmarks/cpu_ab.py (which reads 1.17x for identical code
#: at that shape) give 64 MiB ~0.88x the time of 16 MiB; S=4096 (80 / 160 MiB) is streamed either way
STREAM_MIN_BYTES = 64 << 20

#: the dtype codes of native_code's rope_run
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}
_STATE: dict = {"state": "not built", "reason": None, "cache": None, "lib": None, "thread": None, "run": None}
_STATE.update(parallel=None, threads=None)
_LOCK = threading.Lock()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cache_dir() -> str:
    root = os.environ.get("ROPEKIT_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "ropekit")
    return root


def _cpu_features() -> str:
    # -march=native code is only valid on CPUs with the same features: they are part of the key
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _library_path(cc: str) -> str:
    st = os.stat(cc)
    key = "\n".join([C_SOURCE, " ".join(_flags()), os.path.realpath(cc), str(st.st_size), str(st.st_mtime_ns)])
    key += platform.machine() + _cpu_features()
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return os.path.join(_cache_dir(), f"rope_native_{digest}.so")


def _build(path: str, cc: str) -> None:
    """Compile into a temporary file beside ``path``, then rename: a concurrent process or an
    interrupted build never leaves a half-written library under the cached name."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, src = tempfile.mkstemp(suffix=".c", dir=os.path.dirname(path))
    tmp = src[:-2] + ".so.tmp"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(C_SOURCE)
        flags = _flags()
        proc = subprocess.run([cc, *flags, src, "-o", tmp], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0 and flags != FLAGS:  # no OpenMP in this toolchain: the helper threads
            proc = subprocess.run([cc, *FLAGS, src, "-o", tmp], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise OSError(f"{os.path.basename(cc)} failed: {(proc.stderr or proc.stdout).strip().splitlines()[:1]}")
        os.replace(tmp, path)
    finally:
        for leftover in (src, tmp):
            if os.path.exists(leftover):
                os.remove(leftover)


#: the two ways big calls are split (``status()["threads"]``)
TORCH_TEAM, HELPERS = "torch's OpenMP threads", "ropekit's helper threads"


def use_threads(threads: str) -> None:
    """Split big calls over ``TORCH_TEAM`` or ``HELPERS`` from now on (the tests run both; the
    choice made at load is the measured one)."""
    if threads not in _STATE.get("splits", {}):
        raise RopeArgumentError(f"threads={threads!r} is not available here: {sorted(_STATE.get('splits', {}))}")
    _STATE.update(parallel=_STATE["splits"][threads], threads=threads)


def _openmp_runtimes() -> frozenset[str]:
    """The GNU OpenMP runtimes mapped into this process now."""
    try:
        with open("/proc/self/maps") as f:
            return frozenset(line.split()[-1] for line in f if "libgomp" in line.rsplit("/", 1)[-1])
    except OSError:
        return frozenset()


@functools.cache
def _torch_openmp() -> frozenset[str]:
    """The GNU OpenMP runtimes mapped before the library is loaded (``ensure`` asks for the library's
    path, and so for this, first): torch's own, imported above."""
    return _openmp_runtimes()


def _flags() -> tuple[str, ...]:
    """FLAGS, plus -fopenmp where torch runs its CPU ops on GNU OpenMP: the library then shares
    torch's runtime (libgomp.so.1 is already loaded, so the loader binds ours to it) and splits its
    calls over torch's own team.  Why: on 2 cores torch's threads keep spinning for a while after
    each of its ops; ropekit's own helper then waits for a core (measured on a Xeon, Llama-3-8B
    heads, a round of peers between calls: S=4096 bf16 out of place 5.4 ms on the helpers against
    4.0-4.1 on torch's team, clone() 3.4 ms; a decode step 33 -> 27 us).  The cost is torch's: with
    another process spinning on one core, a decode step took 0.49 ms on the team against 0.05 ms on
    the helpers (and 0.44 ms for Meta's complex form, on torch's threads)."""
    return FLAGS + ("-fopenmp",) if torch._C.has_openmp and len(_torch_openmp()) == 1 else FLAGS


def _load(path: str) -> None:
    before = _torch_openmp()
    lib = ctypes.CDLL(path)
    run = lib.rope_run
    run.restype = ctypes.c_int64
    run.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]  # args: _pack's bytes
    splits = {HELPERS: lib.rope_run_parallel}
    # torch's team only when loading added no second OpenMP runtime (two would each start threads)
    if hasattr(lib, "rope_run_openmp") and len(before) == 1 and _openmp_runtimes() == before:
        splits[TORCH_TEAM] = lib.rope_run_openmp
    for fn in splits.values():
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64]
    threads = TORCH_TEAM if TORCH_TEAM in splits else HELPERS
    if threads == HELPERS:
        lib.rope_pool_prestart.argtypes = [ctypes.c_int64]
        lib.rope_pool_prestart(max(torch.get_num_threads() - 1, 0))  # not on a first call's clock
    parallel = splits[threads]
    _STATE.update(lib=lib, run=run, parallel=parallel, threads=threads, splits=splits, state="ready", reason=None)


def _build_and_load(path: str, cc: str) -> None:
    try:
        if not os.path.exists(path):
            _build(path, cc)
        _load(path)
        log.info("ropekit: native CPU kernel ready (%s)", path)
    except Exception as exc:  # a toolchain problem must not break the rotation: say so, stay eager
        _STATE.update(state="unavailable", reason=f"{type(exc).__name__}: {exc}")
        log.warning("ropekit: native CPU kernel unavailable (%s); CPU calls use the eager rotation", _STATE["reason"])


def ensure(wait: bool = False) -> bool:
    """True when the native kernel is loaded.  A library already cached on disk is loaded at once;
    otherwise the build starts (on a background thread unless ``wait``)."""
    if _STATE["state"] == "ready":
        return True
    with _LOCK:
        if _STATE["state"] == "not built":
            cc = _compiler()
            if cc is None:
                _STATE.update(state="unavailable", reason="no C compiler found (cc, gcc, clang or $CC)")
                log.warning("ropekit: %s; CPU calls use the eager rotation", _STATE["reason"])
                return False
            path = _STATE["cache"] = _library_path(cc)
            if os.path.exists(path) or wait:
                _build_and_load(path, cc)
            else:
                log.info("ropekit: building the native CPU kernel in the background (once per machine, ~1 s); ")
                _STATE["state"] = "building"
                t = threading.Thread(target=_build_and_load, args=(path, cc), name="ropekit-native-build", daemon=True)
                _STATE["thread"] = t
                t.start()
        thread = _STATE["thread"]
    if wait and thread is not None:
        thread.join()
    return _STATE["state"] == "ready"


def status() -> dict:
    """``state``: "not built", "building", "ready" or "unavailable" (``reason`` says why); ``cache``:
    the library's path; ``threads``: what splits big calls (torch's OpenMP threads or ropekit's
    helper threads; None until loaded)."""
    return {k: _STATE[k] for k in ("state", "reason", "cache", "threads")}


def supports(x: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether the kernel handles x's dtype and this many pairs."""
    return x.dtype in _DTYPES and x.device.type == "cpu" and cos.shape[-1] <= MAX_PAIRS


class PositionOutOfTable(RopePositionError):
    """A token's position is outside the table (raised before anything is written): ``row`` is the
    flat token row, ``position`` its table row."""

    def __init__(self, row: int, position: int, rows: int):
        super().__init__(f"a token needs table row {position} but cos/sin have {rows} rows (positions must be >= 0)")
        self.row, self.position = row, position


def _pack(pairs, cos, sin, pos, start: int, flags: tuple, B: int, S: int) -> bytes:
    """The int64 argument array of ``rope_run`` (layout: native_code.ARGS, then PER_TENSOR each;
    ``flags``: interleaved, inverse, stream).  Each tensor attribute is read once, and the array
    is one ``struct.pack`` of one flat tuple (half the time of an ``array.array``): on a decode
    step the Python around the kernel is as long as the kernel itself."""
    P, R = cos.shape
    if pos is None:  # rows start, start + 1, ... for every sequence: no position tensor at all
        vals = (_DTYPES[pairs[0][0].dtype], len(pairs), cos.data_ptr(), sin.data_ptr(), 0, P, B, S, R, start, 0, *flags)
    else:  # [B, S] or [1, S] (one row of positions for every sequence: batch stride 0)
        pb, ps = pos.stride()
        head = (_DTYPES[pairs[0][0].dtype], len(pairs), cos.data_ptr(), sin.data_ptr(), pos.data_ptr(), P, B, S, R)
        vals = (*head, pb if pos.shape[0] != 1 else 0, ps, *flags)
    for x4, o4 in pairs:
        _, _, H, D = x4.shape
        vals += (x4.data_ptr(), o4.data_ptr(), H, D, *x4.stride(), *o4.stride(), o4 is not x4 and 2 * R < D)
    packer = _PACKERS.get(len(vals))
    if packer is None:
        packer = _PACKERS[len(vals)] = struct.Struct(f"={len(vals)}q")
    return packer.pack(*vals)


_PACKERS: dict = {}  # one struct.Struct per argument count
assert len(ARGS) == 14 and len(PER_TENSOR) == 13  # _pack writes them in this order


def rotate_native(pairs, cos, sin, pos, *, interleaved: bool, inverse: bool, start: int = 0) -> None:
    """Rotate each ``(x4, out4)`` (``[B, S, H, D]`` views of one dtype, ``out4`` may be ``x4``: in
    place) by tables ``cos``/``sin`` ``[P, R]`` at rows ``pos`` (``[B, S]`` or ``[1, S]``; None:
    rows ``start + s``).  Needs ``ensure()`` first.  Every position is checked before anything
    is written (``PositionOutOfTable``)."""
    x0 = pairs[0][0]
    dtype = x0.dtype
    math = torch.float64 if dtype == torch.float64 else torch.float32
    if cos.dtype != math or not cos.is_contiguous():
        cos = cos.to(math).contiguous()  # the reference rounds the tables to the math dtype too
    if sin.dtype != math or not sin.is_contiguous():
        sin = sin.to(math).contiguous()
    if pos is not None and pos.dtype != torch.int64:
        pos = pos.to(torch.int64)
    shape = x0.shape
    B, S = shape[0], shape[1]
    rows = B * S
    numel = x0.numel()
    out = 0  # elements written out of place (in place: never streamed)
    if len(pairs) * numel * dtype.itemsize >= STREAM_MIN_BYTES:
        for x4, o4 in pairs:
            out = out + o4.numel() if o4 is not x4 else -(1 << 62)
    flags = (interleaved, inverse, out * dtype.itemsize >= STREAM_MIN_BYTES)
    args = _pack(pairs, cos, sin, pos, start, flags, B, S)  # pointers: all live to the end of the calls
    # one thread below PARALLEL_MIN_NUMEL (x0's size decides: k is smaller than q); above, the
    # library's own helpers (native_pool), which check the positions first too
    if len(pairs) * numel < PARALLEL_MIN_NUMEL or (threads := torch.get_num_threads()) < 2:
        bad = _STATE["run"](args, 0, rows, 1)
    else:
        bad = _STATE["parallel"](args, rows, threads)
    if bad < 0:
        raise RopeArgumentError(f"rotary pairs {cos.shape[1]} exceed the native kernel's {MAX_PAIRS}")
    if bad:
        b, s = divmod(bad - 1, S)
        position = start + s if pos is None else int(pos[b if pos.shape[0] != 1 else 0, s])
        raise PositionOutOfTable(bad - 1, position, cos.shape[0])
