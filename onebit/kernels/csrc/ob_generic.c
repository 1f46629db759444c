/*
 * Portable C variants of every kernel.  They compile on any architecture and are the
 * fallback when neither AVX2 nor AVX-512 is available (or when forced for testing).
 */
#include <string.h>

#include "ob_kernels.h"

static void g_pack_bits(const float *x, int64_t ldx, uint64_t *out, int64_t ldo, int64_t rows,
                        int64_t K) {
    const int64_t Kw = ob_ceil_div(K, 64);
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        uint64_t *orow = out + r * ldo;
        for (int64_t w = 0; w < Kw; w++) {
            const int64_t k0 = w * 64;
            const int64_t kn = ob_min64(64, K - k0);
            uint64_t word = 0;
            for (int64_t j = 0; j < kn; j++) word |= (uint64_t)(xr[k0 + j] >= 0.0f) << j;
            orow[w] = word;
        }
    }
}

/* Per-byte bit counts of v (each byte 0..8), branch-free SWAR. */
static inline uint64_t g_byte_counts(uint64_t v) {
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    return (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
}

static inline uint64_t g_byte_sum(uint64_t v) { /* sum of the 8 byte counts */
    v = (v & 0x00FF00FF00FF00FFULL) + ((v >> 8) & 0x00FF00FF00FF00FFULL);
    v += v >> 16;
    v += v >> 32;
    return v & 0xFFFF;
}

/* popcount(a ^ b) over n words.  Byte counts are summed for up to 31 words before they are
 * folded, which keeps the loop free of multiplies and calls so compilers vectorize it. */
static int64_t g_xor_popcount(const uint64_t *a, const uint64_t *b, int64_t n) {
    int64_t total = 0;
    for (int64_t k0 = 0; k0 < n; k0 += 31) {
        const int64_t k1 = ob_min64(n, k0 + 31);
        uint64_t acc = 0;
        for (int64_t k = k0; k < k1; k++) acc += g_byte_counts(a[k] ^ b[k]);
        acc = (acc & 0x00FF00FF00FF00FFULL) + ((acc >> 8) & 0x00FF00FF00FF00FFULL);
        acc += acc >> 16;
        acc += acc >> 32;
        total += (int64_t)(acc & 0xFFFF);
    }
    return total;
}

static int g_xnor(const ob_xnor_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const int64_t Kw = p->Kw;
    for (int64_t m = m0; m < m1; m++) {
        const uint64_t *a = p->a + m * p->lda;
        int32_t *c = p->c + m * p->ldc;
        for (int64_t n = n0; n < n1; n++) {
            const int64_t pc = g_xor_popcount(a, p->b + n * p->ldb, Kw);
            c[n] = (int32_t)(p->K - 2 * pc);
        }
    }
    return 0;
}

/* B in panels: word k of row n is panels[((n / 32) * Kw + k) * 32 + n % 32]. */
int ob_xnor_panels_generic(const ob_xnor_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
int ob_xnor_panels_generic(const ob_xnor_args *p, int64_t m0, int64_t m1, int64_t n0,
                           int64_t n1) {
    const int64_t Kw = p->Kw;
    for (int64_t m = m0; m < m1; m++) {
        const uint64_t *a = p->a + m * p->lda;
        int32_t *c = p->c + m * p->ldc;
        for (int64_t n = n0; n < n1; n++) {
            const uint64_t *b = p->b + (n / OB_XNOR_PANEL) * Kw * OB_XNOR_PANEL + n % OB_XNOR_PANEL;
            int64_t pc = 0;
            for (int64_t k = 0; k < Kw; k++) pc += (int64_t)g_byte_sum(g_byte_counts(a[k] ^ b[k * OB_XNOR_PANEL]));
            c[n] = (int32_t)(p->K - 2 * pc);
        }
    }
    return 0;
}

/*
 * Lookup-table method: for each input row and each group of 8 inputs, tabulate the 256
 * signed sums sum_i (bit_i ? +x_i : -x_i); a dot product is then one table lookup per
 * weight byte.  K is processed in blocks so the table stays in cache.
 */
#define G_KC 2048 /* bits per K block: 256 groups * 256 entries * 4 B = 256 KiB of table */

static int g_bfgemm(const ob_bfgemm_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const int64_t K = p->K;
    float *lut = (float *)ob_alloc((size_t)(G_KC / 8) * 256 * sizeof(float));
    if (lut == NULL) return -1;
    for (int64_t m = m0; m < m1; m++) {
        const float *x = p->x + m * p->ldx;
        float *y = p->y + m * p->ldy;
        for (int64_t kb = 0; kb < K; kb += G_KC) {
            const int64_t kn = ob_min64(G_KC, K - kb);
            const int64_t groups = ob_ceil_div(kn, 8);
            for (int64_t g = 0; g < groups; g++) {
                float v[8];
                float *t = lut + g * 256;
                float total = 0.0f;
                for (int i = 0; i < 8; i++) {
                    const int64_t k = kb + g * 8 + i;
                    v[i] = k < K ? x[k] : 0.0f;
                    total += v[i];
                }
                t[0] = -total;
                for (int q = 1; q < 256; q++) {
                    const int low = __builtin_ctz((unsigned)q);
                    t[q] = t[q & (q - 1)] + 2.0f * v[low];
                }
            }
            const int64_t w0 = kb / 64;
            for (int64_t n = n0; n < n1; n++) {
                const uint64_t *w = p->w + n * p->ldw + w0;
                float s = 0.0f;
                for (int64_t g = 0; g < groups; g++) {
                    const unsigned byte = (unsigned)(w[g >> 3] >> (8 * (g & 7))) & 0xFFu;
                    s += lut[g * 256 + byte];
                }
                y[n] = kb == 0 ? s : y[n] + s;
            }
        }
        for (int64_t n = n0; n < n1; n++) {
            float v = y[n];
            if (K == 0) v = 0.0f;
            if (p->alpha != NULL) v = v * p->alpha[n];
            if (p->bias != NULL) v = v + p->bias[n];
            y[n] = v;
        }
    }
    ob_free(lut);
    return 0;
}

static void g_threshold_f32(const float *y, int64_t ldy, const float *thr, const uint64_t *flip,
                            uint64_t *out, int64_t ldo, int64_t rows, int64_t N) {
    const int64_t Nw = ob_ceil_div(N, 64);
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * ldy;
        for (int64_t w = 0; w < Nw; w++) {
            const int64_t n0 = w * 64;
            const int64_t nn = ob_min64(64, N - n0);
            uint64_t word = 0;
            for (int64_t j = 0; j < nn; j++) word |= (uint64_t)(yr[n0 + j] >= thr[n0 + j]) << j;
            out[r * ldo + w] = word ^ flip[w];
        }
    }
}

static void g_threshold_i32(const int32_t *y, int64_t ldy, const int32_t *thr,
                            const uint64_t *flip, uint64_t *out, int64_t ldo, int64_t rows,
                            int64_t N) {
    const int64_t Nw = ob_ceil_div(N, 64);
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *yr = y + r * ldy;
        for (int64_t w = 0; w < Nw; w++) {
            const int64_t n0 = w * 64;
            const int64_t nn = ob_min64(64, N - n0);
            uint64_t word = 0;
            for (int64_t j = 0; j < nn; j++) word |= (uint64_t)(yr[n0 + j] >= thr[n0 + j]) << j;
            out[r * ldo + w] = word ^ flip[w];
        }
    }
}

static void g_scale_bias(const int32_t *y, int64_t ldy, const float *alpha, const float *beta,
                         float *out, int64_t ldo, int64_t rows, int64_t N) {
    for (int64_t r = 0; r < rows; r++) {
        const int32_t *yr = y + r * ldy;
        float *o = out + r * ldo;
        for (int64_t n = 0; n < N; n++) {
            const float prod = alpha[n] * (float)yr[n];
            o[n] = prod + beta[n];
        }
    }
}

int ob_dconv_generic(const ob_dconv_args *p, int64_t r0, int64_t r1, int64_t n0, int64_t n1);
int ob_dwconv_generic(const ob_dwconv_args *p, int64_t r0, int64_t r1);

const ob_isa_table ob_generic_table = {
    "generic",        8,           8, g_pack_bits, g_xnor, g_bfgemm, g_threshold_f32,
    g_threshold_i32, g_scale_bias, NULL,     1,           1, ob_xnor_panels_generic,
    ob_dconv_generic, ob_dwconv_generic,
    ob_softmax_rows_generic, ob_layernorm_rows_generic, ob_gelu_generic,
};
