"""The jitted Triton functions behind ``ropekit.kernels.triton`` (imported on first use, so that
TRITON_INTERPRET, read when ``@triton.jit`` runs, can be set by then).  See that module for the
numerics; this file holds only device code.

Kernel arguments are scalars (Triton passes no structs), so the argument lists are long; they are
written grouped by tensor (``# fmt: skip``) instead of one name a line, which would hide the
grouping the strides have.
"""

import triton
import triton.language as tl


@triton.jit
def _cos_sin_from_turns(pos, fix_ptr, i, mask_i, factor_hi, factor_lo):
    # pos [BS, 1] int64, i [1, BR]: the fraction of a turn, exactly, modulo 2**64
    f_hi = tl.load(fix_ptr + 2 * i, mask=mask_i, other=0)
    f_lo = tl.load(fix_ptr + 2 * i + 1, mask=mask_i, other=0)
    turns = pos * f_hi + ((pos * f_lo) >> 32)  # wraps modulo 2**64 = drops whole turns
    # signed 64-bit fraction -> angle in [-pi, pi): 2 pi / 2**64 as one fp64 constant
    angle = turns.to(tl.float64) * 3.4061215800865545e-19
    # the attention factor arrives as two fp32 halves (kernel float arguments are fp32)
    # (each product is exact to fp64 rounding: hi and lo have 24 bits, cos/sin 53)
    c = tl.cos(angle)
    s = tl.sin(angle)
    return c * factor_hi + c * factor_lo, s * factor_hi + s * factor_lo


@triton.jit
def _in_math_precision(a, b, F64: tl.constexpr):
    # at least fp32 math: bf16/fp16 products would lose the rotation's orthogonality
    if F64:
        a = a.to(tl.float64)
        b = b.to(tl.float64)
    else:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return a, b


