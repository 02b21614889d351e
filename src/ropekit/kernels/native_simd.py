"""The x86 SIMD steps of the native CPU rotation (spliced into ``native_code.C_SOURCE``).

Each step function rotates the first pairs of one contiguous row and returns how many it did; the
scalar loops of ``native_code`` finish the rest.  Every step is bit for bit those scalar loops:
the same products and sums, each rounded on its own (no fused multiply-add: the instructions are
written out, and ``-ffp-contract=off`` keeps the compiler from fusing them), and bf16 rounded to
nearest even with a NaN written as 0xffff, as the scalar ``bf16_store`` does (tested on all 65536
bf16 patterns).  Loads come before stores in each step, so ``o == x`` (in place) is fine.

Two sets, chosen when the library is built with ``-march=native``:

* **AVX-512** (F, BW, VL): 16 pairs per step for half-layout rows, 8 for interleaved ones, the
  last step masked, so a whole row is SIMD.  bf16 rows are compute-bound on a CPU: on 2 cores of
  a Xeon with AVX-512, Llama-3-8B heads, a bf16 decode step (32 x 40 x 128) took 52 us in the
  SSE4.1 steps.  bf16 is widened by a zero-extend and shift, not ``vcvtneps2bf16``/``vpdpbf16``:
  AVX512-BF16's conversion flushes subnormals to zero, which torch's conversion does not.
* **SSE4.1**: 8 pairs per step (half layout), 4 (interleaved), the remainder left to the scalar
  loop; what a CPU without AVX-512 (the znver1 machines this was first measured on) runs.

Every set defines the same six step functions (``bf16_rows_simd``, ``bf16_rows_stream``,
``bf16_pairs_simd``, ``bf16_pairs_stream``, ``f32_rows_simd``, ``f32_rows_stream``; a machine
with neither set gets steps that do nothing), ``STREAM_ALIGN``, ``BF16_PAIRS`` and
``STREAM_FENCE``.  The ``*_stream`` variants write with non-temporal stores (around the cache)
and do only whole, aligned steps (``STREAM_ALIGN`` bytes: ``native_code`` streams a row only
when its address and length are multiples of it).
"""

