/*
 * Run-time dispatch and work splitting over the thread pool (ob_pool.c).  Nothing here
 * depends on Python.
 */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ob_kernels.h"

/* ------------------------------------------------------------------ memory */

void *ob_alloc(size_t bytes) {
    void *p = NULL;
    size_t sz = (bytes + 63) & ~(size_t)63;
    if (sz == 0) sz = 64;
    if (posix_memalign(&p, 64, sz) != 0) return NULL;
    return p;
}

void ob_free(void *p) { free(p); }

/* ------------------------------------------------------------- ISA selection */

static const char *const k_isa_names[OB_ISA_COUNT] = {"generic", "avx2", "avx512",
                                                       "avx512_vnni", "amx"};

static const ob_isa_table *isa_table(int isa) {
#if OB_X86
    if (isa >= OB_ISA_AVX512) return &ob_avx512_table; /* vnni, amx: + their int8 kernels */
    if (isa == OB_ISA_AVX2) return &ob_avx2_table;
#endif
    (void)isa;
    return &ob_generic_table;
}

int ob_isa_supported(int isa) {
    if (isa == OB_ISA_GENERIC) return 1;
#if OB_X86 && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                     __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi2");
    if (isa == OB_ISA_AVX2) return avx2;
    const int avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                       __builtin_cpu_supports("avx512dq") &&
                       __builtin_cpu_supports("avx512vpopcntdq");
    if (isa == OB_ISA_AVX512) return avx512;
    const int vnni = avx512 && __builtin_cpu_supports("avx512vnni");
    if (isa == OB_ISA_VNNI) return vnni;
    if (isa == OB_ISA_AMX) return vnni && ob_amx_enable();
#endif
    return 0;
}

static int g_isa = -1;
static int g_threads = 0;

static int best_isa(void) {
    for (int isa = OB_ISA_COUNT - 1; isa > 0; isa--) {
        if (ob_isa_supported(isa)) return isa;
    }
    return OB_ISA_GENERIC;
}

int ob_get_isa(void) {
    if (g_isa < 0) g_isa = best_isa();
    return g_isa;
}

int ob_set_isa(int isa) {
    if (isa < 0) {
        g_isa = best_isa();
        return 0;
    }
    if (isa >= OB_ISA_COUNT || !ob_isa_supported(isa)) return -1;
    g_isa = isa;
    return 0;
}

const char *ob_isa_name(int isa) {
    return (isa >= 0 && isa < OB_ISA_COUNT) ? k_isa_names[isa] : "unknown";
}

static const ob_isa_table *current(void) { return isa_table(ob_get_isa()); }

const ob_isa_table *ob_current_table(void) { return current(); }

/* ------------------------------------------------------------------ threads */

void ob_set_num_threads(int n) { g_threads = n > 0 ? n : 0; }

int ob_get_num_threads(void) { return g_threads > 0 ? g_threads : ob_default_threads(); }

/* Threads for a call: the per-call request (>0) or the global setting, reduced so that
 * each thread gets at least `min_per_thread` units of `work`. */
static int resolve_threads(int requested, double work, double min_per_thread) {
    int t = requested > 0 ? requested : ob_get_num_threads();
    const double cap = work / min_per_thread;
    if (cap < (double)t) t = cap < 1.0 ? 1 : (int)cap;
    return t < 1 ? 1 : t;
}

typedef int (*range_fn)(const void *ctx, int64_t m0, int64_t m1, int64_t n0, int64_t n1);

static void split(int64_t units, int64_t unit, int64_t total, int parts, int idx, int64_t *lo,
                  int64_t *hi) {
    const int64_t a = units * idx / parts;
    const int64_t b = units * (idx + 1) / parts;
    *lo = ob_min64(a * unit, total);
    *hi = ob_min64(b * unit, total);
}

typedef struct {
    int64_t M, N, mun, nun, mu, nu;
    range_fn fn;
    const void *ctx;
    _Atomic int err;
} split_job;

/* Part `id` of `nt`: N is split first (in units of nu columns) because B/W panels are
 * repacked per thread; M (units of mu rows) only when N has fewer units than threads. */
static void split_task(void *vjob, int id, int nt) {
    split_job *j = (split_job *)vjob;
    const int tn = (int64_t)nt <= j->nun ? nt : (int)j->nun;
    int tm = nt / tn;
    if ((int64_t)tm > j->mun) tm = (int)j->mun;
    if (id >= tn * tm) return;
    int64_t m0, m1, n0, n1;
    split(j->nun, j->nu, j->N, tn, id % tn, &n0, &n1);
    split(j->mun, j->mu, j->M, tm, id / tn, &m0, &m1);
    if (m0 < m1 && n0 < n1 && j->fn(j->ctx, m0, m1, n0, n1) != 0) j->err = -1;
}

/* Run fn over [0, M) x [0, N), split over up to `threads` threads. */
static int run_2d(int threads, int64_t M, int64_t N, int64_t mu, int64_t nu, range_fn fn,
                  const void *ctx) {
    if (M <= 0 || N <= 0) return 0;
    const int64_t mun = ob_ceil_div(M, mu);
    const int64_t nun = ob_ceil_div(N, nu);
    if ((int64_t)threads > mun * nun) threads = (int)(mun * nun);
    if (threads <= 1) return fn(ctx, 0, M, 0, N);
    split_job job = {M, N, mun, nun, mu, nu, fn, ctx, 0};
    ob_parallel(threads, split_task, &job);
    return job.err;
}

/* ------------------------------------------------------------------ pack_bits */

typedef struct {
    const ob_isa_table *t;
    const float *x;
    uint64_t *out;
    int64_t K, Kw;
} pack_ctx;

static int pack_range(const void *vctx, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const pack_ctx *c = (const pack_ctx *)vctx;
    (void)n0;
    (void)n1;
    c->t->pack_bits(c->x + m0 * c->K, c->K, c->out + m0 * c->Kw, c->Kw, m1 - m0, c->K);
    return 0;
}

int ob_pack_bits(const float *x, uint64_t *out, int64_t M, int64_t K, int threads) {
    if (M <= 0 || K <= 0) return 0;
    pack_ctx c = {current(), x, out, K, ob_ceil_div(K, 64)};
    const int t = resolve_threads(threads, (double)M * (double)K, 1 << 16);
    return run_2d(t, M, 1, 1, 1, pack_range, &c);
}

/* ------------------------------------------------------------------ xnor_gemm */

typedef struct {
    const ob_isa_table *t;
    ob_xnor_args a;
} xnor_ctx;

