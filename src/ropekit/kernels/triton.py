"""The Triton rotation kernel (GPU; CPU under ``TRITON_INTERPRET=1`` for tests).

One kernel serves every form of the contract in ``kernels.reference``: q only, q and k fused in one
launch (the cos/sin tile of a token block is loaded or computed once and reused by every q and k
head), packed qkv (q and k heads are adjacent, so they are one head range of one view), both
layouts, partial rotary, in and out of place, inverse.  x may be fp32/bf16/fp16 (math in fp32) or
fp64 (math in fp64).

Cos/sin come from a compact table ``[P, R]`` indexed by ``pos``, or are computed inside the kernel
(``source="freqs"``) from the positions and the frequencies, with no table traffic at all:

* each frequency is stored as a fixed-point number of *turns per position*
  ``f = inv_freq / (2 pi)`` with 96 fractional bits (two int64 words, see ``turns_fixed_point``);
* ``pos * f mod 1`` is then an exact integer product modulo 2**64: the integer turns fall off the
  top of the word, which *is* the range reduction, done without any rounding (the classic
  double-float Cody-Waite reduction by 2 pi only approximates this);
* the remaining fraction of a turn (|t| <= 1/2, 64 bits) becomes an angle in [-pi, pi) in fp64,
  whose cos/sin are evaluated in fp64 once per (token, frequency) and shared by all heads, then
  rounded once to fp32.  The result is within 1 fp32 ulp of the exactly rounded value for every
  position < 2**31 (tests/test_kernels_angles.py proves it against mpmath up to 2**24).

>>> import torch
>>> from ropekit.kernels.triton import turns_fixed_point
>>> turns_fixed_point(torch.tensor([1.0], dtype=torch.float64)).shape
torch.Size([1, 2])
"""

from __future__ import annotations

import os
from fractions import Fraction

import torch

from ..errors import RopePositionError, RopeShapeError, require

__all__ = [
    "rotate_triton",
    "rotate_qk_triton",
    "turns_fixed_point",
    "cos_sin_triton",
    "interpreting",
    "MAX_FREQS_POSITION",
    "FP_FUSION",
    "launch_constexprs",
    "TABLE_BLOCK_N",
]

#: the in-kernel angle needs pos * (32-bit word) < 2**63
MAX_FREQS_POSITION = 2**31 - 1

# 2 pi to 64 significant digits: the fixed-point turns are exact to 2**-96, far beyond fp64
_TWO_PI = 2 * Fraction("3.141592653589793238462643383279502884197169399375105820974944592307816")


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``), as in the test suite."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def turns_fixed_point(inv_freq: torch.Tensor) -> torch.Tensor:
    """``inv_freq / (2 pi)`` as 96-bit fixed-point turns: int64 ``[R, 2]`` = (bits 95..32 as a
    wrapped int64, bits 31..0).  Only the fraction of a turn matters for cos/sin, so the integer
    part of the frequency is dropped modulo 2**64 like every other whole turn."""
    out = []
    for value in inv_freq.detach().to("cpu", torch.float64).tolist():
        n = int(Fraction(value) * 2**96 / _TWO_PI) % 2**96  # exact rational arithmetic, floor
        hi, lo = n >> 32, n & 0xFFFFFFFF
        out.append((hi - 2**64 if hi >= 2**63 else hi, lo))
    return torch.tensor(out, dtype=torch.int64).reshape(-1, 2)


def _triton():
    return require("triton", "triton")


def _kernels():
    """The jitted functions, imported on first use: triton is optional, and whether it interprets
    is decided when ``@triton.jit`` runs (so TRITON_INTERPRET must be set before this is called)."""
    _triton()
    from . import triton_code as _triton_jit

    return _triton_jit


def _split(value: float) -> tuple[float, float]:
    """A float64 as hi + lo float32 (48 significant bits, far below fp32 rounding)."""
    hi = float(torch.tensor(value, dtype=torch.float32))
    return hi, float(value) - hi


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _check_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not interpreting():
        raise RopeShapeError(
            f"backend='triton' needs CUDA tensors, got a tensor on {t.device} "
            "(set TRITON_INTERPRET=1 before importing triton to run the kernel on the CPU for testing)"
        )


