/*
 * AVX-512 variants (F, BW, VL, DQ and VPOPCNTDQ).  Every function carries its own
 * target attribute, so this file is compiled without any -m flag and the code only runs
 * after ob_driver.c has checked the CPU at run time.
 */
#include "ob_kernels.h"

#if OB_X86
#include <immintrin.h>

#define OB_T512                                                                          \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,avx2,fma," \
                          "bmi,bmi2,popcnt")))
#define OB_INL static inline __attribute__((always_inline))

/* ------------------------------------------------------------------ pack_bits */

OB_T512 static void z_pack_bits(const float *x, int64_t ldx, uint64_t *out, int64_t ldo,
                                int64_t rows, int64_t K) {
    const int64_t kfull = K / 64;
    const int64_t rem = K - kfull * 64;
    const __m512 zero = _mm512_setzero_ps();
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        uint64_t *orow = out + r * ldo;
        for (int64_t w = 0; w < kfull; w++) {
            const float *q = xr + w * 64;
            const uint64_t b0 = _mm512_cmp_ps_mask(_mm512_loadu_ps(q), zero, _CMP_GE_OQ);
            const uint64_t b1 = _mm512_cmp_ps_mask(_mm512_loadu_ps(q + 16), zero, _CMP_GE_OQ);
            const uint64_t b2 = _mm512_cmp_ps_mask(_mm512_loadu_ps(q + 32), zero, _CMP_GE_OQ);
            const uint64_t b3 = _mm512_cmp_ps_mask(_mm512_loadu_ps(q + 48), zero, _CMP_GE_OQ);
            orow[w] = b0 | (b1 << 16) | (b2 << 32) | (b3 << 48);
        }
        if (rem > 0) {
            const float *q = xr + kfull * 64;
            uint64_t word = 0;
            for (int part = 0; part < 4; part++) {
                const int64_t nq = ob_min64(16, rem - 16 * part);
                if (nq <= 0) break;
                const __mmask16 lm = (__mmask16)((1u << nq) - 1u);
                const __m512 v = _mm512_maskz_loadu_ps(lm, q + 16 * part);
                const uint64_t b = _mm512_mask_cmp_ps_mask(lm, v, zero, _CMP_GE_OQ);
                word |= b << (16 * part);
            }
            orow[kfull] = word;
        }
    }
}

/* ------------------------------------------------------------------ xnor_gemm */

/*
 * B is repacked per panel of 32 rows into "k-major" order bt[k * 32 + j] = B[n0 + j][k],
 * so that one 512-bit load holds word k of 8 different B rows.  The micro-kernel
 * broadcasts one word of A and XORs it against 4 such vectors: the lanes of the
 * accumulators are output columns, so no horizontal reduction is needed.
 */
#define Z_XNR 32
#define Z_XMR 6

OB_T512 OB_INL void z_transpose8x8_epi64(__m512i r[8]) {
    const __m512i t0 = _mm512_unpacklo_epi64(r[0], r[1]);
    const __m512i t1 = _mm512_unpackhi_epi64(r[0], r[1]);
    const __m512i t2 = _mm512_unpacklo_epi64(r[2], r[3]);
    const __m512i t3 = _mm512_unpackhi_epi64(r[2], r[3]);
    const __m512i t4 = _mm512_unpacklo_epi64(r[4], r[5]);
    const __m512i t5 = _mm512_unpackhi_epi64(r[4], r[5]);
    const __m512i t6 = _mm512_unpacklo_epi64(r[6], r[7]);
    const __m512i t7 = _mm512_unpackhi_epi64(r[6], r[7]);
    const __m512i u0 = _mm512_shuffle_i64x2(t0, t2, 0x88);
    const __m512i u1 = _mm512_shuffle_i64x2(t0, t2, 0xDD);
    const __m512i u2 = _mm512_shuffle_i64x2(t1, t3, 0x88);
    const __m512i u3 = _mm512_shuffle_i64x2(t1, t3, 0xDD);
    const __m512i u4 = _mm512_shuffle_i64x2(t4, t6, 0x88);
    const __m512i u5 = _mm512_shuffle_i64x2(t4, t6, 0xDD);
    const __m512i u6 = _mm512_shuffle_i64x2(t5, t7, 0x88);
    const __m512i u7 = _mm512_shuffle_i64x2(t5, t7, 0xDD);
    r[0] = _mm512_shuffle_i64x2(u0, u4, 0x88);
    r[4] = _mm512_shuffle_i64x2(u0, u4, 0xDD);
    r[2] = _mm512_shuffle_i64x2(u1, u5, 0x88);
    r[6] = _mm512_shuffle_i64x2(u1, u5, 0xDD);
    r[1] = _mm512_shuffle_i64x2(u2, u6, 0x88);
    r[5] = _mm512_shuffle_i64x2(u2, u6, 0xDD);
    r[3] = _mm512_shuffle_i64x2(u3, u7, 0x88);
    r[7] = _mm512_shuffle_i64x2(u3, u7, 0xDD);
}

