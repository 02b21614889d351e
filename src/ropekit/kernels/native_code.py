"""The C source of the native CPU rotation (built once per machine by ``kernels.native``).

Plain C, no torch headers: it compiles in well under a second, so a machine pays the build once,
in the background, and every later process only loads the cached shared library.

Numerics: exactly the reference's arithmetic.  Each output is ``x1 * c - x2 * s`` (resp.
``x2 * c + x1 * s``) in the math dtype with every product and sum rounded on its own
(``-ffp-contract=off``: no fused multiply-add, which would round once where the reference
rounds twice), then rounded once into x's dtype (bf16 by round-to-nearest-even as torch's CPU
conversion does, a NaN as its 0xffff; fp16 by the hardware conversion).  So the output is bit
for bit the reference's (tested).

One exported entry, ``rope_run(args, row0, row1, check)``, rotates one or more tensors (q and k)
by the same positions: ``args`` is one int64 array (layout in ``ARGS``/``PER_TENSOR``, packed by
``kernels.native``), so a call from Python is one foreign call of four arguments, not one of
twenty-five per tensor.  With ``check`` it first reads every position and returns before writing
anything when one lies outside the table: an in-place call never half-rotates its input.

Each (token, head) row is first read into two local arrays of the math dtype (de-interleaved
for the interleaved layout): the rotation then reads nothing it writes, so in place is one pass
with no scratch buffer, and any stride of x is handled by the same loop.

Big out-of-place calls (``stream`` set by ``kernels.native``) populate fresh output pages a chunk
at a time (one ``madvise`` per 256 KiB instead of a page fault per 4 KiB) and write those chunks
through the cache, where the zeroed lines now are; chunks of memory already mapped (handed out
again by the allocator, not in cache) are written with streaming stores (``movntps``/``movntdq``:
the same values, written around the cache, so no line is read just to be overwritten).

The SIMD steps (AVX-512 or SSE4.1, whichever the build machine has) live in ``native_simd``.
"""

from .native_simd import SIMD_SOURCE

#: the most rotary pairs of one row (the kernel stages a row in arrays of this size on its stack)
MAX_PAIRS = 4096
#: fresh output pages are populated this many bytes at a time, each chunk just before it is written
POPULATE_BYTES = 1 << 18

#: the header of ``args``: dtype code (0 fp32, 1 bf16, 2 fp16, 3 fp64), tensors, table and position
#: pointers, table rows P, batch B, sequence S, pairs R, position strides, flags
ARGS = ("dtype", "n", "cos", "sin", "pos", "P", "B", "S", "R", "pb", "ps", "interleaved", "inverse", "stream")
#: (pos 0: no position tensor, token s of every sequence takes row pb + s)
#: then, per tensor: its pointers, heads, head dim, strides of x and out, copy_tail
PER_TENSOR = ("x", "o", "H", "D", "xb", "xs", "xh", "xd", "ob", "os", "oh", "od", "copy_tail")

C_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#if defined(__linux__)
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#endif

typedef int64_t i64;
#define MAX_PAIRS @MAX_PAIRS@
#define POPULATE_BYTES @POPULATE_BYTES@
/* each contiguous row asks for the bytes this far ahead of it: the hardware prefetcher alone left
   the rotation ~1.6x a copy's time in place (it works on a row's two halves and the tables at
   once); measured on a Xeon, 2 threads, Llama-3-8B heads at S=4096: in place bf16 2.4 -> 2.1 ms,
   fp32 4.7 -> 2.4-3.4 ms, out of place 0.91 -> 0.89x (fp32) and 1.24 -> 1.15x (bf16) clone() */
#define PREFETCH_BYTES 4096

