/*
 * Float32 direct convolutions on NHWC activations (no im2col): the dense "direct" conv, whose
 * weights are laid out once at load as (KH * KW * C, ldw) rows of output channels, and the
 * depthwise conv.  Binary-weight layers pass their +1/-1 weights as floats and their scale as
 * alpha: x * (+-1) is exact, so these are exact float sums (in the order kh, kw, c).
 *
 * Portable C and AVX-512 variants; the table of each ISA points at one of them.
 */
#include <string.h>

#include "ob_kernels.h"

/* ---------------------------------------------------------------- portable */

int ob_dconv_generic(const ob_dconv_args *p, int64_t r0, int64_t r1, int64_t n0, int64_t n1);
int ob_dwconv_generic(const ob_dwconv_args *p, int64_t r0, int64_t r1);

static void dconv_block(const ob_dconv_args *p, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const int64_t C = p->C, nb = n1 - n0;
    float acc[64];
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / p->Ho, oy = r % p->Ho;
        for (int64_t ox = 0; ox < p->Wo; ox++) {
            for (int64_t j = 0; j < nb; j++) acc[j] = 0.0f;
            for (int64_t kh = 0; kh < p->KH; kh++) {
                const float *xr = p->x + ((b * p->Hp + oy * p->sh + kh) * p->Wp + ox * p->sw) * C;
                for (int64_t kw = 0; kw < p->KW; kw++) {
                    const float *xp = xr + kw * C;
                    const float *wr = p->w + (kh * p->KW + kw) * C * p->ldw + n0;
                    for (int64_t c = 0; c < C; c++) {
                        const float xv = xp[c];
                        const float *wc = wr + c * p->ldw;
                        for (int64_t j = 0; j < nb; j++) acc[j] = acc[j] + xv * wc[j];
                    }
                }
            }
            float *y = p->y + ((b * p->Ho + oy) * p->Wo + ox) * p->N + n0;
            for (int64_t j = 0; j < nb; j++) {
                float v = acc[j];
                if (p->alpha != NULL) v = v * p->alpha[n0 + j];
                if (p->beta != NULL) v = v + p->beta[n0 + j];
                y[j] = v;
            }
        }
    }
}

int ob_dconv_generic(const ob_dconv_args *p, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n += 64) dconv_block(p, r0, r1, n, ob_min64(n + 64, n1));
    return 0;
}

int ob_dwconv_generic(const ob_dwconv_args *p, int64_t r0, int64_t r1) {
    const int64_t C = p->C;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / p->Ho, oy = r % p->Ho;
        for (int64_t ox = 0; ox < p->Wo; ox++) {
            float *y = p->y + ((b * p->Ho + oy) * p->Wo + ox) * C;
            for (int64_t c = 0; c < C; c++) y[c] = 0.0f;
            for (int64_t kh = 0; kh < p->KH; kh++) {
                const int64_t iy = oy * p->sh - p->ph + kh;
                if (iy < 0 || iy >= p->H) continue;
                for (int64_t kw = 0; kw < p->KW; kw++) {
                    const int64_t ix = ox * p->sw - p->pw + kw;
                    if (ix < 0 || ix >= p->W) continue;
                    const float *xp = p->x + ((b * p->H + iy) * p->W + ix) * C;
                    const float *wp = p->w + (kh * p->KW + kw) * C;
                    for (int64_t c = 0; c < C; c++) y[c] = y[c] + xp[c] * wp[c];
                }
            }
            for (int64_t c = 0; c < C; c++) {
                float v = y[c];
                if (p->alpha != NULL) v = v * p->alpha[c];
                if (p->beta != NULL) v = v + p->beta[c];
                y[c] = v;
            }
        }
    }
    return 0;
}

#if OB_X86
#include <immintrin.h>

#define OB_T512                                                                          \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,avx2,fma," \
                          "bmi,bmi2,popcnt")))
#define OB_INL static inline __attribute__((always_inline))

int ob_dconv_avx512(const ob_dconv_args *p, int64_t r0, int64_t r1, int64_t n0, int64_t n1);
int ob_dwconv_avx512(const ob_dwconv_args *p, int64_t r0, int64_t r1);