static int xnor_range(const void *vctx, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const xnor_ctx *c = (const xnor_ctx *)vctx;
    return c->t->xnor(&c->a, m0, m1, n0, n1);
}

static int run_xnor(const ob_xnor_args *a, int64_t M, int64_t N, int threads) {
    xnor_ctx c = {current(), *a};
    const int t = resolve_threads(threads, (double)M * (double)N * (double)a->Kw, 1 << 15);
    return run_2d(t, M, N, 8, c.t->xnor_nb, xnor_range, &c);
}

/* Returns a copy of the (rows, Kw) bit matrix with the padding bits of the last word
 * cleared, or NULL in *copy when the padding is already clean. -1 on allocation failure. */
static int clean_padding(const uint64_t *src, int64_t rows, int64_t Kw, int64_t K,
                         uint64_t **copy) {
    *copy = NULL;
    if (K % 64 == 0 || Kw == 0) return 0;
    const uint64_t mask = (UINT64_C(1) << (K % 64)) - 1;
    int dirty = 0;
    for (int64_t r = 0; r < rows && !dirty; r++) dirty = (src[r * Kw + Kw - 1] & ~mask) != 0;
    if (!dirty) return 0;
    uint64_t *c = (uint64_t *)ob_alloc((size_t)(rows * Kw) * sizeof(uint64_t));
    if (c == NULL) return -1;
    memcpy(c, src, (size_t)(rows * Kw) * sizeof(uint64_t));
    for (int64_t r = 0; r < rows; r++) c[r * Kw + Kw - 1] &= mask;
    *copy = c;
    return 0;
}

int ob_xnor_gemm(const uint64_t *a, const uint64_t *b, int32_t *c, int64_t M, int64_t N,
                 int64_t K, int threads) {
    if (M <= 0 || N <= 0) return 0;
    const int64_t Kw = ob_ceil_div(K, 64);
    if (Kw == 0) {
        memset(c, 0, (size_t)(M * N) * sizeof(int32_t));
        return 0;
    }
    uint64_t *ac = NULL, *bc = NULL;
    if (clean_padding(a, M, Kw, K, &ac) != 0 || clean_padding(b, N, Kw, K, &bc) != 0) {
        ob_free(ac);
        return -1;
    }
    ob_xnor_args args = {ac ? ac : a, Kw, bc ? bc : b, Kw, c, N, Kw, K};
    const int err = run_xnor(&args, M, N, threads);
    ob_free(ac);
    ob_free(bc);
    return err;
}

/* ------------------------------------------------------------ binary_float_gemm */

typedef struct {
    const ob_isa_table *t;
    ob_bfgemm_args a;
} bf_ctx;

static int bf_range(const void *vctx, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const bf_ctx *c = (const bf_ctx *)vctx;
    return c->t->bfgemm(&c->a, m0, m1, n0, n1);
}

int ob_binary_float_gemm(const float *x, const uint64_t *w, const float *alpha,
                         const float *bias, float *y, int64_t M, int64_t N, int64_t K,
                         int threads) {
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) {
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) y[m * N + n] = bias != NULL ? bias[n] : 0.0f;
        return 0;
    }
    bf_ctx c = {current(), {x, K, w, ob_ceil_div(K, 64), alpha, bias, y, N, K, ob_ceil_div(K, 64)}};
    const int t = resolve_threads(threads, (double)M * (double)N * (double)K / 64.0, 1 << 15);
    return run_2d(t, M, N, 4, c.t->bfg_nb, bf_range, &c);
}

/* ------------------------------------------------------------------ conv2d */

typedef struct {
    const uint64_t *x;
    uint64_t *col;
    int32_t *out;
    const int32_t *corr;
    int64_t H, W, Cw, Ho, Wo, KH, KW, sh, sw, ph, pw, Cout;
    uint64_t lastmask;
    int64_t Cin, KKd; /* dense layout: row words of KH * KW * Cin bits (0: per-tap layout) */
} conv_ctx;

/* The output position (b, oh, ow) of an im2col row, advanced row by row without divisions. */
typedef struct {
    int64_t b, oh, ow;
} out_pos;

static inline out_pos out_pos_of(const conv_ctx *c, int64_t r) {
    const out_pos p = {r / (c->Wo * c->Ho), (r / c->Wo) % c->Ho, r % c->Wo};
    return p;
}

static inline void out_pos_next(const conv_ctx *c, out_pos *p) {
    if (++p->ow == c->Wo) {
        p->ow = 0;
        if (++p->oh == c->Ho) {
            p->oh = 0;
            p->b++;
        }
    }
}

/* OR the `nbits` (<= 64) low bits of v, higher bits clear, into a zeroed row at bit `off`. */
static inline void or_bits(uint64_t *row, int64_t off, uint64_t v, int64_t nbits) {
    const int s = (int)(off & 63);
    row[off >> 6] |= v << s;
    if (s + nbits > 64) row[(off >> 6) + 1] |= v >> (64 - s); /* s > 0 here */
}

/* OR the first `nbits` bits of src (bits past them cleared with `lastmask`) into a zeroed row
 * at bit `off`. */
static void put_bits(uint64_t *row, int64_t off, const uint64_t *src, int64_t nbits,
                     uint64_t lastmask) {
    const int64_t nw = ob_ceil_div(nbits, 64);
    for (int64_t j = 0; j < nw; j++) {
        const int64_t nb = ob_min64(64, nbits - 64 * j);
        or_bits(row, off + 64 * j, j == nw - 1 ? src[j] & lastmask : src[j], nb);
    }
}

/* One dense im2col row: tap t of the window at p holds its Cin bits at bit t * Cin, with no
 * per-tap word padding, so a 3x3 conv over 16 channels costs 3 words per row instead of 9
 * (ResNet-20's first stages); padded taps stay all-zero and are corrected like in the per-tap
 * layout. */
static void dense_row(const conv_ctx *c, out_pos p, uint64_t *dst) {
    for (int64_t i = 0; i < c->KKd; i++) dst[i] = 0;
    for (int64_t kh = 0; kh < c->KH; kh++) {
        const int64_t ih = p.oh * c->sh - c->ph + kh;
        if (ih < 0 || ih >= c->H) continue;
        for (int64_t kw = 0; kw < c->KW; kw++) {
            const int64_t iw = p.ow * c->sw - c->pw + kw;
            if (iw < 0 || iw >= c->W) continue;
            const uint64_t *src = c->x + ((p.b * c->H + ih) * c->W + iw) * c->Cw;
            put_bits(dst, (kh * c->KW + kw) * c->Cin, src, c->Cin, c->lastmask);
        }
    }
}

