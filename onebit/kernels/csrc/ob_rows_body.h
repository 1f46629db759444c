/* Body of the row kernels (ob_rows.c includes it once per instruction set, with OB_ROWS_ATTR
 * the target attribute and OB_ROWS(name) the suffixed name). Loops run over blocks of 16
 * floats with 16 explicit partial sums, so that the compiler vectorizes them at any vector
 * width while every instruction set computes the same operations in the same order (with
 * -ffp-contract=off: the same bits). */

/* exp of 16 values, Cephes' single-precision method: n = round(x log2 e), r = x - n ln 2 in two
 * parts, a degree-7 polynomial, times 2^n built in the exponent bits. Relative error ~1 ulp on
 * [-87.3, 88.3]; below -87.3 (including -inf) the result is 0, above 88.3 it is exp(88.3); NaN
 * stays NaN. */
/* whether a row has a NaN (only asked of rows whose max is -inf: the max skips NaNs) */
OB_ROWS_ATTR static int OB_ROWS(any_nan)(const float *x, int64_t n) {
    for (int64_t j = 0; j < n; j++)
        if (x[j] != x[j]) return 1;
    return 0;
}

#ifdef OB_ROWS_AVX512
/* The portable exp16 and softmax_row below, the same operations in the same order (so the same
 * bits), on zmm registers with masked tails: the portable loops, vectorized by the compiler,
 * spent ~3x as long per row on a 65-long attention row. */
OB_ROWS_ATTR static inline __attribute__((always_inline)) __m512 OB_ROWS(exp512)(__m512 xv) {
    const __mmask16 nan = _mm512_cmp_ps_mask(xv, xv, _CMP_UNORD_Q);
    __m512 a = _mm512_mask_mov_ps(xv, nan, _mm512_setzero_ps());
    const __m512 lo = _mm512_set1_ps(-87.3365f);
    a = _mm512_mask_mov_ps(a, _mm512_cmp_ps_mask(a, lo, _CMP_LT_OQ), lo);
    const __m512 hi = _mm512_set1_ps(88.3762f);
    a = _mm512_mask_mov_ps(a, _mm512_cmp_ps_mask(a, hi, _CMP_GT_OQ), hi);
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    const __m512 t = _mm512_add_ps(_mm512_mul_ps(a, _mm512_set1_ps(1.44269504088896341f)), magic);
    const __m512 n = _mm512_sub_ps(t, magic);
    const __m512 r = _mm512_sub_ps(_mm512_sub_ps(a, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
                                   _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
    __m512 q = _mm512_set1_ps(1.9875691500e-4f);
    q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(1.3981999507e-3f));
    q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(8.3334519073e-3f));
    q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(4.1665795894e-2f));
    q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(1.6666665459e-1f));
    q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(5.0000001201e-1f));
    const __m512 p = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(q, r), r), r),
                                   _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    __m512 res = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    res = _mm512_mask_mov_ps(res, _mm512_cmp_ps_mask(xv, lo, _CMP_LT_OQ), _mm512_setzero_ps());
    return _mm512_mask_mov_ps(res, nan, xv);
}

OB_ROWS_ATTR static inline __attribute__((always_inline)) void OB_ROWS(exp16)(const float *x,
                                                                              float *y) {
    _mm512_storeu_ps(y, OB_ROWS(exp512)(_mm512_loadu_ps(x)));
}

