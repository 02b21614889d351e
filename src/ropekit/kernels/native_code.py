"""The C source of the native CPU rotation (built once per machine by ``kernels.native``).

Plain C, no torch headers: it compiles in well under a second, so a machine pays the build once,
in the background, and every later process only loads the cached shared library.

Numerics: exactly the reference's arithmetic.  Each output is ``x1 * c - x2 * s`` (resp.
``x2 * c + x1 * s``) in the math dtype with every product and sum rounded on its own
(``-ffp-contract=off``: no fused multiply-add, which would round once where the reference
rounds twice), then rounded once into x's dtype (bf16 by round-to-nearest-even as torch does,
fp16 by the hardware conversion).  So the output is bit for bit the reference's (tested).

Each (token, head) row is first read into two local arrays of the math dtype (de-interleaved
for the interleaved layout): the rotation then reads nothing it writes, so in place is one pass
with no scratch buffer, and any stride of x is handled by the same loop.
"""

C_SOURCE = r"""
#include <stdint.h>
#include <string.h>

typedef int64_t i64;
#define MAX_PAIRS 4096

static inline float bf16_load(const uint16_t *p) {
    uint32_t u = (uint32_t)(*p) << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline void bf16_store(uint16_t *p, float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) { *p = 0x7fc0; return; }  /* NaN, as torch writes it */
    u += 0x7fffu + ((u >> 16) & 1u);                               /* round to nearest even */
    *p = (uint16_t)(u >> 16);
}
static inline float f16_load(const _Float16 *p) { return (float)(*p); }
static inline void f16_store(_Float16 *p, float f) { *p = (_Float16)f; }
static inline float f32_load(const float *p) { return *p; }
static inline void f32_store(float *p, float f) { *p = f; }
static inline double f64_load(const double *p) { return *p; }
static inline void f64_store(double *p, double f) { *p = f; }

/* rows [row0, row1) of the B*S token rows; returns 0, or 1 + the row whose position is outside
   the table (nothing of that row is written) */
#define DEFINE_ROPE(NAME, T, M, LOAD, STORE)                                                       \
i64 NAME(const T *x, T *o, const M *cos, const M *sin, const i64 *pos, i64 P,                    \
         i64 S, i64 H, i64 R, i64 D, i64 row0, i64 row1,                                        \
         i64 xb, i64 xs, i64 xh, i64 xd, i64 ob, i64 os, i64 oh, i64 od, i64 pb, i64 ps,        \
         i64 interleaved, i64 inverse, i64 copy_tail) {                                         \
    M x1[MAX_PAIRS], x2[MAX_PAIRS], sn[MAX_PAIRS];                                              \
    if (R > MAX_PAIRS) return -1;                                                               \
    const M sign = inverse ? (M)-1 : (M)1;                                                      \
    const i64 e1 = interleaved ? 2 : 1, e2 = interleaved ? 1 : R; /* pair i: e1*i, e1*i + e2 */ \
    for (i64 row = row0; row < row1; ++row) {                                                   \
        const i64 b = row / S, s = row % S;                                                     \
        const i64 p = pos[b * pb + s * ps];                                                     \
        if (p < 0 || p >= P) return 1 + row;                                                    \
        const M *c = cos + p * R;                                                               \
        for (i64 i = 0; i < R; ++i) sn[i] = sign * sin[p * R + i]; /* exact: a sign flip */     \
        for (i64 h = 0; h < H; ++h) {                                                           \
            const T *xr = x + b * xb + s * xs + h * xh;                                         \
            T *orow = o + b * ob + s * os + h * oh;                                             \
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

DEFINE_ROPE(rope_f32, float, float, f32_load, f32_store)
DEFINE_ROPE(rope_bf16, uint16_t, float, bf16_load, bf16_store)
DEFINE_ROPE(rope_f16, _Float16, float, f16_load, f16_store)
DEFINE_ROPE(rope_f64, double, double, f64_load, f64_store)
"""