/* The common case, a 3x3 window inside the image over Cin <= 64 channels (one word per pixel),
 * with Cin a compile-time constant at the call sites, so every offset folds into an immediate.
 * The row is built in a local buffer of DENSE1_MAX_WORDS words. */
#define DENSE1_MAX_WORDS 16

static inline __attribute__((always_inline)) void dense1_row_3x3(const uint64_t *x, int64_t W,
                                                                 uint64_t mask, int64_t Cin,
                                                                 int64_t KKd, uint64_t *dst) {
    uint64_t acc[DENSE1_MAX_WORDS];
    /* zero only the KKd words used: `= {0}` on the whole array compiled to `rep stos`, whose
     * start-up cost was the largest part of each row */
    for (int64_t i = 0; i < KKd; i++) acc[i] = 0;
    for (int kh = 0; kh < 3; kh++) {
        for (int kw = 0; kw < 3; kw++) or_bits(acc, (kh * 3 + kw) * Cin, x[kh * W + kw] & mask, Cin);
    }
    memcpy(dst, acc, (size_t)KKd * sizeof(uint64_t));
}

static int im2col_dense_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const conv_ctx *c = (const conv_ctx *)vctx;
    (void)n0;
    (void)n1;
    const int fast = c->Cw == 1 && c->KH == 3 && c->KW == 3 && c->KKd <= DENSE1_MAX_WORDS;
    out_pos p = out_pos_of(c, r0);
    for (int64_t r = r0; r < r1; r++, out_pos_next(c, &p)) {
        uint64_t *dst = c->col + r * c->KKd;
        const int64_t ih0 = p.oh * c->sh - c->ph, iw0 = p.ow * c->sw - c->pw;
        if (!fast || ih0 < 0 || ih0 + 3 > c->H || iw0 < 0 || iw0 + 3 > c->W) {
            dense_row(c, p, dst);
            continue;
        }
        const uint64_t *x = c->x + (p.b * c->H + ih0) * c->W + iw0;
        switch (c->Cin) { /* the channel counts of common binary CNNs, unrolled */
            case 16: dense1_row_3x3(x, c->W, c->lastmask, 16, 3, dst); break;
            case 32: dense1_row_3x3(x, c->W, c->lastmask, 32, 5, dst); break;
            default: dense1_row_3x3(x, c->W, c->lastmask, c->Cin, c->KKd, dst); break;
        }
    }
    return 0;
}

static int im2col_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const conv_ctx *c = (const conv_ctx *)vctx;
    (void)n0;
    (void)n1;
    const int64_t Cw = c->Cw, KK = c->KH * c->KW * Cw;
    out_pos p = out_pos_of(c, r0);
    for (int64_t r = r0; r < r1; r++, out_pos_next(c, &p)) {
        uint64_t *dst = c->col + r * KK;
        const int64_t ih0 = p.oh * c->sh - c->ph, iw0 = p.ow * c->sw - c->pw;
        for (int64_t kh = 0; kh < c->KH; kh++) {
            const int64_t ih = ih0 + kh;
            const int row_in = ih >= 0 && ih < c->H;
            const uint64_t *srow = c->x + (p.b * c->H + ih) * c->W * Cw;
            for (int64_t kw = 0; kw < c->KW; kw++) {
                const int64_t iw = iw0 + kw;
                uint64_t *d = dst + (kh * c->KW + kw) * Cw;
                if (!row_in || iw < 0 || iw >= c->W) {
                    for (int64_t j = 0; j < Cw; j++) d[j] = 0;
                } else {
                    /* a word loop, not memcpy: Cw is 1-8 words for usual channel counts */
                    const uint64_t *src = srow + iw * Cw;
                    for (int64_t j = 0; j < Cw - 1; j++) d[j] = src[j];
                    d[Cw - 1] = src[Cw - 1] & c->lastmask;
                }
            }
        }
    }
    return 0;
}

static int64_t popcount_words(const uint64_t *q, int64_t n) {
    int64_t pc = 0;
    for (int64_t j = 0; j < n; j++) pc += __builtin_popcountll(q[j]);
    return pc;
}

#if OB_X86
__attribute__((target("popcnt"))) static int64_t popcount_words_hw(const uint64_t *q, int64_t n) {
    int64_t pc = 0;
    for (int64_t j = 0; j < n; j++) pc += __builtin_popcountll(q[j]);
    return pc;
}
#else
#define popcount_words_hw popcount_words
#endif

/* Padded taps were fed to the GEMM as all-zero bits, i.e. as +1 inputs: remove their
 * contribution corr[t][o] = Cin - 2 * popcount(w[o] at tap t). */
static int fixup_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const conv_ctx *c = (const conv_ctx *)vctx;
    (void)n0;
    (void)n1;
    out_pos p = out_pos_of(c, r0);
    for (int64_t r = r0; r < r1; r++, out_pos_next(c, &p)) {
        const int64_t ih0 = p.oh * c->sh - c->ph, iw0 = p.ow * c->sw - c->pw;
        /* interior outputs (every tap inside the image) need no correction */
        if (ih0 >= 0 && ih0 + c->KH <= c->H && iw0 >= 0 && iw0 + c->KW <= c->W) continue;
        int32_t *o = c->out + r * c->Cout;
        for (int64_t kh = 0; kh < c->KH; kh++) {
            const int64_t ih = ih0 + kh;
            const int row_out = ih < 0 || ih >= c->H;
            for (int64_t kw = 0; kw < c->KW; kw++) {
                const int64_t iw = iw0 + kw;
                if (!row_out && iw >= 0 && iw < c->W) continue;
                const int32_t *cr = c->corr + (kh * c->KW + kw) * c->Cout;
                for (int64_t q = 0; q < c->Cout; q++) o[q] -= cr[q];
            }
        }
    }
    return 0;
}