/* Repack rows [0, ncols) of b (ncols <= 32) into bt; only the first ceil(ncols/8)
 * 8-column groups are written, rows past ncols inside the last group become zero. */
OB_T512 static void z_pack_b_panel(const uint64_t *b, int64_t ldb, int64_t ncols, int64_t Kw,
                                   uint64_t *bt) {
    const int64_t groups = ob_ceil_div(ncols, 8);
    for (int64_t jb = 0; jb < groups; jb++) {
        const int64_t r0 = jb * 8;
        for (int64_t k0 = 0; k0 < Kw; k0 += 8) {
            const int64_t kn = ob_min64(8, Kw - k0);
            const __mmask8 km = (__mmask8)((1u << kn) - 1u);
            __m512i r[8];
            for (int i = 0; i < 8; i++) {
                const uint64_t *src = b + (r0 + i) * ldb + k0;
                r[i] = r0 + i < ncols ? _mm512_maskz_loadu_epi64(km, src) : _mm512_setzero_si512();
                _mm_prefetch((const char *)(src + 8 * ldb), _MM_HINT_T0); /* 8 rows on */
            }
            z_transpose8x8_epi64(r);
            for (int64_t t = 0; t < kn; t++) {
                _mm512_store_si512((void *)(bt + (k0 + t) * Z_XNR + r0), r[t]);
            }
        }
    }
}

OB_T512 OB_INL void z_xnor_tile(const uint64_t *a, int64_t lda, const uint64_t *bt, int64_t Kw,
                                int64_t K, int32_t *c, int64_t ldc, const int mr, const int nv,
                                int64_t ncols) {
    __m512i acc[Z_XMR][4];
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_si512();
    }
    for (int64_t k = 0; k < Kw; k++) {
        const uint64_t *bk = bt + k * Z_XNR;
        __m512i bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) bv[v] = _mm512_loadu_si512((const void *)(bk + 8 * v)); /* panels may be unaligned */
#pragma GCC unroll 8
        for (int i = 0; i < mr; i++) {
            const __m512i av = _mm512_set1_epi64((long long)a[i * lda + k]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) {
                const __m512i x = _mm512_xor_si512(av, bv[v]);
                acc[i][v] = _mm512_add_epi64(acc[i][v], _mm512_popcnt_epi64(x));
            }
        }
    }
    const __m512i kk = _mm512_set1_epi64((long long)K);
#pragma GCC unroll 8
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            const __m512i r = _mm512_sub_epi64(kk, _mm512_slli_epi64(acc[i][v], 1));
            const __m256i r32 = _mm512_cvtepi64_epi32(r);
            const int64_t cols = ncols - 8 * v;
            int32_t *dst = c + i * ldc + 8 * v;
            if (cols >= 8) {
                _mm256_storeu_si256((__m256i *)dst, r32);
            } else {
                _mm256_mask_storeu_epi32(dst, (__mmask8)((1u << cols) - 1u), r32);
            }
        }
    }
}

#define Z_XCASE(MR, NV)                                                  \
    case (MR) * 8 + (NV):                                                \
        z_xnor_tile(a, lda, bt, Kw, K, c, ldc, (MR), (NV), ncols); \
        break;
#define Z_XCASES(MR) Z_XCASE(MR, 1) Z_XCASE(MR, 2) Z_XCASE(MR, 3) Z_XCASE(MR, 4)

OB_T512 static void z_xnor_dispatch(const uint64_t *a, int64_t lda, const uint64_t *bt,
                                    int64_t Kw, int64_t K, int32_t *c, int64_t ldc, int mr,
                                    int nv, int64_t ncols) {
    switch (mr * 8 + nv) {
        Z_XCASES(1)
        Z_XCASES(2)
        Z_XCASES(3)
        Z_XCASES(4)
        Z_XCASES(5)
        Z_XCASES(6)
        default:
            break;
    }
}