OB_T512 OB_INL __mmask16 c_mask16(int64_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/*
 * Register tile: mr output pixels of one output row x nv * 16 output channels.  Per input
 * (tap, channel) it loads nv weight vectors and broadcasts one input per pixel: mr * nv FMAs for
 * nv + mr loads.  (x * +-1 + acc rounds as the add does, so an FMA is exact for binary weights.)
 */
OB_T512 OB_INL void c_tile(const ob_dconv_args *p, const float *x0, const float *w0, float *y,
                           int64_t n, int64_t ncols, const int mr, const int nv) {
    __m512 acc[12][4];
#pragma GCC unroll 12
    for (int i = 0; i < mr; i++) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_ps();
    }
    const int64_t C = p->C, ldw = p->ldw, step = p->sw * C;
    for (int64_t kh = 0; kh < p->KH; kh++) {
        for (int64_t kw = 0; kw < p->KW; kw++) {
            const float *xp = x0 + (kh * p->Wp + kw) * C;
            const float *wp = w0 + (kh * p->KW + kw) * C * ldw;
            for (int64_t c = 0; c < C; c++) {
                __m512 wv[4];
#pragma GCC unroll 4
                for (int v = 0; v < nv; v++) wv[v] = _mm512_loadu_ps(wp + c * ldw + 16 * v);
#pragma GCC unroll 12
                for (int i = 0; i < mr; i++) {
                    const __m512 xb = _mm512_set1_ps(xp[i * step + c]);
#pragma GCC unroll 4
                    for (int v = 0; v < nv; v++) acc[i][v] = _mm512_fmadd_ps(xb, wv[v], acc[i][v]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        const __mmask16 mk = c_mask16(ncols - 16 * v);
        const __m512 al = p->alpha != NULL ? _mm512_maskz_loadu_ps(mk, p->alpha + n + 16 * v)
                                           : _mm512_set1_ps(1.0f);
        const __m512 be = p->beta != NULL ? _mm512_maskz_loadu_ps(mk, p->beta + n + 16 * v)
                                          : _mm512_setzero_ps();
#pragma GCC unroll 12
        for (int i = 0; i < mr; i++) {
            __m512 r = acc[i][v];
            if (p->alpha != NULL) r = _mm512_mul_ps(r, al);
            if (p->beta != NULL) r = _mm512_add_ps(r, be);
            _mm512_mask_storeu_ps(y + i * p->N + 16 * v, mk, r);
        }
    }
}

/* the most pixels per tile for nv vectors of channels: mr * nv accumulators + nv weights */
static const int k_mr[5] = {0, 12, 12, 7, 6};

#define C_CASE(MR, NV)                                 \
    case (MR) * 8 + (NV):                              \
        c_tile(p, x0, w0, y, n, ncols, (MR), (NV)); \
        break;

OB_T512 int ob_dconv_avx512(const ob_dconv_args *p, int64_t r0, int64_t r1, int64_t n0,
                            int64_t n1) {
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / p->Ho, oy = r % p->Ho;
        const float *xrow = p->x + (b * p->Hp + oy * p->sh) * p->Wp * p->C;
        for (int64_t n = n0; n < n1; n += 64) {
            const int64_t ncols = ob_min64(64, n1 - n);
            const int nv = (int)ob_ceil_div(ncols, 16);
            const float *w0 = p->w + n;
            for (int64_t ox = 0; ox < p->Wo; ox += k_mr[nv]) {
                const int mr = (int)ob_min64(k_mr[nv], p->Wo - ox);
                const float *x0 = xrow + ox * p->sw * p->C;
                float *y = p->y + ((b * p->Ho + oy) * p->Wo + ox) * p->N + n;
                switch (mr * 8 + nv) {
                    C_CASE(1, 1) C_CASE(2, 1) C_CASE(3, 1) C_CASE(4, 1) C_CASE(5, 1) C_CASE(6, 1)
                    C_CASE(7, 1) C_CASE(8, 1) C_CASE(9, 1) C_CASE(10, 1) C_CASE(11, 1)
                    C_CASE(12, 1)
                    C_CASE(1, 2) C_CASE(2, 2) C_CASE(3, 2) C_CASE(4, 2) C_CASE(5, 2) C_CASE(6, 2)
                    C_CASE(7, 2) C_CASE(8, 2) C_CASE(9, 2) C_CASE(10, 2) C_CASE(11, 2)
                    C_CASE(12, 2)
                    C_CASE(1, 3) C_CASE(2, 3) C_CASE(3, 3) C_CASE(4, 3) C_CASE(5, 3) C_CASE(6, 3)
                    C_CASE(7, 3)
                    C_CASE(1, 4) C_CASE(2, 4) C_CASE(3, 4) C_CASE(4, 4) C_CASE(5, 4) C_CASE(6, 4)
                    default:
                        break;
                }
            }
        }
    }
    return 0;
}

/* Depthwise: 16 channels per vector, the taps inside the image in order (multiply, then add, as
 * the portable path does, so both give the same bits). */
OB_T512 int ob_dwconv_avx512(const ob_dwconv_args *p, int64_t r0, int64_t r1) {
    const int64_t C = p->C;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / p->Ho, oy = r % p->Ho;
        for (int64_t ox = 0; ox < p->Wo; ox++) {
            float *y = p->y + ((b * p->Ho + oy) * p->Wo + ox) * C;
            for (int64_t c = 0; c < C; c += 64) {
                __m512 acc[4];
                const int nv = (int)ob_ceil_div(ob_min64(64, C - c), 16);
                __mmask16 mk[4];
                for (int v = 0; v < 4; v++) {
                    acc[v] = _mm512_setzero_ps();
                    mk[v] = c_mask16(C - c - 16 * v);
                }
                for (int64_t kh = 0; kh < p->KH; kh++) {
                    const int64_t iy = oy * p->sh - p->ph + kh;
                    if (iy < 0 || iy >= p->H) continue;
                    for (int64_t kw = 0; kw < p->KW; kw++) {
                        const int64_t ix = ox * p->sw - p->pw + kw;
                        if (ix < 0 || ix >= p->W) continue;
                        const float *xp = p->x + ((b * p->H + iy) * p->W + ix) * C + c;
                        const float *wp = p->w + (kh * p->KW + kw) * C + c;
                        for (int v = 0; v < nv; v++) {
                            const __m512 prod = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk[v], xp + 16 * v),
                                                              _mm512_maskz_loadu_ps(mk[v], wp + 16 * v));
                            acc[v] = _mm512_add_ps(acc[v], prod);
                        }
                    }
                }
                for (int v = 0; v < nv; v++) {
                    __m512 o = acc[v];
                    if (p->alpha != NULL) o = _mm512_mul_ps(o, _mm512_maskz_loadu_ps(mk[v], p->alpha + c + 16 * v));
                    if (p->beta != NULL) o = _mm512_add_ps(o, _mm512_maskz_loadu_ps(mk[v], p->beta + c + 16 * v));
                    _mm512_mask_storeu_ps(y + c + 16 * v, mk[v], o);
                }
            }
        }
    }
    return 0;
}
#endif /* OB_X86 */