int ob_binary_conv2d(const uint64_t *xbits, const uint64_t *w, int32_t *out, int64_t batch,
                     int64_t H, int64_t W, int64_t Cin, int64_t Cout, int64_t KH, int64_t KW,
                     int64_t sh, int64_t sw, int64_t ph, int64_t pw, int threads) {
    const int64_t Ho = (H + 2 * ph - KH) / sh + 1;
    const int64_t Wo = (W + 2 * pw - KW) / sw + 1;
    if (batch <= 0 || Cout <= 0 || Ho <= 0 || Wo <= 0 || H + 2 * ph < KH || W + 2 * pw < KW)
        return 0;
    const int64_t rows = batch * Ho * Wo;
    if (Cin <= 0 || KH <= 0 || KW <= 0) {
        memset(out, 0, (size_t)(rows * Cout) * sizeof(int32_t));
        return 0;
    }
    const int64_t Cw = ob_ceil_div(Cin, 64);
    const int64_t taps = KH * KW;
    const int64_t KK = taps * Cw;
    const uint64_t lastmask = Cin % 64 ? (UINT64_C(1) << (Cin % 64)) - 1 : ~UINT64_C(0);

    uint64_t *wclean = NULL;
    int32_t *corr = (int32_t *)ob_alloc((size_t)(taps * Cout) * sizeof(int32_t));
    uint64_t *col = (uint64_t *)ob_alloc((size_t)(rows * KK) * sizeof(uint64_t));
    int err = corr == NULL || col == NULL;
    if (!err && Cin % 64) {
        wclean = (uint64_t *)ob_alloc((size_t)(Cout * KK) * sizeof(uint64_t));
        err = wclean == NULL;
        if (!err) {
            memcpy(wclean, w, (size_t)(Cout * KK) * sizeof(uint64_t));
            for (int64_t i = Cw - 1; i < Cout * KK; i += Cw) wclean[i] &= lastmask;
        }
    }
    if (err) {
        ob_free(corr);
        ob_free(col);
        ob_free(wclean);
        return -1;
    }
    const uint64_t *wc = wclean ? wclean : w;
    const int hw_popcnt = ob_isa_supported(OB_ISA_AVX2);
    for (int64_t t = 0; t < taps; t++) {
        for (int64_t o = 0; o < Cout; o++) {
            const uint64_t *q = wc + o * KK + t * Cw;
            const int64_t pc = hw_popcnt ? popcount_words_hw(q, Cw) : popcount_words(q, Cw);
            corr[t * Cout + o] = (int32_t)(Cin - 2 * pc);
        }
    }
    conv_ctx c = {xbits, col, out, corr, H,  W,  Cw,   Ho,       Wo,  KH,
                  KW,    sh,  sw,  ph,   pw, Cout, lastmask, Cin, 0};
    uint64_t *wd = NULL;
    const int64_t KKd = ob_ceil_div(taps * Cin, 64);
    if (KKd < KK) { /* channels do not fill whole words: pack the taps densely */
        wd = (uint64_t *)ob_alloc((size_t)(Cout * KKd) * sizeof(uint64_t));
        if (wd == NULL) {
            ob_free(corr);
            ob_free(col);
            ob_free(wclean);
            return -1;
        }
        memset(wd, 0, (size_t)(Cout * KKd) * sizeof(uint64_t));
        for (int64_t o = 0; o < Cout; o++)
            for (int64_t t = 0; t < taps; t++)
                put_bits(wd + o * KKd, t * Cin, wc + o * KK + t * Cw, Cin, lastmask);
        c.KKd = KKd;
    }
    const int64_t KKr = wd ? KKd : KK; /* words per im2col row */
    const int tcopy = resolve_threads(threads, (double)rows * (double)KK, 1 << 14);
    err = run_2d(tcopy, rows, 1, 1, 1, wd ? im2col_dense_range : im2col_range, &c);
    if (!err) {
        ob_xnor_args a = {col, KKr, wd ? wd : wc, KKr, out, Cout, KKr, taps * Cin};
        err = run_xnor(&a, rows, Cout, threads);
    }
    ob_free(wd);
    if (!err && (ph > 0 || pw > 0)) {
        const int tfix = resolve_threads(threads, (double)rows * (double)Cout, 1 << 16);
        err = run_2d(tfix, rows, 1, 1, 1, fixup_range, &c);
    }
    ob_free(corr);
    ob_free(col);
    ob_free(wclean);
    return err;
}

/* ------------------------------------------------------------- threshold_sign */

typedef struct {
    const ob_isa_table *t;
    const void *y;
    const void *thr;
    const uint64_t *flip;
    uint64_t *out;
    int64_t N, Nw;
    int is_int;
} thr_ctx;

static int thr_range(const void *vctx, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const thr_ctx *c = (const thr_ctx *)vctx;
    (void)n0;
    (void)n1;
    if (c->is_int) {
        c->t->threshold_i32((const int32_t *)c->y + m0 * c->N, c->N, (const int32_t *)c->thr,
                            c->flip, c->out + m0 * c->Nw, c->Nw, m1 - m0, c->N);
    } else {
        c->t->threshold_f32((const float *)c->y + m0 * c->N, c->N, (const float *)c->thr,
                            c->flip, c->out + m0 * c->Nw, c->Nw, m1 - m0, c->N);
    }
    return 0;
}

static uint64_t *pack_flags(const uint8_t *flip, int64_t N) {
    const int64_t Nw = ob_ceil_div(N, 64);
    uint64_t *f = (uint64_t *)ob_alloc((size_t)Nw * sizeof(uint64_t));
    if (f == NULL) return NULL;
    memset(f, 0, (size_t)Nw * sizeof(uint64_t));
    for (int64_t n = 0; n < N; n++) f[n / 64] |= (uint64_t)(flip[n] != 0) << (n % 64);
    return f;
}

int ob_threshold_sign_f32(const float *y, const float *thr, const uint8_t *flip, uint64_t *out,
                          int64_t M, int64_t N, int threads) {
    if (M <= 0 || N <= 0) return 0;
    uint64_t *f = pack_flags(flip, N);
    if (f == NULL) return -1;
    thr_ctx c = {current(), y, thr, f, out, N, ob_ceil_div(N, 64), 0};
    const int t = resolve_threads(threads, (double)M * (double)N, 1 << 16);
    const int err = run_2d(t, M, 1, 1, 1, thr_range, &c);
    ob_free(f);
    return err;
}