OB_T512 static int z_xnor(const ob_xnor_args *p, int64_t m0, int64_t m1, int64_t n0,
                          int64_t n1) {
    const int64_t Kw = p->Kw;
    uint64_t *bt = (uint64_t *)ob_alloc((size_t)(Kw * Z_XNR) * sizeof(uint64_t));
    if (bt == NULL) return -1;
    for (int64_t np = n0; np < n1; np += Z_XNR) {
        const int64_t ncols = ob_min64(Z_XNR, n1 - np);
        const int nv = (int)ob_ceil_div(ncols, 8);
        z_pack_b_panel(p->b + np * p->ldb, p->ldb, ncols, Kw, bt);
        for (int64_t m = m0; m < m1; m += Z_XMR) {
            const int mr = (int)ob_min64(Z_XMR, m1 - m);
            z_xnor_dispatch(p->a + m * p->lda, p->lda, bt, Kw, p->K, p->c + m * p->ldc + np,
                            p->ldc, mr, nv, ncols);
        }
    }
    ob_free(bt);
    return 0;
}

/* B already in panels (ob_xnor_pack_panels: the layout z_pack_b_panel makes per call): the
 * micro-kernel alone.  n0 is a multiple of Z_XNR. */
OB_T512 static int z_xnor_panels(const ob_xnor_args *p, int64_t m0, int64_t m1, int64_t n0,
                                 int64_t n1) {
    const int64_t Kw = p->Kw;
    for (int64_t np = n0; np < n1; np += Z_XNR) {
        const int64_t ncols = ob_min64(Z_XNR, n1 - np);
        const int nv = (int)ob_ceil_div(ncols, 8);
        const uint64_t *bt = p->b + (np / Z_XNR) * Kw * Z_XNR;
        if (np + Z_XNR < n1) { /* the next panel's first lines (the prefetcher follows on) */
            _mm_prefetch((const char *)(bt + Kw * Z_XNR), _MM_HINT_T0);
            _mm_prefetch((const char *)(bt + Kw * Z_XNR + 8), _MM_HINT_T0);
            _mm_prefetch((const char *)(bt + Kw * Z_XNR + 16), _MM_HINT_T0);
            _mm_prefetch((const char *)(bt + Kw * Z_XNR + 24), _MM_HINT_T0);
        }
        for (int64_t m = m0; m < m1; m += Z_XMR) {
            const int mr = (int)ob_min64(Z_XMR, m1 - m);
            z_xnor_dispatch(p->a + m * p->lda, p->lda, bt, Kw, p->K, p->c + m * p->ldc + np,
                            p->ldc, mr, nv, ncols);
        }
    }
    return 0;
}

/* ------------------------------------------------------------ binary_float_gemm */

/*
 * Lookup-table method with in-register tables.  For one input row and one group of 4
 * inputs the 16 signed sums sum_i (bit_i ? +x_i : -x_i) fill exactly one zmm register;
 * VPERMPS then looks up 16 output columns at once, using the 4 weight bits of each column
 * (low nibble of each 32-bit lane) as the index.  W is repacked per panel of 64 rows so
 * that lane l of a vector holds 32 consecutive weight bits of row l; shifting the vector
 * right by 4 moves to the next group.  One permute + one accumulate = 64 multiply-adds.
 * Port balance (measured on Zen 5): with several rows per tile the accumulate is an FMA
 * with 1.0 (exact, same rounding as an add), which runs beside VPERMPS and the shifts
 * (1.8x faster than VADDPS); with one row the shifts dominate, so they are done as a
 * 16-bit multiply-high by 2^12 (VPMULHUW, on the multiply pipes) with VADDPS accumulates.
 */
#define Z_BNV 4
#define Z_BNB (16 * Z_BNV)
#define Z_BMR 4
#define Z_LUT_BUDGET 32768 /* (rows in block) * (K bits in block) -> 16 B per bit: 512 KiB */

OB_T512 OB_INL void z_transpose16x16_epi32(__m512i r[16]) {
    __m512i t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);
        const __m512i w0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xDD);
        const __m512i v1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);
        const __m512i w1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xDD);
        r[j] = _mm512_shuffle_i32x4(v0, v1, 0x88);
        r[8 + j] = _mm512_shuffle_i32x4(v0, v1, 0xDD);
        r[4 + j] = _mm512_shuffle_i32x4(w0, w1, 0x88);
        r[12 + j] = _mm512_shuffle_i32x4(w0, w1, 0xDD);
    }
}