OB_ROWS_ATTR static void OB_ROWS(softmax_row)(const float *x, float *y, int64_t n, int log,
                                              int safe) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    const int64_t full = n & ~(int64_t)15;
    const __mmask16 tm = (__mmask16)((1u << (n - full)) - 1u);
    __m512 m = ninf;
    for (int64_t j = 0; j < full; j += 16) m = _mm512_max_ps(_mm512_loadu_ps(x + j), m);
    if (tm) m = _mm512_mask_max_ps(m, tm, _mm512_maskz_loadu_ps(tm, x + full), m);
    float mx = _mm512_reduce_max_ps(m); /* exact in any order */
    if (mx == -INFINITY && safe && !OB_ROWS(any_nan)(x, n)) { /* NaN-only rows stay NaN */
        memset(y, 0, (size_t)n * sizeof(float));
        return;
    }
    const __m512 mv = _mm512_set1_ps(mx);
    __m512 s = _mm512_setzero_ps();
    for (int64_t j = 0; j < full; j += 16) {
        const __m512 e = OB_ROWS(exp512)(_mm512_sub_ps(_mm512_loadu_ps(x + j), mv));
        s = _mm512_add_ps(s, e);
        if (!log) _mm512_storeu_ps(y + j, e);
    }
    if (tm) {
        const __m512 z = _mm512_mask_sub_ps(ninf, tm, _mm512_maskz_loadu_ps(tm, x + full), mv);
        const __m512 e = OB_ROWS(exp512)(z);
        s = _mm512_add_ps(s, e);
        if (!log) _mm512_mask_storeu_ps(y + full, tm, e);
    }
    /* lanes summed pairwise, i + (i + 8), then + 4, + 2, + 1: the portable order */
    __m256 h8 = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
    __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    __m128 h1 = _mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1));
    const float sum = _mm_cvtss_f32(h1);
    if (log) {
        const __m512 c = _mm512_set1_ps(mx + logf(sum) - mx);
        for (int64_t j = 0; j < full; j += 16)
            _mm512_storeu_ps(y + j, _mm512_sub_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), mv), c));
        if (tm)
            _mm512_mask_storeu_ps(
                y + full, tm, _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, x + full), mv), c));
    } else {
        const __m512 inv = _mm512_set1_ps(1.0f / sum);
        for (int64_t j = 0; j < full; j += 16)
            _mm512_storeu_ps(y + j, _mm512_mul_ps(_mm512_loadu_ps(y + j), inv));
        if (tm)
            _mm512_mask_storeu_ps(y + full, tm,
                                  _mm512_mul_ps(_mm512_maskz_loadu_ps(tm, y + full), inv));
    }
}
#else
OB_ROWS_ATTR static inline __attribute__((always_inline)) void OB_ROWS(exp16)(const float *x,
                                                                              float *y) {
    float v[16], n[16], p[16];
    int32_t e[16];
    for (int i = 0; i < 16; i++) {
        float a = x[i] == x[i] ? x[i] : 0.0f; /* NaN: computed as 0, restored below */
        a = a < -87.3365f ? -87.3365f : a;
        a = a > 88.3762f ? 88.3762f : a;
        const float t = a * 1.44269504088896341f + 12582912.0f; /* round to nearest */
        n[i] = t - 12582912.0f;
        v[i] = a;
    }
    for (int i = 0; i < 16; i++) {
        const float r = (v[i] - n[i] * 0.693359375f) - n[i] * -2.12194440e-4f;
        float q = 1.9875691500e-4f;
        q = q * r + 1.3981999507e-3f;
        q = q * r + 8.3334519073e-3f;
        q = q * r + 4.1665795894e-2f;
        q = q * r + 1.6666665459e-1f;
        q = q * r + 5.0000001201e-1f;
        p[i] = (q * r) * r + r + 1.0f;
        e[i] = ((int32_t)n[i] + 127) << 23;
    }
    float s[16];
    memcpy(s, e, sizeof s);
    for (int i = 0; i < 16; i++) {
        const float r = p[i] * s[i];
        y[i] = x[i] != x[i] ? x[i] : (x[i] < -87.3365f ? 0.0f : r);
    }
}


/* One row of n floats: y = softmax(x) (or log-softmax with `log`). A row whose every entry is
 * -inf gives zeros with `safe` (attention's fully masked rows, as torch's math attention) and
 * NaN without it (as torch's softmax). y may be x. */
