/*
 * AVX2 variants (with FMA, POPCNT, BMI2).  Compiled without -m flags: each function
 * carries a target attribute and only runs after a run-time CPU check.
 */
#include "ob_kernels.h"

#if OB_X86
#include <immintrin.h>

#define OB_T2 __attribute__((target("avx2,fma,bmi,bmi2,popcnt")))
#define OB_INL static inline __attribute__((always_inline))

/* ------------------------------------------------------------------ pack_bits */

OB_T2 static void y_pack_bits(const float *x, int64_t ldx, uint64_t *out, int64_t ldo,
                              int64_t rows, int64_t K) {
    const int64_t kfull = K / 64;
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        uint64_t *orow = out + r * ldo;
        for (int64_t w = 0; w < kfull; w++) {
            uint64_t word = 0;
            for (int part = 0; part < 8; part++) {
                const __m256 v = _mm256_loadu_ps(xr + w * 64 + 8 * part);
                const uint64_t b =
                    (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GE_OQ));
                word |= b << (8 * part);
            }
            orow[w] = word;
        }
        if (kfull * 64 < K) {
            uint64_t word = 0;
            for (int64_t k = kfull * 64; k < K; k++) {
                word |= (uint64_t)(xr[k] >= 0.0f) << (k - kfull * 64);
            }
            orow[kfull] = word;
        }
    }
}

/* ------------------------------------------------------------------ xnor_gemm */

/* Byte-wise popcount with a nibble lookup table (PSHUFB); byte counts are summed into
 * 64-bit lanes with PSADBW before they can overflow. */
OB_T2 OB_INL __m256i y_popcnt_bytes(__m256i v, __m256i lut, __m256i low) {
    const __m256i lo = _mm256_and_si256(v, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

OB_T2 OB_INL int64_t y_hsum_epi64(__m256i v) {
    const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

OB_T2 OB_INL void y_xnor_tile(const uint64_t *a, int64_t lda, const uint64_t *b, int64_t ldb,
                              int64_t Kw, int64_t K, int32_t *c, int64_t ldc, const int mr,
                              const int nr) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                         2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i zero = _mm256_setzero_si256();
    __m256i acc[2][2];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) acc[i][j] = zero;
    const int64_t chunks = Kw / 4;
    for (int64_t c0 = 0; c0 < chunks; c0 += 31) {
        const int64_t c1 = ob_min64(chunks, c0 + 31);
        __m256i acc8[2][2];
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++) acc8[i][j] = zero;
        for (int64_t ch = c0; ch < c1; ch++) {
            __m256i av[2], bv[2];
            for (int i = 0; i < mr; i++)
                av[i] = _mm256_loadu_si256((const __m256i *)(a + i * lda + 4 * ch));
            for (int j = 0; j < nr; j++)
                bv[j] = _mm256_loadu_si256((const __m256i *)(b + j * ldb + 4 * ch));
            for (int i = 0; i < mr; i++)
                for (int j = 0; j < nr; j++)
                    acc8[i][j] = _mm256_add_epi8(
                        acc8[i][j], y_popcnt_bytes(_mm256_xor_si256(av[i], bv[j]), lut, low));
        }
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                acc[i][j] = _mm256_add_epi64(acc[i][j], _mm256_sad_epu8(acc8[i][j], zero));
    }
    for (int i = 0; i < mr; i++) {
        for (int j = 0; j < nr; j++) {
            int64_t pc = y_hsum_epi64(acc[i][j]);
            for (int64_t k = chunks * 4; k < Kw; k++) {
                pc += __builtin_popcountll(a[i * lda + k] ^ b[j * ldb + k]);
            }
            c[i * ldc + j] = (int32_t)(K - 2 * pc);
        }
    }
}