/* wt[(q * Z_BNV + v) * 16 + l] = dword (dw0 + q) of row 16 v + l; rows >= ncols are zero,
 * dwords past the end of the row (row_dw dwords) are zero. */
OB_T512 static void z_pack_w_panel(const uint64_t *w, int64_t ldw, int64_t ncols, int64_t dw0,
                                   int64_t row_dw, int64_t Q, uint32_t *wt) {
    const int64_t nvec = ob_ceil_div(ncols, 16);
    for (int64_t v = 0; v < nvec; v++) {
        for (int64_t q0 = 0; q0 < Q; q0 += 16) {
            const int64_t avail = ob_min64(16, row_dw - (dw0 + q0));
            const __mmask16 lm = avail >= 16 ? (__mmask16)0xFFFF
                                 : avail <= 0 ? (__mmask16)0
                                              : (__mmask16)((1u << avail) - 1u);
            __m512i r[16];
#pragma GCC unroll 16
            for (int l = 0; l < 16; l++) {
                const int64_t row = 16 * v + l;
                const uint32_t *src = (const uint32_t *)(w + row * ldw) + dw0 + q0;
                r[l] = row < ncols ? _mm512_maskz_loadu_epi32(lm, src) : _mm512_setzero_si512();
                /* Rows are short and read 16 at a time, which the hardware prefetcher does
                 * not follow: fetch the same line of the row 16 rows on (the next vector or
                 * panel).  2.5x faster at batch 1 when W comes from DRAM. */
                _mm_prefetch((const char *)(src + 16 * 2 * ldw), _MM_HINT_T0);
            }
            z_transpose16x16_epi32(r);
            const int64_t qn = ob_min64(16, Q - q0);
            for (int64_t t = 0; t < qn; t++) {
                _mm512_store_si512((void *)(wt + ((q0 + t) * Z_BNV + v) * 16), r[t]);
            }
        }
    }
}

/* Tables for one row: lut[g * 16 + p] = sum_i (bit i of p ? +x[4g+i] : -x[4g+i]). */
OB_T512 static void z_build_lut(const float *xpad, int64_t G, float *lut) {
    const __m512 s0 = _mm512_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1);
    const __m512 s1 = _mm512_setr_ps(-1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1, -1, -1, 1, 1);
    const __m512 s2 = _mm512_setr_ps(-1, -1, -1, -1, 1, 1, 1, 1, -1, -1, -1, -1, 1, 1, 1, 1);
    const __m512 s3 = _mm512_setr_ps(-1, -1, -1, -1, -1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, 1);
    for (int64_t g = 0; g < G; g++) {
        const float *q = xpad + 4 * g;
        __m512 v = _mm512_mul_ps(_mm512_set1_ps(q[0]), s0);
        v = _mm512_fmadd_ps(_mm512_set1_ps(q[1]), s1, v);
        v = _mm512_fmadd_ps(_mm512_set1_ps(q[2]), s2, v);
        v = _mm512_fmadd_ps(_mm512_set1_ps(q[3]), s3, v);
        _mm512_store_ps(lut + g * 16, v);
    }
}

OB_T512 OB_INL void z_bf_tile(const float *lut, int64_t G, const uint32_t *wt, int64_t Q,
                              float *y, int64_t ldy, const int mr, const int nv, int64_t ncols,
                              int first, int last, const float *alpha, const float *bias) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 acc[Z_BMR][Z_BNV];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_ps();
    }
    const __m512i by16 = _mm512_set1_epi16(1 << 12);
    for (int64_t q = 0; q < Q; q++) {
        __m512i idx[Z_BNV], hi[Z_BNV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            idx[v] = _mm512_load_si512((const void *)(wt + (q * Z_BNV + v) * 16));
            if (mr == 1) hi[v] = _mm512_srli_epi32(idx[v], 16);
        }
        const float *lq = lut + q * 8 * 16;
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
#pragma GCC unroll 4
            for (int i = 0; i < mr; i++) {
                const __m512 t = _mm512_load_ps(lq + i * G * 16 + j * 16);
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++) {
                    const __m512 e = _mm512_permutexvar_ps(idx[v], t);
                    if (mr == 1) {
                        acc[i][v] = _mm512_add_ps(acc[i][v], e);
                    } else {
                        acc[i][v] = _mm512_fmadd_ps(e, one, acc[i][v]);
                    }
                }
            }
            if (j < 7) {
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++) {
                    if (mr == 1) { /* next nibble: low 16-bit word * 2^12 >> 16 */
                        idx[v] = j == 3 ? hi[v] : _mm512_mulhi_epu16(idx[v], by16);
                    } else {
                        idx[v] = _mm512_srli_epi32(idx[v], 4);
                    }
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            const int64_t cols = ncols - 16 * v;
            const __mmask16 mk = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1u);
            float *dst = y + i * ldy + 16 * v;
            __m512 r = acc[i][v];
            if (!first) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mk, dst));
            if (last) {
                if (alpha != NULL) r = _mm512_mul_ps(r, _mm512_maskz_loadu_ps(mk, alpha + 16 * v));
                if (bias != NULL) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mk, bias + 16 * v));
            }
            _mm512_mask_storeu_ps(dst, mk, r);
        }
    }
}

