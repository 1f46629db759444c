/*
 * Binary weights x 8-bit activations (the opt-in "int8 activations" path).
 *
 * Activations are quantized per row (per sample for a conv) to uint8 with a zero point,
 * q = clamp(rint(x * inv) + zero, 0, 255), where [lo, hi] = [min(x, 0), max(x, 0)],
 * inv = 255 / (hi - lo), scale = (hi - lo) / 255 and zero = rint(-lo * inv): 0 is exact.
 * With s(n, k) = +1/-1 from the weight bits, acc = sum_k q[k] * s(n, k) is exact in int32 on every
 * path, so the three paths below (portable C, AVX-512 VNNI, AMX) agree bit for bit; then
 * y = ((float)(acc - zero * wsum[n]) * scale) * alpha[n] + beta[n], wsum[n] = sum_k s(n, k).
 *
 * Weights are read in the "VNNI panel" layout (ob_kernels.h): one 64-bit mask per 16 columns and
 * 4 inputs, which VPBLENDMB turns into the 64 signed bytes (+1/-1) of one VPDPBUSD operand or of
 * one row of an AMX B tile, so the weights stay 1 bit each in memory.
 */
#define _GNU_SOURCE
#include <math.h>
#include <string.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#include "ob_kernels.h"

/* ------------------------------------------------------------ quantization */

#if OB_X86
void ob_minmax_avx512(const float *x, int64_t len, float *lo, float *hi);
#endif

void ob_quant_params(const float *x, int64_t len, float *scale, int32_t *zero, float *inv) {
    float lo = 0.0f, hi = 0.0f;
#if OB_X86
    if (ob_get_isa() >= OB_ISA_AVX512) {
        ob_minmax_avx512(x, len, &lo, &hi);
    } else
#endif
    {
        for (int64_t i = 0; i < len; i++) { /* NaN compares false: ignored */
            lo = x[i] < lo ? x[i] : lo;
            hi = x[i] > hi ? x[i] : hi;
        }
    }
    const float range = hi - lo;
    if (range > 0.0f && range <= 3.0e38f) {
        const float iv = 255.0f / range;
        *inv = iv;
        *scale = range / 255.0f;
        float z = rintf(-lo * iv);
        z = z < 0.0f ? 0.0f : (z > 255.0f ? 255.0f : z);
        *zero = (int32_t)z;
    } else { /* all zeros (or not finite): every q is the zero point 0 */
        *inv = 0.0f;
        *scale = 0.0f;
        *zero = 0;
    }
}

static inline uint8_t quant1(float v, float inv, int32_t z) {
    const float t = v * inv;
    int32_t qi;
    if (t >= -1.0e6f && t <= 1.0e6f) qi = (int32_t)rintf(t) + z;
    else qi = t > 0.0f ? 255 : 0; /* NaN -> 0, as the vector paths' conversion gives */
    return (uint8_t)(qi < 0 ? 0 : (qi > 255 ? 255 : qi));
}

static void quant_rows_generic(const float *x, int64_t ldx, int64_t len, const float *inv,
                               const int32_t *zero, uint8_t *q, int64_t ldq, int64_t rows) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        uint8_t *qr = q + r * ldq;
        for (int64_t i = 0; i < len; i++) qr[i] = quant1(xr[i], inv[r], zero[r]);
    }
}

/* ------------------------------------------------------------ portable GEMM */

static inline int wbit(const ob_u8gemm_args *p, int64_t n, int64_t k) {
    const uint64_t w = p->wp[(n >> 4) * p->kq + (k >> 2)];
    return (int)((w >> (4 * (n & 15) + (k & 3))) & 1u);
}

static inline void epilogue1(const ob_u8gemm_args *p, int64_t m, int64_t n, int32_t acc) {
    float v = (float)(acc - p->zero[m] * p->wsum[n]);
    v = v * p->scale[m];
    if (p->alpha != NULL) v = v * p->alpha[n];
    if (p->beta != NULL) v = v + p->beta[n];
    p->y[m * p->ldy + n] = v;
}