OB_T2 static int y_xnor(const ob_xnor_args *p, int64_t m0, int64_t m1, int64_t n0,
                        int64_t n1) {
    for (int64_t m = m0; m < m1; m += 2) {
        const int mr = (int)ob_min64(2, m1 - m);
        for (int64_t n = n0; n < n1; n += 2) {
            const int nr = (int)ob_min64(2, n1 - n);
            const uint64_t *a = p->a + m * p->lda;
            const uint64_t *b = p->b + n * p->ldb;
            int32_t *c = p->c + m * p->ldc + n;
            if (mr == 2 && nr == 2) {
                y_xnor_tile(a, p->lda, b, p->ldb, p->Kw, p->K, c, p->ldc, 2, 2);
            } else if (mr == 2) {
                y_xnor_tile(a, p->lda, b, p->ldb, p->Kw, p->K, c, p->ldc, 2, 1);
            } else if (nr == 2) {
                y_xnor_tile(a, p->lda, b, p->ldb, p->Kw, p->K, c, p->ldc, 1, 2);
            } else {
                y_xnor_tile(a, p->lda, b, p->ldb, p->Kw, p->K, c, p->ldc, 1, 1);
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------ binary_float_gemm */

/* Sign-flip method: 8 weight bits are moved to the sign positions of 8 lanes (VPSLLVD),
 * and XOR-ing them into x negates the inputs whose weight is -1; one add accumulates. */
#define Y_BMR 4

OB_T2 OB_INL float y_hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

OB_T2 OB_INL void y_bf_tile(const float *xp, int64_t ldxp, const uint64_t *w, int64_t ldw,
                            int64_t Kw, float *y, int64_t ldy, int64_t n0, int64_t n1,
                            const float *alpha, const float *bias, const int mr) {
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
    const __m256i sh0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
    const __m256i eight = _mm256_set1_epi32(8);
    const int64_t dwords = 2 * Kw;
    for (int64_t n = n0; n < n1; n++) {
        const uint64_t *wr = w + n * ldw;
        __m256 acc[Y_BMR];
        for (int i = 0; i < mr; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t d = 0; d < dwords; d++) {
            const __m256i bb = _mm256_set1_epi32((int)(uint32_t)(wr[d >> 1] >> (32 * (d & 1))));
            __m256i sh = sh0;
            for (int j = 0; j < 4; j++) {
                const __m256 s =
                    _mm256_castsi256_ps(_mm256_andnot_si256(_mm256_sllv_epi32(bb, sh), sign));
                for (int i = 0; i < mr; i++) {
                    const __m256 xv = _mm256_load_ps(xp + i * ldxp + 32 * d + 8 * j);
                    acc[i] = _mm256_add_ps(acc[i], _mm256_xor_ps(xv, s));
                }
                sh = _mm256_sub_epi32(sh, eight);
            }
        }
        for (int i = 0; i < mr; i++) {
            float v = y_hsum_ps(acc[i]);
            if (alpha != NULL) v = v * alpha[n];
            if (bias != NULL) v = v + bias[n];
            y[i * ldy + n] = v;
        }
    }
}

OB_T2 static int y_bfgemm(const ob_bfgemm_args *p, int64_t m0, int64_t m1, int64_t n0,
                          int64_t n1) {
    const int64_t kp = p->Kw * 64;
    float *xp = (float *)ob_alloc((size_t)(Y_BMR * kp) * sizeof(float));
    if (xp == NULL) return -1;
    for (int64_t m = m0; m < m1; m += Y_BMR) {
        const int mr = (int)ob_min64(Y_BMR, m1 - m);
        for (int i = 0; i < mr; i++) {
            const float *xr = p->x + (m + i) * p->ldx;
            for (int64_t k = 0; k < kp; k++) xp[i * kp + k] = k < p->K ? xr[k] : 0.0f;
        }
        float *y = p->y + m * p->ldy;
        switch (mr) {
            case 4:
                y_bf_tile(xp, kp, p->w, p->ldw, p->Kw, y, p->ldy, n0, n1, p->alpha, p->bias, 4);
                break;
            case 3:
                y_bf_tile(xp, kp, p->w, p->ldw, p->Kw, y, p->ldy, n0, n1, p->alpha, p->bias, 3);
                break;
            case 2:
                y_bf_tile(xp, kp, p->w, p->ldw, p->Kw, y, p->ldy, n0, n1, p->alpha, p->bias, 2);
                break;
            default:
                y_bf_tile(xp, kp, p->w, p->ldw, p->Kw, y, p->ldy, n0, n1, p->alpha, p->bias, 1);
                break;
        }
    }
    ob_free(xp);
    return 0;
}

/* -------------------------------------------------------- threshold / scale_bias */

OB_T2 static void y_threshold_f32(const float *y, int64_t ldy, const float *thr,
                                  const uint64_t *flip, uint64_t *out, int64_t ldo,
                                  int64_t rows, int64_t N) {
    const int64_t Nw = ob_ceil_div(N, 64);
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * ldy;
        for (int64_t w = 0; w < Nw; w++) {
            uint64_t word = 0;
            const int64_t nbase = w * 64;
            const int64_t nn = ob_min64(64, N - nbase);
            int64_t j = 0;
            for (; j + 8 <= nn; j += 8) {
                const __m256 v = _mm256_loadu_ps(yr + nbase + j);
                const __m256 t = _mm256_loadu_ps(thr + nbase + j);
                const uint64_t b =
                    (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, t, _CMP_GE_OQ));
                word |= b << j;
            }
            for (; j < nn; j++) word |= (uint64_t)(yr[nbase + j] >= thr[nbase + j]) << j;
            out[r * ldo + w] = word ^ flip[w];
        }
    }
}

OB_T2 static void y_threshold_i32(const int32_t *y, int64_t ldy, const int32_t *thr,
                                  const uint64_t *flip, uint64_t *out, int64_t ldo,
                                  int64_t rows, int64_t N) {
    const int64_t Nw = ob_ceil_div(N, 64);
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *yr = y + r * ldy;
        for (int64_t w = 0; w < Nw; w++) {
            uint64_t word = 0;
            const int64_t nbase = w * 64;
            const int64_t nn = ob_min64(64, N - nbase);
            int64_t j = 0;
            for (; j + 8 <= nn; j += 8) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(yr + nbase + j));
                const __m256i t = _mm256_loadu_si256((const __m256i *)(thr + nbase + j));
                const uint32_t lt = (uint32_t)_mm256_movemask_ps(
                    _mm256_castsi256_ps(_mm256_cmpgt_epi32(t, v)));
                word |= (uint64_t)(~lt & 0xFFu) << j;
            }
            for (; j < nn; j++) word |= (uint64_t)(yr[nbase + j] >= thr[nbase + j]) << j;
            out[r * ldo + w] = word ^ flip[w];
        }
    }
}