#define Z_BCASE(MR, NV)                                                                  \
    case (MR) * 8 + (NV):                                                                \
        z_bf_tile(lut, G, wt, Q, y, ldy, (MR), (NV), ncols, first, last, alpha, bias); \
        break;
#define Z_BCASES(MR) Z_BCASE(MR, 1) Z_BCASE(MR, 2) Z_BCASE(MR, 3) Z_BCASE(MR, 4)

OB_T512 static void z_bf_dispatch(const float *lut, int64_t G, const uint32_t *wt, int64_t Q,
                                  float *y, int64_t ldy, int mr, int nv, int64_t ncols,
                                  int first, int last, const float *alpha, const float *bias) {
    switch (mr * 8 + nv) {
        Z_BCASES(1)
        Z_BCASES(2)
        Z_BCASES(3)
        Z_BCASES(4)
        default:
            break;
    }
}

OB_T512 static int z_bfgemm(const ob_bfgemm_args *p, int64_t m0, int64_t m1, int64_t n0,
                            int64_t n1) {
    const int64_t K = p->K;
    const int64_t mc = ob_min64(m1 - m0, 64);
    int64_t kc = (Z_LUT_BUDGET / mc) / 512 * 512;
    if (kc < 512) kc = 512;
    kc = ob_min64(kc, ob_ceil_div(K, 512) * 512);
    const int64_t qmax = kc / 32;       /* dwords per K block */
    const int64_t gmax = kc / 4;        /* groups per K block */
    float *lut = (float *)ob_alloc((size_t)(mc * gmax * 16) * sizeof(float));
    uint32_t *wt = (uint32_t *)ob_alloc((size_t)(qmax * Z_BNB) * sizeof(uint32_t));
    float *xpad = (float *)ob_alloc((size_t)kc * sizeof(float));
    if (lut == NULL || wt == NULL || xpad == NULL) {
        ob_free(lut);
        ob_free(wt);
        ob_free(xpad);
        return -1;
    }
    const int64_t row_dw = 2 * p->Kw;
    for (int64_t mb = m0; mb < m1; mb += mc) {
        const int64_t mcn = ob_min64(mc, m1 - mb);
        for (int64_t kb = 0; kb < K; kb += kc) {
            const int64_t kn = ob_min64(kc, K - kb);
            const int64_t Q = ob_ceil_div(kn, 32);
            const int64_t G = Q * 8;
            const int first = kb == 0;
            const int last = kb + kc >= K;
            for (int64_t i = 0; i < mcn; i++) {
                const float *xr = p->x + (mb + i) * p->ldx + kb;
                for (int64_t k = 0; k < G * 4; k++) xpad[k] = k < kn ? xr[k] : 0.0f;
                z_build_lut(xpad, G, lut + i * G * 16);
            }
            for (int64_t np = n0; np < n1; np += Z_BNB) {
                const int64_t ncols = ob_min64(Z_BNB, n1 - np);
                const int nv = (int)ob_ceil_div(ncols, 16);
                z_pack_w_panel(p->w + np * p->ldw, p->ldw, ncols, kb / 32, row_dw, Q, wt);
                const float *alpha = p->alpha != NULL ? p->alpha + np : NULL;
                const float *bias = p->bias != NULL ? p->bias + np : NULL;
                for (int64_t m = 0; m < mcn; m += Z_BMR) {
                    const int mr = (int)ob_min64(Z_BMR, mcn - m);
                    z_bf_dispatch(lut + m * G * 16, G, wt, Q, p->y + (mb + m) * p->ldy + np,
                                  p->ldy, mr, nv, ncols, first, last, alpha, bias);
                }
            }
        }
    }
    ob_free(lut);
    ob_free(wt);
    ob_free(xpad);
    return 0;
}