OB_ROWS_ATTR static void OB_ROWS(softmax_row)(const float *x, float *y, int64_t n, int log,
                                              int safe) {
    float m16[16];
    for (int i = 0; i < 16; i++) m16[i] = -INFINITY;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int i = 0; i < 16; i++) m16[i] = x[j + i] > m16[i] ? x[j + i] : m16[i];
    float mx = -INFINITY;
    for (int i = 0; i < 16; i++) mx = m16[i] > mx ? m16[i] : mx;
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    if (mx == -INFINITY && safe && !OB_ROWS(any_nan)(x, n)) { /* NaN-only rows stay NaN */
        memset(y, 0, (size_t)n * sizeof(float));
        return;
    }
    float s16[16] = {0}, z[16], ez[16];
    for (j = 0; j + 16 <= n; j += 16) {
        for (int i = 0; i < 16; i++) z[i] = x[j + i] - mx;
        OB_ROWS(exp16)(z, ez);
        for (int i = 0; i < 16; i++) s16[i] += ez[i];
        if (!log) memcpy(y + j, ez, sizeof ez);
    }
    const int64_t tail = n - j;
    if (tail > 0) {
        for (int i = 0; i < 16; i++) z[i] = i < tail ? x[j + i] - mx : -INFINITY;
        OB_ROWS(exp16)(z, ez);
        for (int i = 0; i < 16; i++) s16[i] += ez[i];
        if (!log) memcpy(y + j, ez, (size_t)tail * sizeof(float));
    }
    for (int w = 8; w >= 1; w /= 2) /* pairwise, as the AVX-512 variant adds its lanes */
        for (int i = 0; i < w; i++) s16[i] += s16[i + w];
    const float sum = s16[0];
    if (log) {
        const float ls = mx + logf(sum); /* y = x - max - log(sum) */
        for (j = 0; j < n; j++) y[j] = (x[j] - mx) - (ls - mx);
    } else {
        const float inv = 1.0f / sum;
        for (j = 0; j < n; j++) y[j] *= inv;
    }
}

#endif /* OB_ROWS_AVX512 */

/* One row of n floats: y = (x - mean) / sqrt(var + eps) * w + b (w, b may be NULL), the mean and
 * the (biased) variance summed in double. y may be x. */
OB_ROWS_ATTR static void OB_ROWS(layernorm_row)(const float *x, float *y, int64_t n,
                                                const float *w, const float *b, float eps) {
    double a16[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int i = 0; i < 16; i++) a16[i] += (double)x[j + i];
    double acc = 0.0;
    for (int i = 0; i < 16; i++) acc += a16[i];
    for (; j < n; j++) acc += (double)x[j];
    const float mean = (float)(acc / (double)n);
    for (int i = 0; i < 16; i++) a16[i] = 0.0;
    for (j = 0; j + 16 <= n; j += 16)
        for (int i = 0; i < 16; i++) {
            const double d = (double)(x[j + i] - mean);
            a16[i] += d * d;
        }
    acc = 0.0;
    for (int i = 0; i < 16; i++) acc += a16[i];
    for (; j < n; j++) {
        const double d = (double)(x[j] - mean);
        acc += d * d;
    }
    const float rstd = 1.0f / sqrtf((float)(acc / (double)n) + eps);
    for (j = 0; j < n; j++) y[j] = (x[j] - mean) * rstd;
    if (w)
        for (j = 0; j < n; j++) y[j] *= w[j];
    if (b)
        for (j = 0; j < n; j++) y[j] += b[j];
}

OB_ROWS_ATTR void OB_ROWS(ob_softmax_rows)(const float *x, float *y, int64_t r0, int64_t r1,
                                           int64_t n, int log, int safe) {
    for (int64_t r = r0; r < r1; r++) OB_ROWS(softmax_row)(x + r * n, y + r * n, n, log, safe);
}

OB_ROWS_ATTR void OB_ROWS(ob_layernorm_rows)(const float *x, float *y, int64_t r0, int64_t r1,
                                             int64_t n, const float *w, const float *b,
                                             float eps) {
    for (int64_t r = r0; r < r1; r++) OB_ROWS(layernorm_row)(x + r * n, y + r * n, n, w, b, eps);
}