int ob_threshold_sign_i32(const int32_t *y, const float *thr, const uint8_t *flip,
                          uint64_t *out, int64_t M, int64_t N, int threads) {
    if (M <= 0 || N <= 0) return 0;
    /* y >= t  <=>  y >= ceil(t) for integer y; thresholds outside the int32 range (or NaN,
     * which never compares true) turn into "always true", combined with a flipped flag. */
    uint8_t *fl = (uint8_t *)ob_alloc((size_t)N);
    int32_t *ti = (int32_t *)ob_alloc((size_t)N * sizeof(int32_t));
    if (fl == NULL || ti == NULL) {
        ob_free(fl);
        ob_free(ti);
        return -1;
    }
    for (int64_t n = 0; n < N; n++) {
        const double t = (double)thr[n];
        uint8_t f = flip[n] != 0;
        if (t != t || t > 2147483647.0) { /* NaN or above the int32 range */
            ti[n] = INT32_MIN;
            f = (uint8_t)!f;
        } else if (t <= -2147483648.0) {
            ti[n] = INT32_MIN;
        } else {
            int64_t c = (int64_t)t; /* truncates toward zero */
            if ((double)c < t) c++;
            ti[n] = (int32_t)c;
        }
        fl[n] = f;
    }
    uint64_t *f = pack_flags(fl, N);
    int err = f == NULL;
    if (!err) {
        thr_ctx c = {current(), y, ti, f, out, N, ob_ceil_div(N, 64), 1};
        const int t = resolve_threads(threads, (double)M * (double)N, 1 << 16);
        err = run_2d(t, M, 1, 1, 1, thr_range, &c);
    }
    ob_free(f);
    ob_free(fl);
    ob_free(ti);
    return err ? -1 : 0;
}

/* ------------------------------------------------------------------ scale_bias */

typedef struct {
    const ob_isa_table *t;
    const int32_t *y;
    const float *alpha, *beta;
    float *out;
    int64_t N;
} sb_ctx;

static int sb_range(const void *vctx, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const sb_ctx *c = (const sb_ctx *)vctx;
    (void)n0;
    (void)n1;
    c->t->scale_bias(c->y + m0 * c->N, c->N, c->alpha, c->beta, c->out + m0 * c->N, c->N,
                     m1 - m0, c->N);
    return 0;
}

int ob_scale_bias(const int32_t *y, const float *alpha, const float *beta, float *out,
                  int64_t M, int64_t N, int threads) {
    if (M <= 0 || N <= 0) return 0;
    sb_ctx c = {current(), y, alpha, beta, out, N};
    const int t = resolve_threads(threads, (double)M * (double)N, 1 << 16);
    return run_2d(t, M, 1, 1, 1, sb_range, &c);
}

/* ------------------------------------------------------------------ erf, GELU */

typedef struct {
    const ob_isa_table *t;
    const float *x;
    float *y;
    int fn;
} special_ctx;

static int special_range(const void *vctx, int64_t i0, int64_t i1, int64_t n0, int64_t n1) {
    const special_ctx *c = (const special_ctx *)vctx;
    (void)n0;
    (void)n1;
    const float *x = c->x;
    float *y = c->y;
    if (c->fn == OB_SPECIAL_ERF) {
        for (int64_t i = i0; i < i1; i++) y[i] = erff(x[i]);
    } else { /* GELU, vectorized (ob_rows.c) */
        c->t->gelu(x, y, i0, i1);
    }
    return 0;
}

int ob_special_f32(const float *x, float *y, int64_t n, int fn, int threads) {
    if (n <= 0) return 0;
    special_ctx c = {current(), x, y, fn};
    const int t = resolve_threads(threads, (fn == OB_SPECIAL_ERF ? 16.0 : 4.0) * (double)n, 1 << 16);
    return run_2d(t, n, 1, 16, 1, special_range, &c);
}

/* ------------------------------------------------------------------ softmax, layer norm */

typedef struct {
    const ob_isa_table *t;
    const float *x, *w, *b;
    float *y;
    int64_t n;
    int log, safe;
    float eps;
} rows_ctx;

static int softmax_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const rows_ctx *c = (const rows_ctx *)vctx;
    (void)n0;
    (void)n1;
    c->t->softmax_rows(c->x, c->y, r0, r1, c->n, c->log, c->safe);
    return 0;
}

static int layernorm_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const rows_ctx *c = (const rows_ctx *)vctx;
    (void)n0;
    (void)n1;
    c->t->layernorm_rows(c->x, c->y, r0, r1, c->n, c->w, c->b, c->eps);
    return 0;
}

int ob_softmax_f32(const float *x, float *y, int64_t R, int64_t n, int log, int safe,
                   int threads) {
    if (R <= 0 || n <= 0) return 0;
    rows_ctx c = {current(), x, NULL, NULL, y, n, log, safe, 0.0f};
    const int t = resolve_threads(threads, 8.0 * (double)R * (double)n, 1 << 16);
    return run_2d(t, R, 1, 1, 1, softmax_range, &c);
}

int ob_layernorm_f32(const float *x, float *y, int64_t R, int64_t n, const float *w,
                     const float *b, float eps, int threads) {
    if (R <= 0 || n <= 0) return 0;
    rows_ctx c = {current(), x, w, b, y, n, 0, 0, eps};
    const int t = resolve_threads(threads, 4.0 * (double)R * (double)n, 1 << 16);
    return run_2d(t, R, 1, 1, 1, layernorm_range, &c);
}

/* ------------------------------------------------------------------ clamp */

typedef struct {
    float *x;
    float lo, hi;
} clamp_ctx;

static int clamp_range(const void *vctx, int64_t i0, int64_t i1, int64_t n0, int64_t n1) {
    const clamp_ctx *c = (const clamp_ctx *)vctx;
    (void)n0;
    (void)n1;
    float *x = c->x;
    const float lo = c->lo, hi = c->hi;
    /* one pass, in place; the compiler vectorizes it (NaN stays NaN, as with np.maximum) */
    for (int64_t i = i0; i < i1; i++) {
        const float v = x[i] < lo ? lo : x[i];
        x[i] = v > hi ? hi : v;
    }
    return 0;
}

int ob_clamp_f32(float *x, int64_t n, float lo, float hi, int threads) {
    if (n <= 0) return 0;
    clamp_ctx c = {x, lo, hi};
    const int t = resolve_threads(threads, (double)n, 1 << 16);
    return run_2d(t, n, 1, 16, 1, clamp_range, &c);
}

typedef struct {
    const float *x;
    float *out;
} sign_ctx;

static int sign_range(const void *vctx, int64_t i0, int64_t i1, int64_t n0, int64_t n1) {
    const sign_ctx *c = (const sign_ctx *)vctx;
    (void)n0;
    (void)n1;
    /* x >= 0 -> +1 (both zeros), else -1 (NaN too, as pack_bits reads it); vectorized */
    for (int64_t i = i0; i < i1; i++) c->out[i] = c->x[i] >= 0.0f ? 1.0f : -1.0f;
    return 0;
}