#: Fused multiply-add off, everywhere ropekit compiles or launches a Triton kernel (Triton's own
#: default is on, and its 3.10 release flips that default, so leaving it unset would make the
#: numerics depend on the installed release).  Off, every product and sum rounds on its own:
#: ``x1 * c - x2 * s`` rounds exactly as the reference and the CPU kernels do (bit for bit the same
#: fp32 result, then one rounding to x's dtype), and the in-kernel angle's ``c * hi + c * lo``
#: keeps its two fp64 roundings.  FMA would be *more* accurate by half an ulp of fp32 at most,
#: invisible after rounding to bf16/fp16, but not reproducible against the CPU paths; the
#: rotation is memory-bound, so the extra instructions cost nothing measurable.
FP_FUSION = False

#: tokens per program of the table kernel: 64 made ptxas spill ~20 KB per thread (the fp64
#: cos/sin of 64 x 64 angles in flight at once; benchmarks/triton_report.py), 8 spills nothing
TABLE_BLOCK_N = 8


def launch_constexprs(S, H, R, nt, *, interleaved, inverse, copy_tail, has_y, freqs, f64, interpret=False) -> dict:
    """The compile-time constants of ``rope_kernel`` for one launch (one compiled variant per
    distinct dict); shared by the launcher and the ahead-of-time compile check."""
    BLOCK_R, BLOCK_T = _pow2(max(R, 1)), _pow2(max(nt, 1))
    if interpret:  # few, large programs: the interpreter pays per program, not per element
        BLOCK_S, BLOCK_H = min(_pow2(S), 16), _pow2(H)
    else:  # ~2K elements per tile keeps registers in check and many tiles in flight
        BLOCK_S = 4
        BLOCK_H = max(1, min(_pow2(H), 2048 // (BLOCK_S * BLOCK_R)))
    return dict(
        BLOCK_S=BLOCK_S,
        BLOCK_H=BLOCK_H,
        BLOCK_R=BLOCK_R,
        BLOCK_T=BLOCK_T,
        INTERLEAVED=bool(interleaved),
        INVERSE=bool(inverse),
        COPY_TAIL=bool(copy_tail),
        HAS_Y=bool(has_y),
        FREQS=bool(freqs),
        F64=bool(f64),
    )


def _launch(pairs, cos, sin, pos, *, interleaved, inverse, source, factor=1.0):
    """pairs: [(in4, out4)] with one or two entries (q, then k); out4 may be in4 (in place)."""
    x4, xo = pairs[0]
    y4, yo = pairs[1] if len(pairs) > 1 else (x4, xo)
    B, S, HX, D = x4.shape
    HY = pairs[1][0].shape[2] if len(pairs) > 1 else 0
    R = cos.shape[0] if source == "freqs" else cos.shape[-1]
    if B == 0 or S == 0 or R == 0 and all(i is o for i, o in pairs):
        return
    for t, _ in pairs:
        _check_device(t)
    nt = D - 2 * R
    copy_tail = nt > 0 and any(i is not o for i, o in pairs)
    meta = launch_constexprs(
        S,
        max(HX, HY),
        R,
        nt,
        interleaved=interleaved,
        inverse=inverse,
        copy_tail=copy_tail,
        has_y=len(pairs) > 1,
        freqs=source == "freqs",
        f64=x4.dtype == torch.float64,
        interpret=interpreting(),
    )
    BLOCK_S, BLOCK_H = meta["BLOCK_S"], meta["BLOCK_H"]
    n_s = -(-S // BLOCK_S)
    n_hb = -(-max(HX, HY) // BLOCK_H)
    # few tokens (decode): spread head blocks over programs so the GPU still fills up
    G = 1 if interpreting() else max(1, min(n_hb, -(-512 // (n_s * B))))
    k = _kernels()
    sc = (0, 0) if source == "freqs" else (cos.stride(0), cos.stride(1))
    k.rope_kernel[(n_s, B, G)](
        x4,
        xo,
        y4,
        yo,
        cos,
        sin,
        pos,
        *_split(factor),
        S,
        HX,
        HY,
        R,
        nt,
        G,
        *x4.stride(),
        *xo.stride(),
        *y4.stride(),
        *yo.stride(),
        pos.stride(0),
        pos.stride(1),
        *sc,
        **meta,
        enable_fp_fusion=FP_FUSION,
    )


def _tables(cos, sin, source):
    if source == "freqs":
        if cos.dtype != torch.int64 or cos.dim() != 2 or cos.shape[1] != 2:
            raise RopeShapeError(
                f"source='freqs' needs fixed-point turns int64 [R, 2] (turns_fixed_point), "
                f"got {cos.dtype} {list(cos.shape)}"
            )
        return cos.contiguous(), cos  # no sin table: the factor travels as two floats
    if source != "table":
        raise RopeShapeError(f"source={source!r} must be 'table' or 'freqs'")
    return cos, sin  # any float dtype and strides: rounded to the math dtype on load


def rotate_triton(
    x4, cos, sin, pos, *, interleaved: bool, inverse: bool, inplace: bool, source: str = "table", factor: float = 1.0
) -> torch.Tensor:
    """The kernel contract of ``kernels.reference`` on one tensor (``source="freqs"``: ``cos`` is
    ``turns_fixed_point(inv_freq)`` and ``factor`` the attention factor; ``sin`` is ignored)."""
    cos, sin = _tables(cos, sin, source)
    out = x4 if inplace else torch.empty_like(x4)
    _launch([(x4, out)], cos, sin, pos, interleaved=interleaved, inverse=inverse, source=source, factor=factor)
    return out


def rotate_qk_triton(
    q4,
    k4,
    cos,
    sin,
    pos,
    *,
    interleaved: bool,
    inverse: bool,
    inplace: bool,
    source: str = "table",
    factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k in one launch (same dtype, tokens and head_dim; head counts may differ)."""
    if q4.dtype != k4.dtype:
        raise RopeShapeError(f"q ({q4.dtype}) and k ({k4.dtype}) must have the same dtype for the fused kernel")
    cos, sin = _tables(cos, sin, source)
    qo = q4 if inplace else torch.empty_like(q4)
    ko = k4 if inplace else torch.empty_like(k4)
    _launch([(q4, qo), (k4, ko)], cos, sin, pos, interleaved=interleaved, inverse=inverse, source=source, factor=factor)
    return qo, ko


def cos_sin_triton(
    fixed: torch.Tensor, positions: torch.Tensor, factor: float = 1.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-kernel cos/sin written out as tables ``positions.shape + (R,)`` (for checking the
    angle arithmetic against an exact oracle; the rotation kernel never materializes them)."""
    pos = positions.reshape(-1).to(torch.int64).contiguous()
    _check_device(pos)
    if pos.numel() and int(pos.max()) > MAX_FREQS_POSITION:
        raise RopePositionError(f"position {int(pos.max())} exceeds {MAX_FREQS_POSITION}, the in-kernel angle's range")
    R = fixed.shape[0]
    cos = torch.empty(pos.numel(), R, dtype=dtype, device=pos.device)
    sin = torch.empty_like(cos)
    if pos.numel():
        BLOCK_N = 64 if interpreting() else TABLE_BLOCK_N  # the interpreter pays per program
        _kernels().table_kernel[(-(-pos.numel() // BLOCK_N),)](
            fixed.contiguous(),
            pos,
            cos,
            sin,
            pos.numel(),
            R,
            *_split(factor),
            BLOCK_N=BLOCK_N,
            BLOCK_R=_pow2(R),
            enable_fp_fusion=FP_FUSION,
        )
    return cos.reshape(*positions.shape, R), sin.reshape(*positions.shape, R)