/* -------------------------------------------------------- threshold / scale_bias */

OB_T512 static void z_threshold_f32(const float *y, int64_t ldy, const float *thr,
                                    const uint64_t *flip, uint64_t *out, int64_t ldo,
                                    int64_t rows, int64_t N) {
    const int64_t Nw = ob_ceil_div(N, 64);
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * ldy;
        for (int64_t w = 0; w < Nw; w++) {
            uint64_t word = 0;
            for (int part = 0; part < 4; part++) {
                const int64_t n = w * 64 + 16 * part;
                const int64_t nq = ob_min64(16, N - n);
                if (nq <= 0) break;
                const __mmask16 lm = (__mmask16)((1u << nq) - 1u);
                const __m512 v = _mm512_maskz_loadu_ps(lm, yr + n);
                const __m512 t = _mm512_maskz_loadu_ps(lm, thr + n);
                const uint64_t b = _mm512_mask_cmp_ps_mask(lm, v, t, _CMP_GE_OQ);
                word |= b << (16 * part);
            }
            out[r * ldo + w] = word ^ flip[w];
        }
    }
}

OB_T512 static void z_threshold_i32(const int32_t *y, int64_t ldy, const int32_t *thr,
                                    const uint64_t *flip, uint64_t *out, int64_t ldo,
                                    int64_t rows, int64_t N) {
    const int64_t Nw = ob_ceil_div(N, 64);
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *yr = y + r * ldy;
        for (int64_t w = 0; w < Nw; w++) {
            uint64_t word = 0;
            for (int part = 0; part < 4; part++) {
                const int64_t n = w * 64 + 16 * part;
                const int64_t nq = ob_min64(16, N - n);
                if (nq <= 0) break;
                const __mmask16 lm = (__mmask16)((1u << nq) - 1u);
                const __m512i v = _mm512_maskz_loadu_epi32(lm, yr + n);
                const __m512i t = _mm512_maskz_loadu_epi32(lm, thr + n);
                const uint64_t b = _mm512_mask_cmpge_epi32_mask(lm, v, t);
                word |= b << (16 * part);
            }
            out[r * ldo + w] = word ^ flip[w];
        }
    }
}

OB_T512 static void z_scale_bias(const int32_t *y, int64_t ldy, const float *alpha,
                                 const float *beta, float *out, int64_t ldo, int64_t rows,
                                 int64_t N) {
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *yr = y + r * ldy;
        float *o = out + r * ldo;
        for (int64_t n = 0; n < N; n += 16) {
            const int64_t nq = ob_min64(16, N - n);
            const __mmask16 lm = nq >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nq) - 1u);
            const __m512 v = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(lm, yr + n));
            const __m512 prod = _mm512_mul_ps(_mm512_maskz_loadu_ps(lm, alpha + n), v);
            const __m512 b = _mm512_maskz_loadu_ps(lm, beta + n);
            _mm512_mask_storeu_ps(o + n, lm, _mm512_add_ps(prod, b));
        }
    }
}

/* ---------------------------------------------------------------------- sgemm */

/*
 * float32 GEMM in the BLIS layout.  For each block of Z_SKC rows of B and Z_SNC of its
 * columns, B is packed into strips of Z_SNR columns, "k-major" (bp[k * 64 + j] = B[k, n0 + j]),
 * then A, per block of Z_SMC rows, into micro-panels of Z_SMR rows (ap[k * 6 + i]).  The
 * 6x64 micro-kernel keeps its tile of C in 24 registers, broadcasts one element of A and
 * multiplies it into four vectors of B: 24 FMAs for 10 loads per k.  Both packings read either
 * layout of their operand (a transpose goes through 16x16 register transposes), so the three
 * products of a linear layer's step (x W^T, g W, g^T x) run without copies.  A block of
 * packed B (256 x 1024 floats) stays in the 1 MB L2; the k loop sums in k order with one
 * FMA per term, so results differ from other BLAS only by rounding.
 */
#define Z_SMR 6
#define Z_SNR 64
#define Z_SKC 256
#define Z_SMC 120
#define Z_SNC 1024