int ob_sign_f32(const float *x, float *out, int64_t n, int threads) {
    if (n <= 0) return 0;
    sign_ctx c = {x, out};
    const int t = resolve_threads(threads, (double)n, 1 << 16);
    return run_2d(t, n, 1, 16, 1, sign_range, &c);
}

/* --------------------------------------------------------------- im2col_f32 */

typedef struct {
    const float *x;
    float *out;
    int64_t H, W, C, Ho, Wo;
    int KH, KW, sh, sw, ph, pw;
} im2col_f32_ctx;

/* Rows [r0, r1) of the patch matrix: row (n, oy, ox) holds x[n, oy*sh - ph + ky,
 * ox*sw - pw + kx, :] for ky, kx in order, zeros where the tap falls in the padding. In NHWC
 * the in-range taps of one kernel row are contiguous, so each becomes one memcpy. */
static int im2col_f32_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const im2col_f32_ctx *c = (const im2col_f32_ctx *)vctx;
    (void)n0;
    (void)n1;
    const int64_t C = c->C, rowlen = (int64_t)c->KH * c->KW * C;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t ox = r % c->Wo, oy = (r / c->Wo) % c->Ho, n = r / (c->Wo * c->Ho);
        float *dst = c->out + r * rowlen;
        const int64_t ix0 = ox * c->sw - c->pw;
        /* the taps kx in [k0, k1) land inside the image */
        const int64_t k0 = ix0 < 0 ? -ix0 : 0;
        const int64_t k1 = ob_min64(c->KW, c->W - ix0);
        for (int ky = 0; ky < c->KH; ky++, dst += (int64_t)c->KW * C) {
            const int64_t iy = oy * c->sh - c->ph + ky;
            if (iy < 0 || iy >= c->H || k1 <= k0) {
                memset(dst, 0, (size_t)(c->KW * C) * sizeof(float));
                continue;
            }
            if (k0 > 0) memset(dst, 0, (size_t)(k0 * C) * sizeof(float));
            memcpy(dst + k0 * C, c->x + ((n * c->H + iy) * c->W + ix0 + k0) * C,
                   (size_t)((k1 - k0) * C) * sizeof(float));
            if (k1 < c->KW) memset(dst + k1 * C, 0, (size_t)((c->KW - k1) * C) * sizeof(float));
        }
    }
    return 0;
}

int ob_im2col_f32(const float *x, float *out, int64_t B, int64_t H, int64_t W, int64_t C,
                  int KH, int KW, int sh, int sw, int ph, int pw, int threads) {
    const int64_t Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
    const int64_t rows = B * Ho * Wo;
    if (rows <= 0 || C <= 0) return 0;
    im2col_f32_ctx c = {x, out, H, W, C, Ho, Wo, KH, KW, sh, sw, ph, pw};
    const int t = resolve_threads(threads, (double)rows * (double)(KH * KW * C), 1 << 15);
    return run_2d(t, rows, 1, 1, 1, im2col_f32_range, &c);
}

/* ---------------------------------------------------------------------- sgemm */

typedef struct {
    const ob_isa_table *t;
    ob_sgemm_args a;
} sgemm_ctx;

static int sgemm_range(const void *vctx, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const sgemm_ctx *c = (const sgemm_ctx *)vctx;
    return c->t->sgemm(&c->a, m0, m1, n0, n1);
}

int ob_sgemm_available(void) { return current()->sgemm != NULL; }

int ob_sgemm(const ob_sgemm_args *args, int64_t M, int64_t N, int threads) {
    sgemm_ctx c = {current(), *args};
    if (c.t->sgemm == NULL) return -2;
    /* at least ~1 M multiply-adds per thread: below that the hand-over costs more than it saves */
    const double work = (double)M * (double)N * (double)(args->K > 0 ? args->K : 1);
    const int t = resolve_threads(threads, work, 1 << 20);
    return run_2d(t, M, N, c.t->sgemm_mb, c.t->sgemm_nb, sgemm_range, &c);
}

/* ------------------------------------------------------------- xnor panels */

void ob_xnor_pack_panels(const uint64_t *b, uint64_t *out, int64_t N, int64_t K) {
    const int64_t Kw = ob_ceil_div(K, 64), P = ob_ceil_div(N, OB_XNOR_PANEL);
    const uint64_t last = K % 64 ? (UINT64_C(1) << (K % 64)) - 1 : ~UINT64_C(0);
    for (int64_t p = 0; p < P; p++) {
        for (int64_t k = 0; k < Kw; k++) {
            uint64_t *o = out + (p * Kw + k) * OB_XNOR_PANEL;
            for (int64_t j = 0; j < OB_XNOR_PANEL; j++) {
                const int64_t n = p * OB_XNOR_PANEL + j;
                o[j] = n < N ? b[n * Kw + k] & (k == Kw - 1 ? last : ~UINT64_C(0)) : 0;
            }
        }
    }
}

static int xnor_panels_range(const void *vctx, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const xnor_ctx *c = (const xnor_ctx *)vctx;
    return c->t->xnor_panels(&c->a, m0, m1, n0, n1);
}

int ob_xnor_gemm_panels(const uint64_t *a, const uint64_t *panels, int32_t *c, int64_t M,
                        int64_t N, int64_t K, int threads) {
    if (M <= 0 || N <= 0) return 0;
    const int64_t Kw = ob_ceil_div(K, 64);
    if (Kw == 0) {
        memset(c, 0, (size_t)(M * N) * sizeof(int32_t));
        return 0;
    }
    uint64_t *ac = NULL;
    if (clean_padding(a, M, Kw, K, &ac) != 0) return -1;
    xnor_ctx x = {current(), {ac ? ac : a, Kw, panels, 0, c, N, Kw, K}};
    const int t = resolve_threads(threads, (double)M * (double)N * (double)Kw, 1 << 15);
    const int err = run_2d(t, M, N, 8, OB_XNOR_PANEL, xnor_panels_range, &x);
    ob_free(ac);
    return err;
}

/* ------------------------------------------------------------- direct convs */

typedef struct {
    const ob_isa_table *t;
    ob_dconv_args a;
    const float *x;
    float *xp;
    int64_t H, W, ph, pw;
} dconv_ctx;