SIMD_SOURCE = r"""
/* a step function that does no pair (for a row kind this machine has no SIMD steps for) */
#define NO_STEPS(NAME, T)                                                                                   \
static inline i64 NAME(const T *x, T *o, const float *c, const float *sn, i64 R) {                           \
    (void)x; (void)o; (void)c; (void)sn; (void)R;                                                            \
    return 0;                                                                                                \
}
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
/* pairs i .. i + n of a step: all 16 (or 8) lanes but in the last step */
static inline __mmask16 lanes16(i64 left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1); }
static inline __m512 bf16_widen16(__m256i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
static inline __m256i bf16_round16(__m512 f) {
    const __m512i u = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
    return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0xffff)));
}
/* half-layout rows, 16 pairs per step; the masked last step makes the whole row */
static inline i64 bf16_rows_simd(const uint16_t *x, uint16_t *o, const float *c, const float *sn, i64 R) {
    for (i64 i = 0; i < R; i += 16) {
        const __mmask16 m = lanes16(R - i);
        const __m512 a = bf16_widen16(_mm256_maskz_loadu_epi16(m, x + i));
        const __m512 b = bf16_widen16(_mm256_maskz_loadu_epi16(m, x + R + i));
        const __m512 cv = _mm512_maskz_loadu_ps(m, c + i), sv = _mm512_maskz_loadu_ps(m, sn + i);
        const __m512 p = _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv));
        const __m512 q = _mm512_add_ps(_mm512_mul_ps(b, cv), _mm512_mul_ps(a, sv));
        _mm256_mask_storeu_epi16(o + i, m, bf16_round16(p));
        _mm256_mask_storeu_epi16(o + R + i, m, bf16_round16(q));
    }
    return R;
}
static inline i64 bf16_rows_stream(const uint16_t *x, uint16_t *o, const float *c, const float *sn, i64 R) {
    i64 i = 0;
    for (; i + 16 <= R; i += 16) {
        const __m512 a = bf16_widen16(_mm256_loadu_si256((const __m256i *)(x + i)));
        const __m512 b = bf16_widen16(_mm256_loadu_si256((const __m256i *)(x + R + i)));
        const __m512 cv = _mm512_loadu_ps(c + i), sv = _mm512_loadu_ps(sn + i);
        const __m512 p = _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv));
        const __m512 q = _mm512_add_ps(_mm512_mul_ps(b, cv), _mm512_mul_ps(a, sv));
        _mm256_stream_si256((__m256i *)(o + i), bf16_round16(p));
        _mm256_stream_si256((__m256i *)(o + R + i), bf16_round16(q));
    }
    return i;
}
/* interleaved rows (pairs 2i, 2i + 1), 8 pairs per 16 values: each table entry is duplicated onto
   its pair, and x * (c, c) + swap(x) * (-s, s) gives a * c - b * s and b * c + a * s with the same
   two roundings (adding -(b * s) is subtracting b * s exactly) */
#define BF16_PAIRS_STEP(V, C8, S8, OUT)                                                                      \
    const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);                       \
    const __m512 flip = _mm512_castsi512_ps(_mm512_set1_epi64(0x80000000ll)); /* the sign of even lanes */     \
    const __m512 cc = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(C8));                                   \
    const __m512 ss = _mm512_xor_ps(_mm512_permutexvar_ps(dup, _mm512_castps256_ps512(S8)), flip);              \
    const __m512 w = _mm512_permute_ps(V, _MM_SHUFFLE(2, 3, 0, 1)); /* (b, a) of each pair */                   \
    const __m256i OUT = bf16_round16(_mm512_add_ps(_mm512_mul_ps(V, cc), _mm512_mul_ps(w, ss)))
static inline i64 bf16_pairs_simd(const uint16_t *x, uint16_t *o, const float *c, const float *sn, i64 R) {
    for (i64 i = 0; i < R; i += 8) {
        const i64 n = R - i >= 8 ? 8 : R - i;
        const __mmask16 m = (__mmask16)((1u << (2 * n)) - 1);
        const __mmask8 m8 = (__mmask8)((1u << n) - 1);
        const __m512 v = bf16_widen16(_mm256_maskz_loadu_epi16(m, x + 2 * i));
        BF16_PAIRS_STEP(v, _mm256_maskz_loadu_ps(m8, c + i), _mm256_maskz_loadu_ps(m8, sn + i), y);
        _mm256_mask_storeu_epi16(o + 2 * i, m, y);
    }
    return R;
}
static inline i64 bf16_pairs_stream(const uint16_t *x, uint16_t *o, const float *c, const float *sn, i64 R) {
    i64 i = 0;
    for (; i + 8 <= R; i += 8) {
        const __m512 v = bf16_widen16(_mm256_loadu_si256((const __m256i *)(x + 2 * i)));
        BF16_PAIRS_STEP(v, _mm256_loadu_ps(c + i), _mm256_loadu_ps(sn + i), y);
        _mm256_stream_si256((__m256i *)(o + 2 * i), y);
    }
    return i;
}
/* fp32 half-layout rows, 16 pairs per step (gcc's own vectorization of the scalar loop stops at
   256 bits and leaves a scalar tail) */
static inline i64 f32_rows_simd(const float *x, float *o, const float *c, const float *sn, i64 R) {
    for (i64 i = 0; i < R; i += 16) {
        const __mmask16 m = lanes16(R - i);
        const __m512 a = _mm512_maskz_loadu_ps(m, x + i), b = _mm512_maskz_loadu_ps(m, x + R + i);
        const __m512 cv = _mm512_maskz_loadu_ps(m, c + i), sv = _mm512_maskz_loadu_ps(m, sn + i);
        const __m512 p = _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv));
        const __m512 q = _mm512_add_ps(_mm512_mul_ps(b, cv), _mm512_mul_ps(a, sv));
        _mm512_mask_storeu_ps(o + i, m, p);
        _mm512_mask_storeu_ps(o + R + i, m, q);
    }
    return R;
}
static inline i64 f32_rows_stream(const float *x, float *o, const float *c, const float *sn, i64 R) {
    i64 i = 0;
    for (; i + 16 <= R; i += 16) {
        const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + R + i);
        const __m512 cv = _mm512_loadu_ps(c + i), sv = _mm512_loadu_ps(sn + i);
        _mm512_stream_ps(o + i, _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv)));
        _mm512_stream_ps(o + R + i, _mm512_add_ps(_mm512_mul_ps(b, cv), _mm512_mul_ps(a, sv)));
    }
    return i;
}
#define STREAM_ALIGN 64
#define BF16_PAIRS 1
#define STREAM_FENCE() _mm_sfence()
#elif defined(__SSE4_1__)
#include <immintrin.h>
static inline __m128i bf16_round4(__m128 f) {
    const __m128i u = _mm_castps_si128(f);
    const __m128i lsb = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
    const __m128i r = _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(u, _mm_set1_epi32(0x7fff)), lsb), 16);
    return _mm_blendv_epi8(r, _mm_set1_epi32(0xffff), _mm_castps_si128(_mm_cmpunord_ps(f, f)));
}
/* one unpack per 4 loads (not a widen + shift), an unordered compare + blend for NaN (not an
   integer range test), no re-masking before the pack: about two thirds of the instructions the
   compiler makes of the scalar loop */
#define BF16_ROWS_SIMD(NAME, STORE128)                                                                       \
static inline i64 NAME(const uint16_t *x, uint16_t *o, const float *c, const float *sn, i64 R) {              \
    const __m128i z = _mm_setzero_si128();                                                                    \
    i64 i = 0;                                                                                                \
    for (; i + 8 <= R; i += 8) {                                                                              \
        const __m128i xa = _mm_loadu_si128((const __m128i *)(x + i));                                        \
        const __m128i xb = _mm_loadu_si128((const __m128i *)(x + R + i));                                    \
        const __m128 a0 = _mm_castsi128_ps(_mm_unpacklo_epi16(z, xa));                                        \
        const __m128 a1 = _mm_castsi128_ps(_mm_unpackhi_epi16(z, xa));                                        \
        const __m128 b0 = _mm_castsi128_ps(_mm_unpacklo_epi16(z, xb));                                        \
        const __m128 b1 = _mm_castsi128_ps(_mm_unpackhi_epi16(z, xb));                                        \
        const __m128 c0 = _mm_loadu_ps(c + i), c1 = _mm_loadu_ps(c + i + 4);                                 \
        const __m128 s0 = _mm_loadu_ps(sn + i), s1 = _mm_loadu_ps(sn + i + 4);                               \
        const __m128 p0 = _mm_sub_ps(_mm_mul_ps(a0, c0), _mm_mul_ps(b0, s0));                                \
        const __m128 p1 = _mm_sub_ps(_mm_mul_ps(a1, c1), _mm_mul_ps(b1, s1));                                \
        const __m128 q0 = _mm_add_ps(_mm_mul_ps(b0, c0), _mm_mul_ps(a0, s0));                                \
        const __m128 q1 = _mm_add_ps(_mm_mul_ps(b1, c1), _mm_mul_ps(a1, s1));                                \
        STORE128((__m128i *)(o + i), _mm_packus_epi32(bf16_round4(p0), bf16_round4(p1)));                    \
        STORE128((__m128i *)(o + R + i), _mm_packus_epi32(bf16_round4(q0), bf16_round4(q1)));                \
    }                                                                                                         \
    return i;                                                                                                 \
}
BF16_ROWS_SIMD(bf16_rows_simd, _mm_storeu_si128)
BF16_ROWS_SIMD(bf16_rows_stream, _mm_stream_si128)
/* interleaved rows, 4 pairs per 8 loaded values (the table duplicated onto each pair, as above) */
#define BF16_PAIRS_SIMD_FN(NAME, STORE128)                                                                   \
static inline i64 NAME(const uint16_t *x, uint16_t *o, const float *c, const float *sn, i64 R) {              \
    const __m128i z = _mm_setzero_si128();                                                                    \
    const __m128 flip = _mm_castsi128_ps(_mm_set_epi32(0, (int)0x80000000u, 0, (int)0x80000000u));           \
    i64 i = 0;                                                                                                \
    for (; i + 4 <= R; i += 4) {                                                                              \
        const __m128i xv = _mm_loadu_si128((const __m128i *)(x + 2 * i));                                    \
        const __m128 v0 = _mm_castsi128_ps(_mm_unpacklo_epi16(z, xv));                                        \
        const __m128 v1 = _mm_castsi128_ps(_mm_unpackhi_epi16(z, xv));                                        \
        const __m128 cv = _mm_loadu_ps(c + i), sv = _mm_loadu_ps(sn + i);                                    \
        const __m128 c0 = _mm_unpacklo_ps(cv, cv), c1 = _mm_unpackhi_ps(cv, cv);                             \
        const __m128 s0 = _mm_xor_ps(_mm_unpacklo_ps(sv, sv), flip), s1 = _mm_xor_ps(_mm_unpackhi_ps(sv, sv), flip); \
        const __m128 w0 = _mm_shuffle_ps(v0, v0, _MM_SHUFFLE(2, 3, 0, 1)); /* (b, a) of each pair */         \
        const __m128 w1 = _mm_shuffle_ps(v1, v1, _MM_SHUFFLE(2, 3, 0, 1));                                   \
        const __m128 y0 = _mm_add_ps(_mm_mul_ps(v0, c0), _mm_mul_ps(w0, s0));                                \
        const __m128 y1 = _mm_add_ps(_mm_mul_ps(v1, c1), _mm_mul_ps(w1, s1));                                \
        STORE128((__m128i *)(o + 2 * i), _mm_packus_epi32(bf16_round4(y0), bf16_round4(y1)));                \
    }                                                                                                         \
    return i;                                                                                                 \
}
BF16_PAIRS_SIMD_FN(bf16_pairs_simd, _mm_storeu_si128)
BF16_PAIRS_SIMD_FN(bf16_pairs_stream, _mm_stream_si128)
/* fp32: gcc vectorizes the scalar loop itself for ordinary stores; streaming, 4 pairs per step */
NO_STEPS(f32_rows_simd, float)
static inline i64 f32_rows_stream(const float *x, float *o, const float *c, const float *sn, i64 R) {
    i64 i = 0;
    for (; i + 4 <= R; i += 4) {
        const __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + R + i);
        const __m128 cv = _mm_loadu_ps(c + i), sv = _mm_loadu_ps(sn + i);
        _mm_stream_ps(o + i, _mm_sub_ps(_mm_mul_ps(a, cv), _mm_mul_ps(b, sv)));
        _mm_stream_ps(o + R + i, _mm_add_ps(_mm_mul_ps(b, cv), _mm_mul_ps(a, sv)));
    }
    return i;
}
#define STREAM_ALIGN 16
#define BF16_PAIRS 1
#define STREAM_FENCE() _mm_sfence()
#else
/* no SIMD: every step does nothing (the scalar loops do the whole row) and interleaved bf16 rows
   take the staging arrays */
NO_STEPS(bf16_rows_simd, uint16_t)
NO_STEPS(bf16_rows_stream, uint16_t)
NO_STEPS(bf16_pairs_simd, uint16_t)
NO_STEPS(bf16_pairs_stream, uint16_t)
NO_STEPS(f32_rows_simd, float)
NO_STEPS(f32_rows_stream, float)
#define STREAM_ALIGN 16
#define BF16_PAIRS 0
#define STREAM_FENCE() ((void)0)
#endif
"""