int ob_u8gemm_generic(const ob_u8gemm_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t m = m0; m < m1; m++) {
            const uint8_t *q = p->q + m * p->ldq;
            int32_t acc = 0;
            for (int64_t k = 0; k < p->K; k++) acc += wbit(p, n, k) ? q[k] : -(int32_t)q[k];
            epilogue1(p, m, n, acc);
        }
    }
    return 0;
}

/* ------------------------------------------------------------ AMX permission */

int ob_amx_enable(void) {
    static int state = -1; /* -1 unknown, 0 no, 1 yes (a benign race: same answer) */
    if (state >= 0) return state;
    int ok = 0;
#if OB_X86 && defined(__linux__) && defined(SYS_arch_prctl) && (defined(__GNUC__) || defined(__clang__))
    unsigned a, b, c, d;
    __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    const int tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
    __asm__ __volatile__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    const int osxsave = (c >> 27) & 1;
    if (tile && int8 && osxsave) {
        unsigned lo, hi;
        __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        const int xcr0_tiles = ((lo >> 17) & 3u) == 3u; /* XTILECFG and XTILEDATA enabled */
        /* ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18): once per process */
        if (xcr0_tiles && syscall(SYS_arch_prctl, 0x1023, 18) == 0) ok = 1;
    }
#endif
    state = ok;
    return ok;
}

#if OB_X86
#include <immintrin.h>

#define OB_TV                                                                             \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,bmi,bmi2," \
                          "popcnt")))
#define OB_TA                                                                             \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,bmi,bmi2," \
                          "popcnt,amx-tile,amx-int8")))
#define OB_TQ                                                                          \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,avx2,fma," \
                          "bmi,bmi2,popcnt")))
#define OB_INL static inline __attribute__((always_inline))

OB_TQ OB_INL __mmask16 q_mask16(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

OB_TV OB_INL __mmask16 v_mask16(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* min(x, 0) and max(x, 0), NaN ignored (VMINPS returns its second operand on NaN) */
OB_TQ void ob_minmax_avx512(const float *x, int64_t len, float *lo, float *hi) {
    __m512 l0 = _mm512_setzero_ps(), h0 = l0, l1 = l0, h1 = l0;
    int64_t i = 0;
    for (; i + 32 <= len; i += 32) {
        const __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
        l0 = _mm512_min_ps(a, l0);
        h0 = _mm512_max_ps(a, h0);
        l1 = _mm512_min_ps(b, l1);
        h1 = _mm512_max_ps(b, h1);
    }
    for (; i < len; i += 16) {
        const __m512 a = _mm512_maskz_loadu_ps(q_mask16(len - i), x + i); /* zeros: no change */
        l0 = _mm512_min_ps(a, l0);
        h0 = _mm512_max_ps(a, h0);
    }
    *lo = _mm512_reduce_min_ps(_mm512_min_ps(l0, l1));
    *hi = _mm512_reduce_max_ps(_mm512_max_ps(h0, h1));
}

/* rows of uint8 from floats with per-row inv / zero (AVX-512; rint = the default rounding) */
OB_TQ void ob_quant_rows_avx512(const float *x, int64_t ldx, int64_t len, const float *inv,
                                const int32_t *zero, uint8_t *q, int64_t ldq, int64_t rows) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        uint8_t *qr = q + r * ldq;
        const __m512 iv = _mm512_set1_ps(inv[r]);
        const __m512i z = _mm512_set1_epi32(zero[r]);
        const __m512i lo = _mm512_setzero_si512(), hi = _mm512_set1_epi32(255);
        for (int64_t i = 0; i < len; i += 16) {
            const __mmask16 m = q_mask16(len - i);
            const __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), iv);
            /* NaN and out-of-range values convert to INT_MIN: clamped to 0 */
            __m512i qi = _mm512_add_epi32(_mm512_cvtps_epi32(t), z);
            const __mmask16 big = _mm512_cmp_ps_mask(t, _mm512_set1_ps(1.0e6f), _CMP_GT_OQ);
            qi = _mm512_mask_mov_epi32(qi, big, hi);
            qi = _mm512_min_epi32(_mm512_max_epi32(qi, lo), hi);
            _mm_mask_storeu_epi8(qr + i, m, _mm512_cvtepi32_epi8(qi));
        }
    }
}