/* rows (b, iy) of the zero-padded input */
static int pad_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const dconv_ctx *c = (const dconv_ctx *)vctx;
    (void)n0;
    (void)n1;
    const int64_t Hp = c->a.Hp, Wp = c->a.Wp, C = c->a.C;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / Hp, iy = r % Hp - c->ph;
        float *dst = c->xp + r * Wp * C;
        if (iy < 0 || iy >= c->H) {
            memset(dst, 0, (size_t)(Wp * C) * sizeof(float));
            continue;
        }
        memset(dst, 0, (size_t)(c->pw * C) * sizeof(float));
        memcpy(dst + c->pw * C, c->x + (b * c->H + iy) * c->W * C, (size_t)(c->W * C) * sizeof(float));
        memset(dst + (c->pw + c->W) * C, 0, (size_t)(c->pw * C) * sizeof(float));
    }
    return 0;
}

static int dconv_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const dconv_ctx *c = (const dconv_ctx *)vctx;
    return c->t->dconv(&c->a, r0, r1, n0, n1);
}

int ob_direct_conv2d(const float *x, const float *w, int64_t ldw, const float *alpha,
                     const float *beta, float *y, int64_t B, int64_t H, int64_t W, int64_t C,
                     int64_t N, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph,
                     int64_t pw, int threads) {
    const int64_t Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
    if (B <= 0 || N <= 0 || Ho <= 0 || Wo <= 0) return 0;
    const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
    dconv_ctx c = {current(), {x, Hp, Wp, C, w, ldw, alpha, beta, y, Ho, Wo, N, KH, KW, sh, sw},
                   x, NULL, H, W, ph, pw};
    int err = 0;
    if (ph > 0 || pw > 0) {
        c.xp = (float *)ob_alloc((size_t)(B * Hp * Wp * C) * sizeof(float));
        if (c.xp == NULL) return -1;
        const int tp = resolve_threads(threads, (double)(B * Hp * Wp * C), 1 << 15);
        err = run_2d(tp, B * Hp, 1, 1, 1, pad_range, &c);
        c.a.x = c.xp;
    }
    if (!err) {
        const double work = (double)(B * Ho * Wo) * (double)N * (double)(KH * KW * C);
        const int t = resolve_threads(threads, work, 1 << 18);
        err = run_2d(t, B * Ho, N, 1, 64, dconv_range, &c);
    }
    ob_free(c.xp);
    return err;
}

typedef struct {
    const ob_isa_table *t;
    ob_dwconv_args a;
} dw_ctx;

static int dw_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const dw_ctx *c = (const dw_ctx *)vctx;
    (void)n0;
    (void)n1;
    return c->t->dwconv(&c->a, r0, r1);
}

int ob_depthwise_conv2d(const float *x, const float *w, const float *alpha, const float *beta,
                        float *y, int64_t B, int64_t H, int64_t W, int64_t C, int64_t KH,
                        int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int threads) {
    const int64_t Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
    if (B <= 0 || C <= 0 || Ho <= 0 || Wo <= 0) return 0;
    dw_ctx c = {current(), {x, H, W, C, w, alpha, beta, y, Ho, Wo, KH, KW, sh, sw, ph, pw}};
    const int t = resolve_threads(threads, (double)(B * Ho * Wo * C * KH * KW), 1 << 16);
    return run_2d(t, B * Ho, 1, 1, 1, dw_range, &c);
}

/* ------------------------------------------------------- int8 activations */

typedef int (*u8_fn)(const ob_u8gemm_args *, int64_t, int64_t, int64_t, int64_t);

typedef struct {
    u8_fn fn;
    ob_u8gemm_args a;
} u8_ctx;

static int u8_range(const void *vctx, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const u8_ctx *c = (const u8_ctx *)vctx;
    return c->fn(&c->a, m0, m1, n0, n1);
}

/* rows are padded to a multiple of this (whole AMX tiles may be read) */
#define OB_U8_ROWS 64

/* From this many rows on, AMX tiles (where the ISA level has them) instead of VNNI; both give
 * the same integers.  Settable for tests and benchmarks (ob_set_u8_amx_min_rows). */
static int g_amx_min_rows = 6;

void ob_set_u8_amx_min_rows(int n) { g_amx_min_rows = n < 1 ? 1 : n; }

static int run_u8(ob_u8gemm_args *a, int64_t M, int64_t N, int threads) {
    const int isa = ob_get_isa();
    u8_ctx c = {ob_u8gemm_generic, *a};
    int64_t mu = 1, nu = 16;
#if OB_X86
    if (isa >= OB_ISA_AMX && M >= g_amx_min_rows) {
        c.fn = ob_u8gemm_amx;
        mu = M <= 16 ? 16 : 64;
        nu = M <= 16 ? 64 : 32;
    } else if (isa >= OB_ISA_VNNI) {
        c.fn = ob_u8gemm_vnni;
        mu = 4;
        nu = 64;
    }
#else
    (void)isa;
#endif
    const int t = resolve_threads(threads, (double)M * (double)N * (double)a->K, 1 << 20);
    return run_2d(t, M, N, mu, nu, u8_range, &c);
}

void ob_quant_rows(const float *x, int64_t ldx, int64_t len, const float *inv,
                   const int32_t *zero, uint8_t *q, int64_t ldq, int64_t rows);

typedef struct {
    const float *x;
    int64_t len, ldx;
    uint8_t *q;
    int64_t ldq;
    float *scale, *inv;
    int32_t *zero;
} quant_ctx;

static int quant_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const quant_ctx *c = (const quant_ctx *)vctx;
    (void)n0;
    (void)n1;
    for (int64_t r = r0; r < r1; r++) {
        ob_quant_params(c->x + r * c->ldx, c->len, c->scale + r, c->zero + r, c->inv + r);
        ob_quant_rows(c->x + r * c->ldx, c->ldx, c->len, c->inv + r, c->zero + r,
                      c->q + r * c->ldq, c->ldq, 1);
    }
    return 0;
}

static int quantize(const float *x, int64_t G, int64_t len, uint8_t *q, int64_t ldq, float *scale,
                    int32_t *zero, int threads) {
    float *inv = (float *)ob_alloc((size_t)G * sizeof(float));
    if (inv == NULL) return -1;
    quant_ctx c = {x, len, len, q, ldq, scale, inv, zero};
    const int t = resolve_threads(threads, (double)G * (double)len, 1 << 15);
    const int err = run_2d(t, G, 1, 1, 1, quant_range, &c);
    ob_free(inv);
    return err;
}

int ob_quantize_u8(const float *x, uint8_t *q, float *scale, int32_t *zero, int64_t G,
                   int64_t len, int threads) {
    if (G <= 0) return 0;
    return quantize(x, G, len, q, len, scale, zero, threads);
}