/* GELU(x) = 0.5 x erfc(-x / sqrt 2) of 16 values (Hendrycks & Gimpel 2016), erfc(z), z = |x| / sqrt 2,
 * by the Chebyshev fit of Numerical Recipes (erfcc: t exp(-z^2 + P(t)), t = 1 / (1 + z / 2),
 * relative error < 1.2e-7). z^2 is split into an exact head zh^2 (zh: z with its 12 low bits
 * cleared) and a tail, and exp(-zh^2 + (P(t) - tail)) takes the two parts apart: n = round(s
 * log2 e) of their sum s, then r = ((-zh^2 - n ln2_hi) - n ln2_lo) + (P - tail), whose first
 * difference is exact (numbers on a 2^-16 grid, |result| < 2), so float32 rounding of z^2 does
 * not grow with z; then Cephes' exp polynomial of r times 2^n (as exp16). One exp instead of
 * exp(-zh^2) exp(P - tail): 2x faster on AVX-512, the same accuracy. No FMAs, so that every
 * instruction set gives the same bits (a software fmaf would make the portable path 6x
 * slower); s < -87.3365 gives 0 (GELU's float32 tail is then below 1e-38). x >= 0: x - 0.5 x
 * erfc(z); x < 0: 0.5 x erfc(z); |x| > 20: x or -0; NaN stays. */
#define OB_GELU_C                                                                            \
    {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f, -0.18628806f,        \
     0.09678418f, 0.37409196f, 1.00002368f, -1.26551223f}
#define OB_EXP_C {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, \
                  1.6666665459e-1f, 5.0000001201e-1f}