/* n bytes from src to dst, or n copies of z when src is NULL (64 bytes per masked op) */
OB_TQ void ob_bytes_avx512(uint8_t *dst, const uint8_t *src, int64_t n, uint8_t z) {
    const __m512i zv = _mm512_set1_epi8((char)z);
    for (int64_t i = 0; i < n; i += 64) {
        const int64_t r = n - i;
        const __mmask64 m = r >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << r) - 1);
        const __m512i v = src != NULL ? _mm512_maskz_loadu_epi8(m, src + i) : zv;
        _mm512_mask_storeu_epi8(dst + i, m, v);
    }
}

/* 64 signed bytes: +1 where the mask bit is set, -1 where clear, 0 where `valid` is clear */
OB_TV OB_INL __m512i v_expand(uint64_t bits, __mmask64 valid) {
    const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
    return _mm512_maskz_mov_epi8(valid, _mm512_mask_blend_epi8((__mmask64)bits, minus, plus));
}

/* byte mask of the quad r: byte 4 j + i valid while 4 r + i < K */
OB_TV OB_INL __mmask64 v_valid(int64_t r, int64_t K) {
    const int64_t nv = K - 4 * r;
    if (nv >= 4) return ~(__mmask64)0;
    if (nv <= 0) return 0;
    const uint64_t one = (UINT64_C(1) << nv) - 1;
    return (__mmask64)(one * UINT64_C(0x1111111111111111));
}

/* y = epilogue of 16 int32 accumulators of row m, columns n..n+cols */
OB_TV OB_INL void v_store(const ob_u8gemm_args *p, int64_t m, int64_t n, int64_t cols,
                          __m512i acc) {
    const __mmask16 mk = v_mask16(cols);
    const __m512i ws = _mm512_maskz_loadu_epi32(mk, p->wsum + n);
    const __m512i d = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_set1_epi32(p->zero[m]), ws));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(p->scale[m]));
    if (p->alpha != NULL) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mk, p->alpha + n));
    if (p->beta != NULL) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, p->beta + n));
    _mm512_mask_storeu_ps(p->y + m * p->ldy + n, mk, v);
}

/* ---------------------------------------------------------------- VNNI GEMM */

#define V_MR 4

OB_TV OB_INL void v_tile(const ob_u8gemm_args *p, int64_t m, int64_t n, int64_t ncols,
                         const int mr, const int nv) {
    __m512i acc[V_MR][4];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_si512();
    }
    const uint64_t *wp = p->wp + (n >> 4) * p->kq;
    const int64_t kq = p->kq;
    const int64_t rfull = p->K / 4, rall = ob_ceil_div(p->K, 4);
    const uint8_t *q = p->q + m * p->ldq;
    const int64_t ldq = p->ldq;
    const __mmask64 all = ~(__mmask64)0;
    for (int64_t r = 0; r < rall; r++) {
        const __mmask64 valid = r < rfull ? all : v_valid(r, p->K);
        __m512i w[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) w[v] = v_expand(wp[v * kq + r], valid);
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            int32_t a4;
            memcpy(&a4, q + i * ldq + 4 * r, 4);
            const __m512i a = _mm512_set1_epi32(a4);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], a, w[v]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) v_store(p, m + i, n + 16 * v, ncols - 16 * v, acc[i][v]);
    }
}

#define V_CASE(MR, NV)                        \
    case (MR) * 8 + (NV):                     \
        v_tile(p, m, n, ncols, (MR), (NV)); \
        break;
#define V_CASES(MR) V_CASE(MR, 1) V_CASE(MR, 2) V_CASE(MR, 3) V_CASE(MR, 4)

