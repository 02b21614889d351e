"""The fused CPU path: the reference contract as one ``torch.compile``d expression per variant.

RoPE is memory-bound: the floor is one read and one write of x.  Eager torch spends a full pass
over memory per operator (slice, multiply, subtract, cat...); inductor fuses the whole expression
into one C++ loop.  The expression is shaped for the vectorizer (measured on 2 cores, S=4096,
32 heads x 128): the half layout as ``cat(o1, o2, tail)`` of contiguous halves; the interleaved
layout as ``x * cos2 + swap_pairs(x) * sin2`` (the naive strided ``stack`` form ran 4x slower
in bf16).

Compiled variants are cached under an explicit key holding *everything that changes the code*:
device type, x dtype, table dtype, layout and in/out of place (shapes and strides stay symbolic,
``dynamic=True``, and the direction is a runtime sign; torch's guards still recompile on anything
else that changes).  Each key gets its own code object, so one variant's recompiles never evict
another's.

In place: each output element depends on another element of the same buffer, so inductor cannot
rotate a buffer into itself; it would compute into a fresh temporary every call, whose
first-touch page faults cost several times the rotation.  So in place rotates the rotary dims
into a scratch buffer kept per thread (at most ``SCRATCH_MAX_BYTES``; longer sequences go in
chunks of tokens) and copies them back: two passes, no fresh memory (the tail is neither read
nor written).

When no C++ compiler is available (or compilation fails), the path falls back to the reference,
*visibly*: a warning on the ``ropekit`` logger and ``status()`` says so.

>>> import torch
>>> from ropekit.kernels.cpu import status
>>> sorted(status())
['compiled_variants', 'fallback_reason']
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import types

import torch

from .reference import compute_dtype, rotate_reference

__all__ = ["rotate_cpu", "rotate_qk_cpu", "rotate_many_cpu", "status", "cache_key"]

log = logging.getLogger("ropekit")

_COMPILED: dict[tuple, object] = {}
_FALLBACK: dict[str, str | None] = {"reason": None}


def _rotate_half(x4, cos, sin, pos, sign, inplace: bool):
    n = cos.shape[-1]
    math = compute_dtype(x4.dtype)
    c = cos[pos].unsqueeze(2).to(math)  # [B, S, 1, R]: gathered once per token, shared by heads
    s = sin[pos].unsqueeze(2).to(math) * sign  # sign -1: the inverse rotation, same code
    x1 = x4[..., :n].to(math)
    x2 = x4[..., n : 2 * n].to(math)
    o1 = (x1 * c - x2 * s).to(x4.dtype)
    o2 = (x2 * c + x1 * s).to(x4.dtype)
    if inplace:  # the tail (dims >= 2n) is neither read nor written
        x4[..., : 2 * n] = torch.cat([o1, o2], -1)
        return x4
    return torch.cat([o1, o2, x4[..., 2 * n :]], -1)


def _rotate_interleaved(x4, cos, sin, pos, sign, inplace: bool):
    n = cos.shape[-1]
    math = compute_dtype(x4.dtype)
    c = cos[pos].unsqueeze(2).to(math)
    s = sin[pos].unsqueeze(2).to(math) * sign
    # out[2i] = x[2i] c - x[2i+1] s ; out[2i+1] = x[2i+1] c + x[2i] s  as one elementwise loop
    c2 = torch.stack([c, c], -1).flatten(-2)
    s2 = torch.stack([-s, s], -1).flatten(-2)
    xr = x4[..., : 2 * n].to(math)
    swapped = xr.unflatten(-1, (n, 2)).flip(-1).flatten(-2)
    rotated = (xr * c2 + swapped * s2).to(x4.dtype)
    if inplace:
        x4[..., : 2 * n] = rotated
        return x4
    return torch.cat([rotated, x4[..., 2 * n :]], -1)


def _rotate_qk(q4, k4, cos, sin, pos, sign, inplace: bool):
    # q and k in one compiled call: one guard check and one dispatch instead of two
    return _rotate_half(q4, cos, sin, pos, sign, inplace), _rotate_half(k4, cos, sin, pos, sign, inplace)


def _rotate_qk_interleaved(q4, k4, cos, sin, pos, sign, inplace: bool):
    return (
        _rotate_interleaved(q4, cos, sin, pos, sign, inplace),
        _rotate_interleaved(k4, cos, sin, pos, sign, inplace),
    )


def _rotate_into(x4, cos, sin, pos, sign, out1, out2, interleaved: bool):
    # in place, step 1: each rotated half into its own buffer (step 2, the copy back, is eager).
    # Two plain outputs fuse into one unmasked loop; a cat, or two copies into one buffer, would
    # be materialized in a fresh buffer or computed under masks
    n = cos.shape[-1]
    math = compute_dtype(x4.dtype)
    c = cos[pos].unsqueeze(2).to(math)
    s = sin[pos].unsqueeze(2).to(math) * sign
    if interleaved:
        x1, x2 = x4[..., 0 : 2 * n : 2].to(math), x4[..., 1 : 2 * n : 2].to(math)
    else:
        x1, x2 = x4[..., :n].to(math), x4[..., n : 2 * n].to(math)
    out1.copy_((x1 * c - x2 * s).to(out1.dtype))
    out2.copy_((x2 * c + x1 * s).to(out2.dtype))


def _rotate_half_into(x4, cos, sin, pos, sign, o1, o2):
    _rotate_into(x4, cos, sin, pos, sign, o1, o2, False)


def _rotate_interleaved_into(x4, cos, sin, pos, sign, o1, o2):
    _rotate_into(x4, cos, sin, pos, sign, o1, o2, True)


def _rotate_qk_into(q4, k4, cos, sin, pos, sign, q1, q2, k1, k2):
    _rotate_into(q4, cos, sin, pos, sign, q1, q2, False)
    _rotate_into(k4, cos, sin, pos, sign, k1, k2, False)


def _rotate_qk_interleaved_into(q4, k4, cos, sin, pos, sign, q1, q2, k1, k2):
    _rotate_into(q4, cos, sin, pos, sign, q1, q2, True)
    _rotate_into(k4, cos, sin, pos, sign, k1, k2, True)


# (interleaved, tensors, in place) -> the function compiled for that variant
_BASES = {
    (False, 1, False): _rotate_half,
    (True, 1, False): _rotate_interleaved,
    (False, 2, False): _rotate_qk,
    (True, 2, False): _rotate_qk_interleaved,
    (False, 1, True): _rotate_half_into,
    (True, 1, True): _rotate_interleaved_into,
    (False, 2, True): _rotate_qk_into,
    (True, 2, True): _rotate_qk_interleaved_into,
}


def cache_key(x4: torch.Tensor, cos: torch.Tensor, *, interleaved: bool, inplace: bool, n_tensors: int = 1) -> tuple:
    """Everything that changes the generated code (shapes and strides are symbolic; the direction
    is a runtime sign tensor, so forward and backward share one compiled variant)."""
    return (x4.device.type, x4.dtype, cos.dtype, bool(interleaved), bool(inplace), int(n_tensors))


def _compiled(key: tuple):
    fn = _COMPILED.get(key)
    if fn is None:
        base = _BASES[(key[3], key[5], key[4])]
        # a fresh code object per key: torch's recompile limit counts per code object
        name = "_rope_" + "_".join(str(k).replace("torch.", "") for k in key)
        code = base.__code__.replace(co_name=name)
        fresh = types.FunctionType(code, base.__globals__, name, base.__defaults__, base.__closure__)
        fn = _COMPILED[key] = torch.compile(fresh, dynamic=True, fullgraph=True)
    return fn


class _CompileSettings:
    """Dynamo settings for the duration of one call, restored afterwards (set by hand: the
    generic ``config.patch`` costs ~35 us per call, as much as the compiled call itself).

    Sizes 0 and 1 are specialized by torch (batch 1, one head, decode's one token), so one variant
    may legitimately see a dozen shape classes: allow them explicitly; and no "duck" sizing
    (S == H by chance must not become a guard)."""

    def __enter__(self):
        from torch.fx.experimental import _config as fx_config

        dynamo = torch._dynamo.config
        self._saved = (dynamo.recompile_limit, fx_config.use_duck_shape)
        dynamo.recompile_limit, fx_config.use_duck_shape = max(64, self._saved[0]), False

    def __exit__(self, *exc):
        from torch.fx.experimental import _config as fx_config

        torch._dynamo.config.recompile_limit, fx_config.use_duck_shape = self._saved
        return False


_COMPILER: dict[str, str | None] = {}


def _no_compiler() -> str | None:
    # looked up once per process: scanning PATH costs ~40 us, more than a small compiled call
    if "reason" not in _COMPILER:
        found = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
        _COMPILER["reason"] = None if found else "no C++ compiler found on PATH (inductor needs one)"
    return _COMPILER["reason"]


def _fall_back(reason: str) -> None:
    if _FALLBACK["reason"] is None:
        log.warning("ropekit: cpu backend falls back to the reference rotation (slower): %s", reason)
    _FALLBACK["reason"] = reason


def status() -> dict:
    """What the CPU path is doing: compiled variant keys, and why it fell back (None if it has not).

    >>> from ropekit.kernels.cpu import status
    >>> status()["fallback_reason"] is None or isinstance(status()["fallback_reason"], str)
    True
    """
    return {"compiled_variants": list(_COMPILED), "fallback_reason": _FALLBACK["reason"]}


def _contiguous(out: torch.Tensor, inplace: bool) -> torch.Tensor:
    # the op's fake promises a contiguous result; inductor may keep x's strides instead (a
    # pointwise result of a strided view), so make the promise true
    return out if inplace or out.is_contiguous() else out.contiguous()


def _run_compiled(tensors, cos, sin, pos, *, interleaved: bool, inverse: bool, inplace: bool):
    """The compiled variant for one tensor or for (q, k); None when it cannot run (fell back)."""
    reason = _FALLBACK["reason"] or _no_compiler()
    if reason is None:
        key = cache_key(tensors[0], cos, interleaved=interleaved, inplace=inplace, n_tensors=len(tensors))
        sign = torch.tensor(-1.0 if inverse else 1.0, dtype=compute_dtype(tensors[0].dtype))
        try:
            if inplace:
                return _run_into(key, tensors, cos, sin, pos, sign)
            with _CompileSettings():
                # pos is small: a contiguous copy spares a recompile per stride pattern
                out = _compiled(key)(*tensors, cos, sin, pos.contiguous(), sign, False)
            outs = out if len(tensors) > 1 else (out,)
            return tuple(_contiguous(o, inplace) for o in outs)
        except Exception as exc:  # inductor/toolchain failure: say so once, then use the reference
            if not _is_compile_failure(exc):
                raise
            reason = f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    _fall_back(reason)
    return None


#: in place rotates through one reused scratch buffer per thread of at most this many bytes
#: (longer sequences go in chunks of tokens)
SCRATCH_MAX_BYTES = 64 << 20
_SCRATCH = threading.local()


def _scratch(shapes, dtype) -> list[torch.Tensor]:
    """Buffers for the rotated dims, reused from call to call (one per thread, grown on demand,
    at most ``SCRATCH_MAX_BYTES`` plus one token's worth): a fresh buffer's first-touch page faults
    cost more than the rotation itself on a CPU (several times a ``copy_``)."""
    sizes = [math.prod(s) for s in shapes]
    flat = getattr(_SCRATCH, "buffers", {}).get(dtype)
    if flat is None or flat.numel() < sum(sizes):
        flat = torch.empty(sum(sizes), dtype=dtype)
        _SCRATCH.buffers = {dtype: flat}  # one kept at a time: the latest dtype
    views, at = [], 0
    for shape, size in zip(shapes, sizes):
        views.append(flat[at : at + size].view(shape))
        at += size
    return views


def _run_into(key, tensors, cos, sin, pos, sign):
    """In place as two passes without a fresh allocation: the compiled rotation of the rotary dims
    into reused scratch, then a copy back (the tail is neither read nor written).  Inductor
    cannot rotate a buffer into itself (each element needs its partner's old value), and the
    temporary it would allocate instead faults in fresh pages on every call.  Sequences whose
    rotary dims exceed ``SCRATCH_MAX_BYTES`` go in chunks of tokens, so the scratch stays bounded."""
    n = cos.shape[-1]
    B, S = tensors[0].shape[:2]
    per_token = sum(B * t.shape[2] * 2 * n for t in tensors) * tensors[0].element_size()
    step = max(1, min(S, SCRATCH_MAX_BYTES // max(1, per_token)))
    interleaved = key[3]
    pos = pos.contiguous()
    for at in range(0, S, step):
        chunk = [t[:, at : at + step] for t in tensors]
        scratch = _scratch([(*t.shape[:-1], n) for t in chunk for _ in (0, 1)], tensors[0].dtype)
        with _CompileSettings():
            _compiled(key)(*chunk, cos, sin, pos[:, at : at + step], sign, *scratch)
        for i, t in enumerate(chunk):
            first, second = (
                (t[..., 0 : 2 * n : 2], t[..., 1 : 2 * n : 2]) if interleaved else (t[..., :n], t[..., n : 2 * n])
            )
            first.copy_(scratch[2 * i])
            second.copy_(scratch[2 * i + 1])
    return tuple(tensors)


def rotate_cpu(x4, cos, sin, pos, *, interleaved: bool, inverse: bool, inplace: bool) -> torch.Tensor:
    """The kernel contract of ``kernels.reference``, fused by inductor (see the module docstring)."""
    out = _run_compiled([x4], cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace)
    if out is None:
        return rotate_reference(x4, cos, sin, pos, interleaved=interleaved, inverse=inverse, inplace=inplace)
    return out[0]


def rotate_qk_cpu(q4, k4, cos, sin, pos, *, interleaved: bool, inverse: bool, inplace: bool):
    """q and k (same dtype) in one compiled call."""
    kw = dict(interleaved=interleaved, inverse=inverse, inplace=inplace)
    out = _run_compiled([q4, k4], cos, sin, pos, **kw) if q4.dtype == k4.dtype else None
    if out is None:
        return rotate_cpu(q4, cos, sin, pos, **kw), rotate_cpu(k4, cos, sin, pos, **kw)
    return out


def rotate_many_cpu(tensors, cos, sin, pos, *, interleaved: bool, inverse: bool, inplace: bool):
    """One tensor or (q, k) of one dtype in one compiled call (the reference when it fell back)."""
    kw = dict(interleaved=interleaved, inverse=inverse, inplace=inplace)
    if len(tensors) == 2:
        return list(rotate_qk_cpu(tensors[0], tensors[1], cos, sin, pos, **kw))
    return [rotate_cpu(t, cos, sin, pos, **kw) for t in tensors]


def _is_compile_failure(exc: Exception) -> bool:
    from torch._dynamo.exc import BackendCompilerFailed

    return isinstance(exc, (BackendCompilerFailed, OSError)) or "CppCompileError" in type(exc).__name__