/* Fresh output memory: the first write to each page is a fault in which the OS zeroes it.
   MADV_POPULATE_WRITE (Linux 5.14) takes a chunk's faults in one call, just before the chunk is
   written (so the zeroed pages are still in cache); it changes no byte.  Only whole pages inside
   [start, start + bytes) are asked for, and only when the first of them is not mapped yet
   (mincore): memory the allocator hands out again is mapped already, and asking for it costs a
   walk of its pages for nothing.  An older kernel (EINVAL) is not asked again.  Returns whether
   the chunk was fresh: its lines were then just zeroed into the cache (by the populate or by the
   faults), and the caller writes them through the cache, not around it (a streaming store to a
   cached line first evicts it: measured on a Xeon, S=4096 fp32 out of place 20 ms streamed
   against 14 ms cached, clone() 15.5 ms). */
#if defined(__linux__)
static long page_size = 0;
static int populate_ok = 1;
static int populate(void *start, i64 bytes) {
    if (page_size <= 0) page_size = sysconf(_SC_PAGESIZE);
    if (page_size <= 0) return 0;
    const uintptr_t mask = (uintptr_t)page_size - 1;
    const uintptr_t first = ((uintptr_t)start + mask) & ~mask, end = ((uintptr_t)start + (uintptr_t)bytes) & ~mask;
    unsigned char mapped = 0;
    if (end <= first || mincore((void *)first, (size_t)page_size, &mapped) != 0 || (mapped & 1)) return 0;
    if (populate_ok && madvise((void *)first, end - first, MADV_POPULATE_WRITE) != 0 && errno == EINVAL)
        populate_ok = 0;
    return 1;
}
#else
static int populate(void *start, i64 bytes) { (void)start; (void)bytes; return 0; }
#endif

static inline float bf16_load(const uint16_t *p) {
    uint32_t u = (uint32_t)(*p) << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline void bf16_store(uint16_t *p, float f) {
    uint32_t u; memcpy(&u, &f, 4);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;   /* round to nearest even */
    *p = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? 0xffffu : rounded); /* NaN: what x.to(bfloat16) writes */
}
static inline float f16_load(const _Float16 *p) { return (float)(*p); }
static inline void f16_store(_Float16 *p, float f) { *p = (_Float16)f; }
static inline float f32_load(const float *p) { return *p; }
static inline void f32_store(float *p, float f) { *p = f; }
static inline double f64_load(const double *p) { return *p; }
static inline void f64_store(double *p, double f) { *p = f; }

@SIMD@
#define NO_SIMD(x, o, c, sn, R) 0

/* one contiguous half-layout row (pairs i, R + i), out of place (restrict: x and o never overlap,
   so the loop vectorizes without alias checks) or in place (one pointer: each iteration reads its
   two elements before it writes them); SIMD does the pairs it can first (0 where there is none) */