OB_INL __mmask16 z_mask16(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* r[i] (row i, 16 columns) -> r[j] (column j, 16 rows) */
OB_T512 OB_INL void z_transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    /* r[4i + c] now holds, in its 128-bit lane L, column 4L + c of rows 4i..4i+3 */
    for (int i = 0; i < 2; i++) {
        for (int c = 0; c < 4; c++) {
            t[8 * i + c] = _mm512_shuffle_f32x4(r[8 * i + c], r[8 * i + 4 + c], 0x88);
            t[8 * i + 4 + c] = _mm512_shuffle_f32x4(r[8 * i + c], r[8 * i + 4 + c], 0xDD);
        }
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xDD);
        r[4 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xDD);
    }
}

/* Pack B[k0 : k0 + kc, n0 : n0 + nc] into strips of Z_SNR columns (zero past nc). */
OB_T512 static void z_pack_b(const ob_sgemm_args *p, int64_t k0, int64_t kc, int64_t n0,
                             int64_t nc, float *out) {
    for (int64_t j = 0; j < nc; j += Z_SNR) {
        const int64_t nr = ob_min64(Z_SNR, nc - j);
        float *o = out + j * kc;
        if (p->csb == 1) { /* rows of B are contiguous: copy 64 columns per k */
            for (int64_t k = 0; k < kc; k++) {
                const float *src = p->b + (k0 + k) * p->rsb + n0 + j;
                for (int q = 0; q < 4; q++) {
                    const __m512 v = _mm512_maskz_loadu_ps(z_mask16(nr - 16 * q), src + 16 * q);
                    _mm512_store_ps(o + k * Z_SNR + 16 * q, v);
                }
            }
            continue;
        }
        /* columns of B are contiguous (B is a transpose): 16 columns x 16 k at a time */
        for (int q = 0; q < 4; q++) {
            const int64_t nq = nr - 16 * q;
            if (nq <= 0) {
                for (int64_t k = 0; k < kc; k++) _mm512_store_ps(o + k * Z_SNR + 16 * q, _mm512_setzero_ps());
                continue;
            }
            const float *src = p->b + (n0 + j + 16 * q) * p->csb + k0 * p->rsb;
            for (int64_t k = 0; k < kc; k += 16) {
                const int64_t kq = ob_min64(16, kc - k);
                const __mmask16 km = z_mask16(kq);
                __m512 r[16];
                for (int i = 0; i < 16; i++) {
                    r[i] = i < nq ? _mm512_maskz_loadu_ps(km, src + i * p->csb + k)
                                  : _mm512_setzero_ps();
                }
                z_transpose16(r);
                for (int i = 0; i < kq; i++) _mm512_store_ps(o + (k + i) * Z_SNR + 16 * q, r[i]);
            }
        }
    }
}

/* Pack A[m0 : m0 + mc, k0 : k0 + kc] into micro-panels of Z_SMR rows (zero past mc). */
OB_T512 static void z_pack_a(const ob_sgemm_args *p, int64_t m0, int64_t mc, int64_t k0,
                             int64_t kc, float *out) {
    const __mmask16 six = z_mask16(Z_SMR);
    for (int64_t i = 0; i < mc; i += Z_SMR) {
        const int64_t mr = ob_min64(Z_SMR, mc - i);
        float *o = out + i * kc;
        if (p->rsa == 1) { /* A is a transpose: the 6 rows of one k are contiguous */
            const __mmask16 rm = z_mask16(mr);
            for (int64_t k = 0; k < kc; k++) {
                const float *src = p->a + (k0 + k) * p->csa + m0 + i;
                _mm512_mask_storeu_ps(o + k * Z_SMR, six, _mm512_maskz_loadu_ps(rm, src));
            }
            continue;
        }
        /* rows of A are contiguous: transpose 6 rows x 16 k at a time */
        const float *src = p->a + (m0 + i) * p->rsa + k0 * p->csa;
        for (int64_t k = 0; k < kc; k += 16) {
            const int64_t kq = ob_min64(16, kc - k);
            const __mmask16 km = z_mask16(kq);
            __m512 r[16];
            for (int q = 0; q < 16; q++) {
                r[q] = q < mr ? _mm512_maskz_loadu_ps(km, src + q * p->rsa + k) : _mm512_setzero_ps();
            }
            z_transpose16(r);
            for (int q = 0; q < kq; q++) _mm512_mask_storeu_ps(o + (k + q) * Z_SMR, six, r[q]);
        }
    }
}