OB_TV int ob_u8gemm_vnni(const ob_u8gemm_args *p, int64_t m0, int64_t m1, int64_t n0,
                         int64_t n1) {
    for (int64_t n = n0; n < n1; n += 64) {
        const int64_t ncols = ob_min64(64, n1 - n);
        const int nv = (int)ob_ceil_div(ncols, 16);
        for (int64_t m = m0; m < m1; m += V_MR) {
            const int mr = (int)ob_min64(V_MR, m1 - m);
            switch (mr * 8 + nv) {
                V_CASES(1)
                V_CASES(2)
                V_CASES(3)
                V_CASES(4)
                default:
                    break;
            }
        }
    }
    return 0;
}

/* ----------------------------------------------------------------- AMX GEMM */

/*
 * Tiles: C0..C3 int32 16x16 accumulators, A4/A5 16 rows x 64 uint8 of q, B6/B7 16 quads x 64
 * signed bytes (16 columns x 4 inputs).  For each block of 32 columns the weights are expanded
 * once, for all of K, into a buffer of B tiles (1 KiB each), then every group of rows runs over it:
 * 2x2 tiles (32 rows x 32 columns), or 4x1 (64 rows x 16 columns) when the block has 16 columns.
 * q must be readable for whole tiles: rows up to a multiple of 64 past m1 (the driver pads).
 */
typedef struct {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) a_tilecfg;