#define DEFINE_ROWS(NAME, T, M, LOAD, STORE, SIMD, PAIRS_SIMD, STREAM, PAIRS_STREAM)                              \
/* pairs i..R-1 of an out-of-place half-layout row, one at a time (after the SIMD steps) */                       \
static inline void NAME##_row_from(const T *restrict x, T *restrict o, const M *restrict c,                       \
                                   const M *restrict sn, i64 i, i64 R) {                                          \
    for (; i < R; ++i) {                                                                                          \
        const M a = LOAD(x + i), b = LOAD(x + R + i);                                                             \
        STORE(o + i, a * c[i] - b * sn[i]);                                                                       \
        STORE(o + R + i, b * c[i] + a * sn[i]);                                                                   \
    }                                                                                                             \
}                                                                                                                 \
static inline void NAME##_row(const T *restrict x, T *restrict o, const M *restrict c,                            \
                              const M *restrict sn, i64 R) {                                                      \
    NAME##_row_from(x, o, c, sn, SIMD(x, o, c, sn, R), R);                                                        \
}                                                                                                                 \
static inline void NAME##_row_inplace(T *y, const M *restrict c, const M *restrict sn, i64 R) {                   \
    for (i64 i = SIMD(y, y, c, sn, R); i < R; ++i) {                                                              \
        const M a = LOAD(y + i), b = LOAD(y + R + i);                                                             \
        STORE(y + i, a * c[i] - b * sn[i]);                                                                       \
        STORE(y + R + i, b * c[i] + a * sn[i]);                                                                   \
    }                                                                                                             \
}                                                                                                                 \
/* one contiguous interleaved row (pairs 2i, 2i + 1), in place or not (each pair read first) */                   \
static inline void NAME##_pairs_from(const T *x, T *o, const M *restrict c, const M *restrict sn, i64 i, i64 R) { \
    for (; i < R; ++i) {                                                                                          \
        const M a = LOAD(x + 2 * i), b = LOAD(x + 2 * i + 1);                                                     \
        STORE(o + 2 * i, a * c[i] - b * sn[i]);                                                                   \
        STORE(o + 2 * i + 1, b * c[i] + a * sn[i]);                                                               \
    }                                                                                                             \
}                                                                                                                 \
static inline void NAME##_pairs(const T *x, T *o, const M *restrict c, const M *restrict sn, i64 R) {             \
    NAME##_pairs_from(x, o, c, sn, PAIRS_SIMD(x, o, c, sn, R), R);                                                \
}                                                                                                                 \
/* the same two out of place, with streaming stores where there are SIMD steps for them */                        \
static inline void NAME##_row_stream(const T *restrict x, T *restrict o, const M *restrict c,                     \
                                     const M *restrict sn, i64 R) {                                               \
    NAME##_row_from(x, o, c, sn, STREAM(x, o, c, sn, R), R);                                                      \
}                                                                                                                 \
static inline void NAME##_pairs_stream(const T *x, T *o, const M *restrict c, const M *restrict sn, i64 R) {      \
    NAME##_pairs_from(x, o, c, sn, PAIRS_STREAM(x, o, c, sn, R), R);                                              \
}

/* rows [row0, row1) of the B*S token rows; returns 0, or 1 + the row whose position is outside
   the table (nothing of that row is written) */