@triton.jit
def _rotate_tensor(
    in_ptr, out_ptr, offs_s, mask_s, g, G, H, R, NT,
    s_s, s_h, s_d, o_s, o_h, o_d, c3, s3,
    BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
    INTERLEAVED: tl.constexpr, COPY_TAIL: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    # this program's head blocks of one tensor: g, g + G, ... (cos/sin loaded once, reused by all)
    for hb in range(g, tl.cdiv(H, BLOCK_H), G):
        offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
        i = tl.arange(0, BLOCK_R)
        mask_sh = mask_s[:, None, None] & (offs_h < H)[None, :, None]
        mask = mask_sh & (i < R)[None, None, :]
        if INTERLEAVED:
            d1 = 2 * i
            d2 = 2 * i + 1
        else:
            d1 = i
            d2 = i + R
        row_in = in_ptr + offs_s[:, None, None] * s_s + offs_h[None, :, None] * s_h
        row_out = out_ptr + offs_s[:, None, None] * o_s + offs_h[None, :, None] * o_h
        x1 = tl.load(row_in + d1[None, None, :] * s_d, mask=mask, other=0.0)
        x2 = tl.load(row_in + d2[None, None, :] * s_d, mask=mask, other=0.0)
        x1, x2 = _in_math_precision(x1, x2, F64)
        o1 = x1 * c3 - x2 * s3
        o2 = x2 * c3 + x1 * s3
        dt = out_ptr.dtype.element_ty
        tl.store(row_out + d1[None, None, :] * o_d, o1.to(dt), mask=mask)
        tl.store(row_out + d2[None, None, :] * o_d, o2.to(dt), mask=mask)
        if COPY_TAIL:  # out of place only: in place, the tail is neither read nor written
            t = 2 * R + tl.arange(0, BLOCK_T)
            mask_t = mask_sh & (t < 2 * R + NT)[None, None, :]
            tail = tl.load(row_in + t[None, None, :] * s_d, mask=mask_t)
            tl.store(row_out + t[None, None, :] * o_d, tail, mask=mask_t)


@triton.jit
def _load_cos_sin(
    cos_ptr, sin_ptr, pos, mask_s, R, factor_hi, factor_lo, sc_row, sc_col,
    BLOCK_R: tl.constexpr, INVERSE: tl.constexpr, FREQS: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    # cos/sin [BS, 1, BR] for this program's positions, in the math precision (fp32 at least)
    i = tl.arange(0, BLOCK_R)
    mask_i = i < R
    if FREQS:
        c, s = _cos_sin_from_turns(pos[:, None], cos_ptr, i[None, :], mask_i[None, :], factor_hi, factor_lo)
    else:
        m2 = mask_s[:, None] & mask_i[None, :]
        at = pos[:, None] * sc_row + i[None, :] * sc_col
        c = tl.load(cos_ptr + at, mask=m2, other=0.0)
        s = tl.load(sin_ptr + at, mask=m2, other=0.0)
    c, s = _in_math_precision(c, s, F64)
    if INVERSE:  # rotation by -angle: the exact inverse and the backward of the forward
        s = -s
    return c[:, None, :], s[:, None, :]


@triton.jit
def rope_kernel(
    x_ptr, xo_ptr, y_ptr, yo_ptr, cos_ptr, sin_ptr, pos_ptr, factor_hi, factor_lo,
    S, HX, HY, R, NT, G,
    sxb, sxs, sxh, sxd, sob, sos, soh, sod,
    syb, sys_, syh, syd, syob, syos, syoh, syod,
    spb, sps, sc_row, sc_col,
    BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
    INTERLEAVED: tl.constexpr, INVERSE: tl.constexpr, COPY_TAIL: tl.constexpr, HAS_Y: tl.constexpr,
    FREQS: tl.constexpr, F64: tl.constexpr,
):  # fmt: skip
    """Rotates q (x) and, with HAS_Y, k (y) for one block of positions of one sequence; program
    axis 2 takes every G-th block of heads, so that short sequences still fill the device."""
    pid_s = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    g = tl.program_id(2)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask_s = offs_s < S
    offs_s = offs_s.to(tl.int64)
    pos = tl.load(pos_ptr + b * spb + offs_s * sps, mask=mask_s, other=0)
    c3, s3 = _load_cos_sin(
        cos_ptr, sin_ptr, pos, mask_s, R, factor_hi, factor_lo, sc_row, sc_col, BLOCK_R, INVERSE, FREQS, F64
    )
    _rotate_tensor(
        x_ptr + b * sxb, xo_ptr + b * sob, offs_s, mask_s, g, G, HX, R, NT, sxs, sxh, sxd, sos, soh, sod, c3, s3,
        BLOCK_H, BLOCK_R, BLOCK_T, INTERLEAVED, COPY_TAIL, F64,
    )  # fmt: skip
    if HAS_Y:
        _rotate_tensor(
            y_ptr + b * syb, yo_ptr + b * syob, offs_s, mask_s, g, G, HY, R, NT, sys_, syh, syd, syos, syoh, syod,
            c3, s3, BLOCK_H, BLOCK_R, BLOCK_T, INTERLEAVED, COPY_TAIL, F64,
        )  # fmt: skip


@triton.jit
def table_kernel(
    fix_ptr, pos_ptr, cos_ptr, sin_ptr, N, R, factor_hi, factor_lo, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    i = tl.arange(0, BLOCK_R)
    mask = (n < N)[:, None] & (i < R)[None, :]
    pos = tl.load(pos_ptr + n, mask=n < N, other=0)
    c, s = _cos_sin_from_turns(pos[:, None], fix_ptr, i[None, :], (i < R)[None, :], factor_hi, factor_lo)
    at = n[:, None] * R + i[None, :]
    tl.store(cos_ptr + at, c.to(cos_ptr.dtype.element_ty), mask=mask)
    tl.store(sin_ptr + at, s.to(sin_ptr.dtype.element_ty), mask=mask)