OB_T2 static void y_scale_bias(const int32_t *y, int64_t ldy, const float *alpha,
                               const float *beta, float *out, int64_t ldo, int64_t rows,
                               int64_t N) {
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *yr = y + r * ldy;
        float *o = out + r * ldo;
        int64_t n = 0;
        for (; n + 8 <= N; n += 8) {
            const __m256 v =
                _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(yr + n)));
            const __m256 prod = _mm256_mul_ps(_mm256_loadu_ps(alpha + n), v);
            _mm256_storeu_ps(o + n, _mm256_add_ps(prod, _mm256_loadu_ps(beta + n)));
        }
        for (; n < N; n++) {
            const float prod = alpha[n] * (float)yr[n];
            o[n] = prod + beta[n];
        }
    }
}

int ob_xnor_panels_generic(const ob_xnor_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
int ob_dconv_generic(const ob_dconv_args *p, int64_t r0, int64_t r1, int64_t n0, int64_t n1);
int ob_dwconv_generic(const ob_dwconv_args *p, int64_t r0, int64_t r1);

/* XNOR on prepacked panels and the direct convs: the portable code (the runtime uses them on
 * AVX2 only where they are not slower: see onebit/runtime/ops.py). */
const ob_isa_table ob_avx2_table = {
    "avx2",          2,               2,           y_pack_bits, y_xnor, y_bfgemm,
    y_threshold_f32, y_threshold_i32, y_scale_bias, NULL, 1, 1, ob_xnor_panels_generic,
    ob_dconv_generic, ob_dwconv_generic,
    ob_softmax_rows_avx2, ob_layernorm_rows_avx2, ob_gelu_avx2,
};

#endif /* OB_X86 */