OB_TA static void a_config(void) {
    a_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* expand the weights of 16-column panel `panel`, chunks [c0, c0 + kc), into B tiles at dst
 * (tile c at dst + c * stride bytes) */
OB_TA OB_INL void a_expand(const ob_u8gemm_args *p, int64_t panel, int64_t c0, int64_t kc,
                           int8_t *dst, int64_t stride) {
    const uint64_t *wp = p->wp + panel * p->kq;
    for (int64_t c = 0; c < kc; c++) {
        int8_t *d = dst + c * stride;
#pragma GCC unroll 16
        for (int rr = 0; rr < 16; rr++) {
            const int64_t r = (c0 + c) * 16 + rr;
            _mm512_store_si512((void *)(d + rr * 64), v_expand(wp[r], v_valid(r, p->K)));
        }
    }
}

OB_TA OB_INL void a_store_tile(const ob_u8gemm_args *p, const int32_t *scratch, int64_t m,
                               int64_t m1, int64_t n, int64_t ncols) {
    const int64_t rows = ob_min64(16, m1 - m);
    for (int64_t i = 0; i < rows; i++) {
        v_store(p, m + i, n, ncols, _mm512_load_si512((const void *)(scratch + 16 * i)));
    }
}

/* At most 16 rows: one A tile against four B tiles (64 columns), the weights expanded chunk by
 * chunk into a 4 KiB buffer that stays in L1 (each weight is used once per call). */
OB_TA static void a_rows16(const ob_u8gemm_args *p, int64_t m, int64_t m1, int64_t n0,
                           int64_t n1, int8_t *bbuf, int32_t *scratch) {
    const int64_t chunks = ob_ceil_div(p->K, 64), ldq = p->ldq;
    const int64_t npan = ob_ceil_div(n1, 16) - n0 / 16;
    for (int64_t n = n0; n < n1; n += 64) {
        const int64_t ncols = ob_min64(64, n1 - n);
        const int nt = (int)ob_ceil_div(ncols, 16);
        (void)npan;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        const uint8_t *qa = p->q + m * ldq;
        for (int64_t c = 0; c < chunks; c++) {
            int8_t *buf = bbuf + (c & 1) * 4096;
            for (int t = 0; t < nt; t++) a_expand(p, n / 16 + t, c, 1, buf + t * 1024, 1024);
            _tile_loadd(4, qa + c * 64, ldq);
            _tile_loadd(6, buf, 64);
            _tile_dpbusd(0, 4, 6);
            if (nt > 1) {
                _tile_loadd(7, buf + 1024, 64);
                _tile_dpbusd(1, 4, 7);
            }
            if (nt > 2) {
                _tile_loadd(6, buf + 2048, 64);
                _tile_dpbusd(2, 4, 6);
            }
            if (nt > 3) {
                _tile_loadd(7, buf + 3072, 64);
                _tile_dpbusd(3, 4, 7);
            }
        }
        _tile_stored(0, scratch, 64);
        _tile_stored(1, scratch + 256, 64);
        _tile_stored(2, scratch + 512, 64);
        _tile_stored(3, scratch + 768, 64);
        for (int t = 0; t < nt; t++) {
            a_store_tile(p, scratch + 256 * t, m, m1, n + 16 * t, ncols - 16 * t);
        }
    }
}

#define A_KB 8    /* chunks of 64 inputs per K block: B of 32 columns = 16 KiB, in L1 */
#define A_MB 256  /* rows per super-block: the int32 partial sums (32 KiB) stay in L2 */

/* More rows: per block of 32 columns and K block, expand once, then every 32 rows (2x2 tiles)
 * or 64 rows (4x1 tiles, 16-column blocks) run over it; partial sums wait in cbuf between
 * K blocks. */
OB_TA static void a_rows_many(const ob_u8gemm_args *p, int64_t m0, int64_t m1, int64_t n0,
                              int64_t n1, int8_t *bbuf, int32_t *cbuf, int32_t *scratch) {
    const int64_t chunks = ob_ceil_div(p->K, 64), ldq = p->ldq;
    for (int64_t mb = m0; mb < m1; mb += A_MB) {
        const int64_t mbe = ob_min64(mb + A_MB, m1);
        for (int64_t n = n0; n < n1; n += 32) {
            const int64_t ncols = ob_min64(32, n1 - n);
            const int nt = ncols > 16 ? 2 : 1;
            for (int64_t kb = 0; kb < chunks; kb += A_KB) {
                const int64_t kc = ob_min64(A_KB, chunks - kb);
                const int first = kb == 0, last = kb + kc >= chunks;
                for (int t = 0; t < nt; t++) a_expand(p, n / 16 + t, kb, kc, bbuf + t * 1024, 2048);
                if (nt == 2) {
                    for (int64_t m = mb; m < mbe; m += 32) {
                        int32_t *cb = cbuf + (m - mb) * 32; /* rows of 32 int32 */
                        if (first) {
                            _tile_zero(0);
                            _tile_zero(1);
                            _tile_zero(2);
                            _tile_zero(3);
                        } else {
                            _tile_loadd(0, cb, 128);
                            _tile_loadd(1, cb + 16, 128);
                            _tile_loadd(2, cb + 16 * 32, 128);
                            _tile_loadd(3, cb + 16 * 32 + 16, 128);
                        }
                        const uint8_t *qa = p->q + m * ldq + kb * 64;
                        for (int64_t c = 0; c < kc; c++) {
                            _tile_loadd(4, qa + c * 64, ldq);
                            _tile_loadd(6, bbuf + c * 2048, 64);
                            _tile_dpbusd(0, 4, 6);
                            _tile_loadd(7, bbuf + c * 2048 + 1024, 64);
                            _tile_dpbusd(1, 4, 7);
                            _tile_loadd(5, qa + 16 * ldq + c * 64, ldq);
                            _tile_dpbusd(2, 5, 6);
                            _tile_dpbusd(3, 5, 7);
                        }
                        if (!last) {
                            _tile_stored(0, cb, 128);
                            _tile_stored(1, cb + 16, 128);
                            _tile_stored(2, cb + 16 * 32, 128);
                            _tile_stored(3, cb + 16 * 32 + 16, 128);
                            continue;
                        }
                        _tile_stored(0, scratch, 64);
                        _tile_stored(1, scratch + 256, 64);
                        _tile_stored(2, scratch + 512, 64);
                        _tile_stored(3, scratch + 768, 64);
                        a_store_tile(p, scratch, m, mbe, n, 16);
                        a_store_tile(p, scratch + 256, m, mbe, n + 16, ncols - 16);
                        if (m + 16 < mbe) {
                            a_store_tile(p, scratch + 512, m + 16, mbe, n, 16);
                            a_store_tile(p, scratch + 768, m + 16, mbe, n + 16, ncols - 16);
                        }
                    }
                } else {
                    for (int64_t m = mb; m < mbe; m += 64) {
                        int32_t *cb = cbuf + (m - mb) * 32; /* rows of 16 int32, 32 apart */
                        if (first) {
                            _tile_zero(0);
                            _tile_zero(1);
                            _tile_zero(2);
                            _tile_zero(3);
                        } else {
                            _tile_loadd(0, cb, 128);
                            _tile_loadd(1, cb + 16 * 32, 128);
                            _tile_loadd(2, cb + 32 * 32, 128);
                            _tile_loadd(3, cb + 48 * 32, 128);
                        }
                        const uint8_t *qa = p->q + m * ldq + kb * 64;
                        for (int64_t c = 0; c < kc; c++) {
                            _tile_loadd(6, bbuf + c * 2048, 64);
                            _tile_loadd(4, qa + c * 64, ldq);
                            _tile_dpbusd(0, 4, 6);
                            _tile_loadd(5, qa + 16 * ldq + c * 64, ldq);
                            _tile_dpbusd(1, 5, 6);
                            _tile_loadd(4, qa + 32 * ldq + c * 64, ldq);
                            _tile_dpbusd(2, 4, 6);
                            _tile_loadd(5, qa + 48 * ldq + c * 64, ldq);
                            _tile_dpbusd(3, 5, 6);
                        }
                        if (!last) {
                            _tile_stored(0, cb, 128);
                            _tile_stored(1, cb + 16 * 32, 128);
                            _tile_stored(2, cb + 32 * 32, 128);
                            _tile_stored(3, cb + 48 * 32, 128);
                            continue;
                        }
                        _tile_stored(0, scratch, 64);
                        _tile_stored(1, scratch + 256, 64);
                        _tile_stored(2, scratch + 512, 64);
                        _tile_stored(3, scratch + 768, 64);
                        for (int g = 0; g < 4 && m + 16 * g < mbe; g++) {
                            a_store_tile(p, scratch + 256 * g, m + 16 * g, mbe, n, ncols);
                        }
                    }
                }
            }
        }
    }
}

OB_TA int ob_u8gemm_amx(const ob_u8gemm_args *p, int64_t m0, int64_t m1, int64_t n0,
                        int64_t n1) {
    int8_t *bbuf = (int8_t *)ob_alloc((size_t)(A_KB * 2048));
    int32_t *cbuf = (int32_t *)ob_alloc((size_t)(A_MB + 64) * 32 * sizeof(int32_t));
    int32_t *scratch = (int32_t *)ob_alloc(4 * 1024);
    if (bbuf == NULL || cbuf == NULL || scratch == NULL) {
        ob_free(bbuf);
        ob_free(cbuf);
        ob_free(scratch);
        return -1;
    }
    a_config();
    if (m1 - m0 <= 16) a_rows16(p, m0, m1, n0, n1, bbuf, scratch);
    else a_rows_many(p, m0, m1, n0, n1, bbuf, cbuf, scratch);
    _tile_release();
    ob_free(bbuf);
    ob_free(cbuf);
    ob_free(scratch);
    return 0;
}

#endif /* OB_X86 */

/* ------------------------------------------------------------ row quantizer */

void ob_quant_rows(const float *x, int64_t ldx, int64_t len, const float *inv,
                   const int32_t *zero, uint8_t *q, int64_t ldq, int64_t rows);
void ob_quant_rows(const float *x, int64_t ldx, int64_t len, const float *inv,
                   const int32_t *zero, uint8_t *q, int64_t ldq, int64_t rows) {
#if OB_X86
    if (ob_get_isa() >= OB_ISA_AVX512) {
        ob_quant_rows_avx512(x, ldx, len, inv, zero, q, ldq, rows);
        return;
    }
#endif
    quant_rows_generic(x, ldx, len, inv, zero, q, ldq, rows);
}