int ob_binary_u8_gemm(const float *x, const uint64_t *wp, const int32_t *wsum,
                      const float *alpha, const float *beta, float *y, int64_t M, int64_t N,
                      int64_t K, int threads) {
    if (M <= 0 || N <= 0) return 0;
    const int64_t Kp = ob_max64(64, ob_ceil_div(K, 64) * 64);
    const int64_t Mp = ob_ceil_div(M, OB_U8_ROWS) * OB_U8_ROWS;
    uint8_t *q = (uint8_t *)ob_alloc((size_t)(Mp * Kp));
    float *scale = (float *)ob_alloc((size_t)M * sizeof(float));
    int32_t *zero = (int32_t *)ob_alloc((size_t)M * sizeof(int32_t));
    int err = q == NULL || scale == NULL || zero == NULL;
    if (!err) {
        memset(q + M * Kp, 0, (size_t)((Mp - M) * Kp));
        err = quantize(x, M, K, q, Kp, scale, zero, threads);
    }
    if (!err) {
        ob_u8gemm_args a = {q, Kp, wp, ob_ceil_div(K, 64) * 16, wsum, scale, zero, alpha, beta,
                            y, N, K};
        err = run_u8(&a, M, N, threads);
    }
    ob_free(q);
    ob_free(scale);
    ob_free(zero);
    return err ? -1 : 0;
}

typedef struct {
    const uint8_t *x;
    uint8_t *col;
    const int32_t *zero; /* per sample */
    int64_t H, W, C, Ho, Wo, KH, KW, sh, sw, ph, pw, K, ldq;
} u8col_ctx;

#if OB_X86
void ob_bytes_avx512(uint8_t *dst, const uint8_t *src, int64_t n, uint8_t z);
#endif

static inline void put_bytes(int wide, uint8_t *dst, const uint8_t *src, int64_t n, uint8_t z) {
#if OB_X86
    if (wide) {
        ob_bytes_avx512(dst, src, n, z);
        return;
    }
#endif
    (void)wide;
    if (src != NULL) memcpy(dst, src, (size_t)n);
    else memset(dst, z, (size_t)n);
}

static int u8col_range(const void *vctx, int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
    const u8col_ctx *c = (const u8col_ctx *)vctx;
    (void)n0;
    (void)n1;
    const int64_t C = c->C;
    const int wide = ob_get_isa() >= OB_ISA_AVX512; /* masked copies: no call per tap row */
    for (int64_t r = r0; r < r1; r++) {
        const int64_t ox = r % c->Wo, oy = (r / c->Wo) % c->Ho, b = r / (c->Wo * c->Ho);
        const uint8_t z = (uint8_t)c->zero[b];
        uint8_t *dst = c->col + r * c->ldq;
        const int64_t ix0 = ox * c->sw - c->pw;
        const int64_t k0 = ix0 < 0 ? -ix0 : 0, k1 = ob_min64(c->KW, c->W - ix0);
        for (int64_t ky = 0; ky < c->KH; ky++, dst += c->KW * C) {
            const int64_t iy = oy * c->sh - c->ph + ky;
            if (iy < 0 || iy >= c->H || k1 <= k0) {
                put_bytes(wide, dst, NULL, c->KW * C, z);
                continue;
            }
            if (k0 > 0) put_bytes(wide, dst, NULL, k0 * C, z);
            put_bytes(wide, dst + k0 * C, c->x + ((b * c->H + iy) * c->W + ix0 + k0) * C,
                      (k1 - k0) * C, z);
            if (k1 < c->KW) put_bytes(wide, dst + k1 * C, NULL, (c->KW - k1) * C, z);
        }
    }
    return 0;
}

int ob_binary_u8_conv2d(const float *x, const uint64_t *wp, const int32_t *wsum,
                        const float *alpha, const float *beta, float *y, int64_t B, int64_t H,
                        int64_t W, int64_t C, int64_t N, int64_t KH, int64_t KW, int64_t sh,
                        int64_t sw, int64_t ph, int64_t pw, int threads) {
    const int64_t Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
    if (B <= 0 || N <= 0 || Ho <= 0 || Wo <= 0) return 0;
    const int64_t M = B * Ho * Wo, K = KH * KW * C, L = H * W * C;
    const int64_t Kp = ob_max64(64, ob_ceil_div(K, 64) * 64);
    const int64_t Mp = ob_ceil_div(M, OB_U8_ROWS) * OB_U8_ROWS;
    const int direct = KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
    /* quantized input; for a 1x1 conv it is the GEMM's operand itself (rows C bytes apart) */
    const int64_t qbytes = direct ? Mp * C + Kp : B * L;
    uint8_t *qx = (uint8_t *)ob_alloc((size_t)qbytes);
    float *sc = (float *)ob_alloc((size_t)B * sizeof(float));
    int32_t *zp = (int32_t *)ob_alloc((size_t)B * sizeof(int32_t));
    float *rs = (float *)ob_alloc((size_t)M * sizeof(float));
    int32_t *rz = (int32_t *)ob_alloc((size_t)M * sizeof(int32_t));
    uint8_t *col = NULL;
    int err = qx == NULL || sc == NULL || zp == NULL || rs == NULL || rz == NULL;
    if (!err) {
        if (direct) memset(qx + M * C, 0, (size_t)(qbytes - M * C));
        err = quantize(x, B, L, qx, L, sc, zp, threads);
    }
    if (!err && !direct) {
        col = (uint8_t *)ob_alloc((size_t)(Mp * Kp));
        err = col == NULL;
        if (!err) {
            memset(col + M * Kp, 0, (size_t)((Mp - M) * Kp));
            u8col_ctx cc = {qx, col, zp, H, W, C, Ho, Wo, KH, KW, sh, sw, ph, pw, K, Kp};
            const int t = resolve_threads(threads, (double)M * (double)K, 1 << 15);
            err = run_2d(t, M, 1, 1, 1, u8col_range, &cc);
        }
    }
    if (!err) {
        for (int64_t r = 0; r < M; r++) {
            rs[r] = sc[r / (Ho * Wo)];
            rz[r] = zp[r / (Ho * Wo)];
        }
        ob_u8gemm_args a = {direct ? qx : col, direct ? C : Kp, wp, ob_ceil_div(K, 64) * 16,
                            wsum, rs, rz, alpha, beta, y, N, K};
        err = run_u8(&a, M, N, threads);
    }
    ob_free(qx);
    ob_free(col);
    ob_free(sc);
    ob_free(zp);
    ob_free(rs);
    ob_free(rz);
    return err ? -1 : 0;
}