/* C tile (mr <= 6 rows, nr <= 64 columns) (+)= packed A panel x packed B strip. */
OB_T512 static void z_sgemm_6x64(int64_t kc, const float *restrict a, const float *restrict b,
                                 float *c, int64_t ldc, int accumulate, int64_t mr, int64_t nr) {
    __m512 acc[Z_SMR][4];
    for (int i = 0; i < Z_SMR; i++) {
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < kc; k++) {
        const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
        const __m512 b2 = _mm512_load_ps(b + 32), b3 = _mm512_load_ps(b + 48);
        for (int i = 0; i < Z_SMR; i++) {
            const __m512 x = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(x, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(x, b1, acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(x, b2, acc[i][2]);
            acc[i][3] = _mm512_fmadd_ps(x, b3, acc[i][3]);
        }
        a += Z_SMR;
        b += Z_SNR;
    }
    for (int64_t i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        for (int j = 0; j < 4; j++) {
            const __mmask16 m = z_mask16(nr - 16 * j);
            if (!m) break;
            __m512 v = acc[i][j];
            if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, ci + 16 * j));
            _mm512_mask_storeu_ps(ci + 16 * j, m, v);
        }
    }
}

OB_T512 static int z_sgemm(const ob_sgemm_args *p, int64_t m0, int64_t m1, int64_t n0,
                           int64_t n1) {
    const int64_t kc_max = ob_min64(Z_SKC, p->K);
    const int64_t nc_max = ob_min64(Z_SNC, ob_ceil_div(n1 - n0, Z_SNR) * Z_SNR);
    const int64_t mc_max = ob_min64(Z_SMC, ob_ceil_div(m1 - m0, Z_SMR) * Z_SMR);
    float *bp = (float *)ob_alloc((size_t)(kc_max * nc_max) * sizeof(float));
    float *ap = (float *)ob_alloc((size_t)(kc_max * mc_max) * sizeof(float));
    if (bp == NULL || ap == NULL) {
        ob_free(bp);
        ob_free(ap);
        return -1;
    }
    if (p->K <= 0 && !p->accumulate) { /* an empty sum: C = 0 */
        for (int64_t m = m0; m < m1; m++) {
            for (int64_t n = n0; n < n1; n++) p->c[m * p->ldc + n] = 0.0f;
        }
    }
    for (int64_t jc = n0; jc < n1; jc += Z_SNC) {
        const int64_t nc = ob_min64(Z_SNC, n1 - jc);
        for (int64_t pc = 0; pc < p->K; pc += Z_SKC) {
            const int64_t kc = ob_min64(Z_SKC, p->K - pc);
            const int acc = p->accumulate || pc > 0;
            z_pack_b(p, pc, kc, jc, nc, bp);
            for (int64_t ic = m0; ic < m1; ic += Z_SMC) {
                const int64_t mc = ob_min64(Z_SMC, m1 - ic);
                z_pack_a(p, ic, mc, pc, kc, ap);
                for (int64_t jr = 0; jr < nc; jr += Z_SNR) {
                    for (int64_t ir = 0; ir < mc; ir += Z_SMR) {
                        z_sgemm_6x64(kc, ap + ir * kc, bp + jr * kc,
                                     p->c + (ic + ir) * p->ldc + jc + jr, p->ldc, acc,
                                     ob_min64(Z_SMR, mc - ir), ob_min64(Z_SNR, nc - jr));
                    }
                }
            }
        }
    }
    ob_free(bp);
    ob_free(ap);
    return 0;
}

int ob_dconv_avx512(const ob_dconv_args *p, int64_t r0, int64_t r1, int64_t n0, int64_t n1);
int ob_dwconv_avx512(const ob_dwconv_args *p, int64_t r0, int64_t r1);

const ob_isa_table ob_avx512_table = {
    "avx512",        Z_XNR,           Z_BNB,       z_pack_bits, z_xnor, z_bfgemm,
    z_threshold_f32, z_threshold_i32, z_scale_bias, z_sgemm, Z_SMR, Z_SNR, z_xnor_panels,
    ob_dconv_avx512, ob_dwconv_avx512,
    ob_softmax_rows_avx512, ob_layernorm_rows_avx512, ob_gelu_avx512,
};

#endif /* OB_X86 */