OB_ROWS_ATTR static inline __attribute__((always_inline)) void OB_ROWS(gelu16)(const float *x,
                                                                               float *y) {
    static const float c[10] = OB_GELU_C, ce[6] = OB_EXP_C;
    float z[16], zh[16], t[16], h[16];
    int32_t zi[16];
    for (int i = 0; i < 16; i++) {
        const float v = x[i] == x[i] ? x[i] : 0.0f;
        const float av = v < 0.0f ? -v : v;
        z[i] = (av < 20.0f ? av : 20.0f) * 0.70710678118654752f;
        t[i] = 1.0f / (1.0f + 0.5f * z[i]);
    }
    memcpy(zi, z, sizeof zi);
    for (int i = 0; i < 16; i++) zi[i] &= (int32_t)0xFFFFF000;
    memcpy(zh, zi, sizeof zh);
    for (int i = 0; i < 16; i++) {
        const float tt = t[i];
        float p = c[0];
        for (int k = 1; k < 10; k++) p = p * tt + c[k];
        const float tail = (z[i] - zh[i]) * (z[i] + zh[i]); /* z^2 - zh^2 */
        const float a1 = -(zh[i] * zh[i]);                 /* exact */
        const float a2 = p - tail;
        const float s = a1 + a2;
        const float sc = s < -87.3365f ? -87.3365f : s;
        const float n = (sc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
        const float r = ((a1 - n * 0.693359375f) - n * -2.12194440e-4f) + a2;
        float q = ce[0];
        for (int k = 1; k < 6; k++) q = q * r + ce[k];
        const float pe = (q * r) * r + r + 1.0f;
        int32_t eb = ((int32_t)n + 127) << 23;
        float sb;
        memcpy(&sb, &eb, sizeof sb);
        const float e = s < -87.3365f ? 0.0f : pe * sb;
        h[i] = 0.5f * x[i] * (t[i] * e); /* 0.5 x erfc(z) */
    }
    for (int i = 0; i < 16; i++) {
        const float v = x[i];
        const float g = v >= 0.0f ? v - h[i] : h[i];
        const float big = v > 0.0f ? v : -0.0f;
        const float r = (v < -20.0f || v > 20.0f) ? big : g;
        y[i] = v != v ? v : r;
    }
}

#ifdef OB_ROWS_AVX512
/* gelu16 on a zmm register: the same operations in the same order (so the same bits). The
 * portable loops, vectorized by the compiler, spent ~7 ns per value (the selects and the bit
 * masks on memory kept them scalar). */
OB_ROWS_ATTR static inline __attribute__((always_inline)) __m512 OB_ROWS(gelu512)(__m512 x) {
    static const float c[10] = OB_GELU_C, ce[6] = OB_EXP_C;
    const __m512 zero = _mm512_setzero_ps();
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    const __m512 v = _mm512_mask_mov_ps(x, nan, zero);
    const __m512 av = _mm512_mask_sub_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero, v);
    const __m512 twenty = _mm512_set1_ps(20.0f);
    const __m512 cz = _mm512_mask_mov_ps(twenty, _mm512_cmp_ps_mask(av, twenty, _CMP_LT_OQ), av);
    const __m512 z = _mm512_mul_ps(cz, _mm512_set1_ps(0.70710678118654752f));
    const __m512 one = _mm512_set1_ps(1.0f);
    const __m512 t = _mm512_div_ps(one, _mm512_add_ps(one, _mm512_mul_ps(_mm512_set1_ps(0.5f), z)));
    const __m512 zh = _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(z), _mm512_set1_epi32((int32_t)0xFFFFF000)));
    __m512 p = _mm512_set1_ps(c[0]);
    for (int k = 1; k < 10; k++) p = _mm512_add_ps(_mm512_mul_ps(p, t), _mm512_set1_ps(c[k]));
    const __m512 tail = _mm512_mul_ps(_mm512_sub_ps(z, zh), _mm512_add_ps(z, zh));
    const __m512 a1 = _mm512_sub_ps(zero, _mm512_mul_ps(zh, zh)); /* -(zh^2): exact */
    const __m512 a2 = _mm512_sub_ps(p, tail);
    const __m512 s = _mm512_add_ps(a1, a2);
    const __m512 lo = _mm512_set1_ps(-87.3365f);
    const __mmask16 under = _mm512_cmp_ps_mask(s, lo, _CMP_LT_OQ);
    const __m512 sc = _mm512_mask_mov_ps(s, under, lo);
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    const __m512 n = _mm512_sub_ps(
        _mm512_add_ps(_mm512_mul_ps(sc, _mm512_set1_ps(1.44269504088896341f)), magic), magic);
    const __m512 r = _mm512_add_ps(
        _mm512_sub_ps(_mm512_sub_ps(a1, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
                      _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f))),
        a2);
    __m512 q = _mm512_set1_ps(ce[0]);
    for (int k = 1; k < 6; k++) q = _mm512_add_ps(_mm512_mul_ps(q, r), _mm512_set1_ps(ce[k]));
    const __m512 pe =
        _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(q, r), r), r), one);
    const __m512i eb = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    const __m512 e = _mm512_maskz_mul_ps((__mmask16)~under, pe, _mm512_castsi512_ps(eb));
    const __m512 h = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_mul_ps(t, e));
    const __m512 g =
        _mm512_mask_sub_ps(h, _mm512_cmp_ps_mask(x, zero, _CMP_GE_OQ), x, h); /* x >= 0: x - h */
    const __m512 big = _mm512_mask_mov_ps(_mm512_set1_ps(-0.0f),
                                          _mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ), x);
    const __mmask16 far = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-20.0f), _CMP_LT_OQ) |
                          _mm512_cmp_ps_mask(x, twenty, _CMP_GT_OQ);
    const __m512 res = _mm512_mask_mov_ps(g, far, big);
    return _mm512_mask_mov_ps(res, nan, x);
}

OB_ROWS_ATTR void OB_ROWS(ob_gelu)(const float *x, float *y, int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + 16 <= i1; i += 16) _mm512_storeu_ps(y + i, OB_ROWS(gelu512)(_mm512_loadu_ps(x + i)));
    if (i < i1) {
        const __mmask16 m = (__mmask16)((1u << (i1 - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, OB_ROWS(gelu512)(_mm512_maskz_loadu_ps(m, x + i)));
    }
}
#else
OB_ROWS_ATTR void OB_ROWS(ob_gelu)(const float *x, float *y, int64_t i0, int64_t i1) {
    int64_t i = i0;
    for (; i + 16 <= i1; i += 16) OB_ROWS(gelu16)(x + i, y + i);
    if (i < i1) {
        float bx[16] = {0}, by[16];
        memcpy(bx, x + i, (size_t)(i1 - i) * sizeof(float));
        OB_ROWS(gelu16)(bx, by);
        memcpy(y + i, by, (size_t)(i1 - i) * sizeof(float));
    }
}
#endif /* OB_ROWS_AVX512 */