#define DEFINE_ROPE(NAME, T, M, LOAD, STORE, PAIRS)                                                     \
static i64 NAME(const T *x, T *o, const M *cos, const M *sin, const i64 *pos, i64 P,                    \
         i64 S, i64 H, i64 R, i64 D, i64 row0, i64 row1,                                        \
         i64 xb, i64 xs, i64 xh, i64 xd, i64 ob, i64 os, i64 oh, i64 od, i64 pb, i64 ps,        \
         i64 interleaved, i64 inverse, i64 copy_tail, i64 stream) {                             \
    M x1[MAX_PAIRS], x2[MAX_PAIRS], sn[MAX_PAIRS];                                              \
    if (R > MAX_PAIRS) return -1;                                                               \
    const M sign = inverse ? (M)-1 : (M)1;                                                      \
    const i64 e1 = interleaved ? 2 : 1, e2 = interleaved ? 1 : R; /* pair i: e1*i, e1*i + e2 */ \
    /* streaming into one contiguous block of rows: its pages are populated a chunk at a time */ \
    /* (fresh chunks are written through the cache: see populate) */                            \
    const int fill = stream && od == 1 && oh == D && os == H * D && ob == S * os;               \
    const i64 chunk = fill ? POPULATE_BYTES / (os * (i64)sizeof(T)) + 1 : 1;                    \
    int nt = stream; /* this chunk's rows are written around the cache */                       \
    for (i64 row = row0; row < row1; ++row) {                                                   \
        const i64 b = row / S, s = row % S;                                                     \
        if (fill && (row - row0) % chunk == 0)                                                  \
            nt = !populate(o + row * os, (row1 - row < chunk ? row1 - row : chunk) * os * (i64)sizeof(T)); \
        const i64 p = pos ? pos[b * pb + s * ps] : pb + s; /* no pos: a run of rows from pb */  \
        if (p < 0 || p >= P) return 1 + row;                                                    \
        const M *c = cos + p * R;                                                               \
        for (i64 i = 0; i < R; ++i) sn[i] = sign * sin[p * R + i]; /* exact: a sign flip */     \
        for (i64 h = 0; h < H; ++h) {                                                           \
            const T *xr = x + b * xb + s * xs + h * xh;                                         \
            if (xd == 1) /* the bytes PREFETCH_BYTES ahead, as many as a row */                 \
                for (i64 l = PREFETCH_BYTES; l < PREFETCH_BYTES + D * (i64)sizeof(T); l += 64)  \
                    __builtin_prefetch((const char *)xr + l);                                   \
            T *orow = o + b * ob + s * os + h * oh;                                             \
            if (xd == 1 && od == 1 && !interleaved) { /* the common case: no staging arrays */      \
                if (orow == xr) NAME##_row_inplace(orow, c, sn, R);                                 \
                else {                                                                          \
                    if (nt && (((uintptr_t)orow | (uintptr_t)(R * sizeof(T))) & (STREAM_ALIGN - 1)) == 0) \
                        NAME##_row_stream(xr, orow, c, sn, R);                                  \
                    else NAME##_row(xr, orow, c, sn, R);                                        \
                    if (copy_tail) memcpy(orow + 2 * R, xr + 2 * R, (D - 2 * R) * sizeof(T));   \
                }                                                                               \
                continue;                                                                       \
            }                                                                                   \
            /* interleaved and contiguous, where SIMD steps exist: elsewhere gcc 12 vectorizes this loop's \
               a * c - b * s / b * c + a * s into fused vfmaddsub despite -ffp-contract=off */     \
            if (PAIRS && xd == 1 && od == 1) {                                                  \
                const int aligned = ((uintptr_t)orow & (STREAM_ALIGN - 1)) == 0;                \
                if (nt && orow != xr && aligned) NAME##_pairs_stream(xr, orow, c, sn, R);       \
                else NAME##_pairs(xr, orow, c, sn, R);                                          \
                if (copy_tail && orow != xr) memcpy(orow + 2 * R, xr + 2 * R, (D - 2 * R) * sizeof(T)); \
                continue;                                                                       \
            }                                                                                   \
            if (xd == 1 && !interleaved) {                                                      \
                for (i64 i = 0; i < R; ++i) { x1[i] = LOAD(xr + i); x2[i] = LOAD(xr + R + i); } \
            } else {                                                                            \
                for (i64 i = 0; i < R; ++i) {                                                   \
                    x1[i] = LOAD(xr + e1 * i * xd); x2[i] = LOAD(xr + (e1 * i + e2) * xd);      \
                }                                                                               \
            }                                                                                   \
            if (od == 1 && !interleaved) {                                                      \
                for (i64 i = 0; i < R; ++i) {                                                   \
                    STORE(orow + i, x1[i] * c[i] - x2[i] * sn[i]);                              \
                    STORE(orow + R + i, x2[i] * c[i] + x1[i] * sn[i]);                          \
                }                                                                               \
            } else if (od == 1) {                                                               \
                for (i64 i = 0; i < R; ++i) {                                                   \
                    STORE(orow + 2 * i, x1[i] * c[i] - x2[i] * sn[i]);                          \
                    STORE(orow + 2 * i + 1, x2[i] * c[i] + x1[i] * sn[i]);                      \
                }                                                                               \
            } else {                                                                            \
                for (i64 i = 0; i < R; ++i) {                                                   \
                    STORE(orow + e1 * i * od, x1[i] * c[i] - x2[i] * sn[i]);                    \
                    STORE(orow + (e1 * i + e2) * od, x2[i] * c[i] + x1[i] * sn[i]);             \
                }                                                                               \
            }                                                                                   \
            if (copy_tail) { /* out of place: dims >= 2R pass through, bit for bit */           \
                if (xd == 1 && od == 1) memcpy(orow + 2 * R, xr + 2 * R, (D - 2 * R) * sizeof(T)); \
                else for (i64 d = 2 * R; d < D; ++d) orow[d * od] = xr[d * xd];                 \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
    return 0;                                                                                   \
}

DEFINE_ROWS(rope_f32, float, float, f32_load, f32_store, f32_rows_simd, NO_SIMD, f32_rows_stream, NO_SIMD)
DEFINE_ROWS(rope_bf16, uint16_t, float, bf16_load, bf16_store, bf16_rows_simd, bf16_pairs_simd, bf16_rows_stream,
            bf16_pairs_stream)
DEFINE_ROWS(rope_f16, _Float16, float, f16_load, f16_store, NO_SIMD, NO_SIMD, NO_SIMD, NO_SIMD)
DEFINE_ROWS(rope_f64, double, double, f64_load, f64_store, NO_SIMD, NO_SIMD, NO_SIMD, NO_SIMD)
DEFINE_ROPE(rope_f32, float, float, f32_load, f32_store, 0)
DEFINE_ROPE(rope_bf16, uint16_t, float, bf16_load, bf16_store, BF16_PAIRS)
DEFINE_ROPE(rope_f16, _Float16, float, f16_load, f16_store, 0)
DEFINE_ROPE(rope_f64, double, double, f64_load, f64_store, 0)

enum { A_DTYPE, A_N, A_COS, A_SIN, A_POS, A_P, A_B, A_S, A_R, A_PB, A_PS, A_INTERLEAVED, A_INVERSE, A_STREAM, A_HEAD };
enum { T_X, T_O, T_H, T_D, T_XB, T_XS, T_XH, T_XD, T_OB, T_OS, T_OH, T_OD, T_COPY_TAIL, T_PER };

#define CALL_ROPE(NAME, T, M)                                                                       \
    NAME((const T *)(intptr_t)u[T_X], (T *)(intptr_t)u[T_O], (const M *)(intptr_t)a[A_COS],         \
         (const M *)(intptr_t)a[A_SIN], pos, a[A_P], a[A_S], u[T_H], a[A_R], u[T_D], row0, row1,    \
         u[T_XB], u[T_XS], u[T_XH], u[T_XD], u[T_OB], u[T_OS], u[T_OH], u[T_OD], a[A_PB], a[A_PS],  \
         a[A_INTERLEAVED], a[A_INVERSE], u[T_COPY_TAIL], a[A_STREAM])

/* rows [row0, row1) of every tensor in args; 0, -1 (too many pairs), or 1 + the first row whose
   position is outside the table (with check: found before anything is written) */
i64 rope_run(const i64 *a, i64 row0, i64 row1, i64 check) {
    const i64 *pos = (const i64 *)(intptr_t)a[A_POS];
    if (check) {
        for (i64 row = 0; row < a[A_B] * a[A_S]; ++row) {
            const i64 s = row % a[A_S];
            const i64 p = pos ? pos[(row / a[A_S]) * a[A_PB] + s * a[A_PS]] : a[A_PB] + s;
            if (p < 0 || p >= a[A_P]) return 1 + row;
        }
    }
    i64 bad = 0;
    for (i64 t = 0; t < a[A_N] && !bad; ++t) {
        const i64 *u = a + A_HEAD + t * T_PER;
        bad = -1;
        switch (a[A_DTYPE]) {
            case 0: bad = CALL_ROPE(rope_f32, float, float); break;
            case 1: bad = CALL_ROPE(rope_bf16, uint16_t, float); break;
            case 2: bad = CALL_ROPE(rope_f16, _Float16, float); break;
            case 3: bad = CALL_ROPE(rope_f64, double, double); break;
        }
    }
    if (a[A_STREAM]) STREAM_FENCE(); /* streamed stores are visible before the caller's join */
    return bad;
}
"""
C_SOURCE = C_SOURCE.replace("@MAX_PAIRS@", str(MAX_PAIRS)).replace("@POPULATE_BYTES@", str(POPULATE_BYTES))
C_SOURCE = C_SOURCE.replace("@SIMD@", SIMD_SOURCE)
