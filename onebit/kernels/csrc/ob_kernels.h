/*
 * onebit native kernels: shared declarations.
 *
 * The kernels work on raw, C-contiguous buffers and never touch Python or libtorch.
 * Each instruction-set variant (generic C, AVX2, AVX-512+VPOPCNTDQ) fills one
 * ob_isa_table; ob_driver.c picks a table at run time, splits the work over the
 * threads of ob_pool.c and calls the table's single-threaded range kernels.
 *
 * Bit layout (shared by every op): bit j of word k of a row holds column 64*k + j;
 * a set bit means +1, a clear bit means -1.  Padding bits beyond the logical
 * length are zero.
 */
#ifndef ONEBIT_OB_KERNELS_H
#define ONEBIT_OB_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* OB_NO_X86 builds the portable path only, as on other architectures (used to test it). */
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(OB_NO_X86)
#define OB_X86 1
#else
#define OB_X86 0
#endif

/* Dispatch levels, each a superset of the one before: avx512 = F/BW/VL/DQ + VPOPCNTDQ,
 * avx512_vnni adds VPDPBUSD (Ice Lake, Zen 4), amx adds AMX-TILE + AMX-INT8 with the OS's
 * permission for tile data (Sapphire Rapids).  Levels above avx512 change only the int8 ops. */
enum {
    OB_ISA_GENERIC = 0,
    OB_ISA_AVX2 = 1,
    OB_ISA_AVX512 = 2,
    OB_ISA_VNNI = 3,
    OB_ISA_AMX = 4,
    OB_ISA_COUNT = 5
};

/* C[m, n] = K - 2 * popcount(A[m] ^ B[n]); padding bits of A and B must be zero. */
typedef struct {
    const uint64_t *a;
    int64_t lda; /* words */
    const uint64_t *b;
    int64_t ldb; /* words */
    int32_t *c;
    int64_t ldc; /* elements */
    int64_t Kw;
    int64_t K;
} ob_xnor_args;

/* Y[m, n] = alpha[n] * sum_k X[m, k] * s(W[n], k) + bias[n], s = +1/-1 from the bits. */
typedef struct {
    const float *x;
    int64_t ldx; /* elements */
    const uint64_t *w;
    int64_t ldw; /* words */
    const float *alpha; /* (N,) or NULL */
    const float *bias;  /* (N,) or NULL */
    float *y;
    int64_t ldy; /* elements */
    int64_t K;
    int64_t Kw;
} ob_bfgemm_args;

/* C[m, n] = (accumulate ? C[m, n] : 0) + sum_k A[m, k] * B[k, n], float32, where
 * A[m, k] = a[m * rsa + k * csa] and B[k, n] = b[k * rsb + n * csb]: each operand is a row-major
 * matrix or the transpose of one (one of its two strides is 1).  C is row-major. */
typedef struct {
    const float *a;
    int64_t rsa, csa;
    const float *b;
    int64_t rsb, csb;
    float *c;
    int64_t ldc;
    int64_t K;
    int accumulate;
} ob_sgemm_args;

/* Binary weights x uint8 activations: Y[m, n] = ((float)(acc - zero[m] * wsum[n]) * scale[m])
 * * alpha[n] + beta[n], acc = sum_k q[m, k] * s(n, k), s = +1/-1.  q rows are ldq bytes apart and
 * readable (any values) up to ceil(K / 64) * 64 bytes; with AMX the rows are padded so that whole
 * 64-row tiles can be read.  wp is the "VNNI panel" layout: for column block b (16 columns) and
 * quad r (inputs 4r..4r+3) the word wp[b * kq + r] holds the sign of column 16 b + j at input
 * 4 r + i in bit 4 j + i; kq = ceil(K / 64) * 16. */
typedef struct {
    const uint8_t *q;
    int64_t ldq; /* bytes */
    const uint64_t *wp;
    int64_t kq;
    const int32_t *wsum;
    const float *scale;
    const int32_t *zero;
    const float *alpha; /* (N,) or NULL */
    const float *beta;  /* (N,) or NULL */
    float *y;
    int64_t ldy;
    int64_t K;
} ob_u8gemm_args;

/* Direct convolution, float32, NHWC: y[b, oy, ox, n] = alpha[n] * sum_{kh, kw, c}
 * x[b, oy * sh + kh, ox * sw + kw, c] * w[(kh * KW + kw) * C + c, n] + beta[n], where x is already
 * zero padded (Hp x Wp) and w has ldw >= N columns (zero past N, ldw a multiple of 16). */
typedef struct {
    const float *x;
    int64_t Hp, Wp, C;
    const float *w;
    int64_t ldw;
    const float *alpha, *beta;
    float *y;
    int64_t Ho, Wo, N;
    int64_t KH, KW, sh, sw;
} ob_dconv_args;

/* Depthwise convolution, float32, NHWC: y[b, oy, ox, c] = alpha[c] * sum over the taps inside
 * the image of x[b, iy, ix, c] * w[kh, kw, c] (in tap order, a multiply then an add) + beta[c]. */
typedef struct {
    const float *x;
    int64_t H, W, C;
    const float *w;
    const float *alpha, *beta;
    float *y;
    int64_t Ho, Wo;
    int64_t KH, KW, sh, sw, ph, pw;
} ob_dwconv_args;

/* Every range kernel returns 0 on success and -1 when a scratch allocation failed. */
typedef struct {
    const char *name;
    int64_t xnor_nb; /* column granularity used when splitting N over threads */
    int64_t bfg_nb;
    void (*pack_bits)(const float *x, int64_t ldx, uint64_t *out, int64_t ldo, int64_t rows,
                      int64_t K);
    int (*xnor)(const ob_xnor_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
    int (*bfgemm)(const ob_bfgemm_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
    /* out bit n of row m = (y[m, n] >= thr[n]) ^ flip bit n; flip is packed like the output. */
    void (*threshold_f32)(const float *y, int64_t ldy, const float *thr, const uint64_t *flip,
                          uint64_t *out, int64_t ldo, int64_t rows, int64_t N);
    void (*threshold_i32)(const int32_t *y, int64_t ldy, const int32_t *thr,
                          const uint64_t *flip, uint64_t *out, int64_t ldo, int64_t rows,
                          int64_t N);
    /* out[m, n] = alpha[n] * (float)y[m, n] + beta[n]  (a multiply, then an add) */
    void (*scale_bias)(const int32_t *y, int64_t ldy, const float *alpha, const float *beta,
                       float *out, int64_t ldo, int64_t rows, int64_t N);
    /* float32 GEMM (ob_sgemm_args) over rows [m0, m1) and columns [n0, n1); NULL when this
     * instruction set has none (the callers then keep their own BLAS). */
    int (*sgemm)(const ob_sgemm_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
    int64_t sgemm_mb, sgemm_nb; /* row and column granularity used when splitting */
    /* XNOR GEMM with B already in panels of 32 rows, k-major (ob_xnor_pack_panels); n0 is a
     * multiple of 32.  a.b is the panel array, a.ldb unused. */
    int (*xnor_panels)(const ob_xnor_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
    /* rows r in [r0, r1) of (B * Ho) output rows, columns [n0, n1) (n0 a multiple of 64) */
    int (*dconv)(const ob_dconv_args *p, int64_t r0, int64_t r1, int64_t n0, int64_t n1);
    int (*dwconv)(const ob_dwconv_args *p, int64_t r0, int64_t r1);
    /* rows [r0, r1) of n floats (ob_rows.c): softmax or log-softmax; layer normalization */
    void (*softmax_rows)(const float *x, float *y, int64_t r0, int64_t r1, int64_t n, int log,
                         int safe);
    void (*layernorm_rows)(const float *x, float *y, int64_t r0, int64_t r1, int64_t n,
                           const float *w, const float *b, float eps);
    void (*gelu)(const float *x, float *y, int64_t i0, int64_t i1); /* y[i0:i1] = GELU(x) */
} ob_isa_table;

/* ob_rows.c, one variant per instruction set */
#define OB_ROWS_DECL(sfx)                                                                       \
    void ob_softmax_rows_##sfx(const float *x, float *y, int64_t r0, int64_t r1, int64_t n,     \
                               int log, int safe);                                              \
    void ob_layernorm_rows_##sfx(const float *x, float *y, int64_t r0, int64_t r1, int64_t n,   \
                                 const float *w, const float *b, float eps);       \
    void ob_gelu_##sfx(const float *x, float *y, int64_t i0, int64_t i1);
OB_ROWS_DECL(generic)
OB_ROWS_DECL(avx2)
OB_ROWS_DECL(avx512)

#define OB_XNOR_PANEL 32 /* rows of B per panel (ob_xnor_pack_panels) */

extern const ob_isa_table ob_generic_table;
#if OB_X86
extern const ob_isa_table ob_avx2_table;
extern const ob_isa_table ob_avx512_table;
#endif

/* Scratch memory aligned to 64 bytes (size rounded up); free with ob_free. */
void *ob_alloc(size_t bytes);
void ob_free(void *p);

static inline int64_t ob_min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t ob_max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t ob_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* ---- driver (ob_driver.c): thread-parallel entry points used by the Python module ---- */
int ob_isa_supported(int isa);
int ob_get_isa(void);
int ob_set_isa(int isa); /* -1 selects the best supported; returns 0 or -1 if unsupported */
const char *ob_isa_name(int isa);
void ob_set_num_threads(int n); /* 0 = ob_default_threads() */
int ob_get_num_threads(void);

/* ob_pool.c: run fn(ctx, id, nt) for id in [0, nt), part 0 on the calling thread; returns
 * when all parts are done.  nt may be reduced (pool busy with another caller: 1). */
typedef void (*ob_task_fn)(void *ctx, int id, int nt);
void ob_parallel(int nt, ob_task_fn fn, void *ctx);
/* OMP_NUM_THREADS when set, else the CPUs this process may run on. */
int ob_default_threads(void);

int ob_pack_bits(const float *x, uint64_t *out, int64_t M, int64_t K, int threads);
int ob_xnor_gemm(const uint64_t *a, const uint64_t *b, int32_t *c, int64_t M, int64_t N,
                 int64_t K, int threads);
int ob_binary_float_gemm(const float *x, const uint64_t *w, const float *alpha,
                         const float *bias, float *y, int64_t M, int64_t N, int64_t K,
                         int threads);
int ob_binary_conv2d(const uint64_t *xbits, const uint64_t *w, int32_t *out, int64_t batch,
                     int64_t H, int64_t W, int64_t Cin, int64_t Cout, int64_t KH, int64_t KW,
                     int64_t sh, int64_t sw, int64_t ph, int64_t pw, int threads);
int ob_threshold_sign_f32(const float *y, const float *thr, const uint8_t *flip, uint64_t *out,
                          int64_t M, int64_t N, int threads);
int ob_threshold_sign_i32(const int32_t *y, const float *thr, const uint8_t *flip,
                          uint64_t *out, int64_t M, int64_t N, int threads);
int ob_scale_bias(const int32_t *y, const float *alpha, const float *beta, float *out,
                  int64_t M, int64_t N, int threads);
/* Returns 0, -1 when scratch memory ran out, -2 when the current ISA has no sgemm. */
int ob_sgemm(const ob_sgemm_args *args, int64_t M, int64_t N, int threads);
int ob_sgemm_available(void);
/* out[i] = x[i] >= 0 ? +1 : -1 (x and out may be the same array) */
int ob_sign_f32(const float *x, float *out, int64_t n, int threads);
int ob_clamp_f32(float *x, int64_t n, float lo, float hi, int threads);
/* y = erf(x) (fn OB_SPECIAL_ERF: libm's erff) or GELU(x) = 0.5 x erfc(-x / sqrt 2)
   (OB_SPECIAL_GELU: ob_rows.c's vectorized erfc); y may be x */
enum { OB_SPECIAL_ERF = 0, OB_SPECIAL_GELU = 1 };
int ob_special_f32(const float *x, float *y, int64_t n, int fn, int threads);
/* rows of n floats (R, n): y = softmax / log-softmax along each row (safe: a row of -inf only
 * gives zeros, else NaN); y may be x */
int ob_softmax_f32(const float *x, float *y, int64_t R, int64_t n, int log, int safe,
                   int threads);
/* rows of n floats: y = (x - mean) / sqrt(var + eps) * w + b, w and b (n,) or NULL; y may be x */
int ob_layernorm_f32(const float *x, float *y, int64_t R, int64_t n, const float *w,
                     const float *b, float eps, int threads);
/* float32 NHWC x (B, H, W, C) -> patches (B * Ho * Wo, KH * KW * C), zero padded. */
int ob_im2col_f32(const float *x, float *out, int64_t B, int64_t H, int64_t W, int64_t C,
                  int KH, int KW, int sh, int sw, int ph, int pw, int threads);

/* ---- newer ops (ob_driver.c, ob_int8.c, ob_conv.c) ---- */
/* B (N, Kw) rows -> panels (ceil(N / 32), Kw, 32) words, k-major, zero rows past N; padding bits
 * of the last word cleared. */
void ob_xnor_pack_panels(const uint64_t *b, uint64_t *out, int64_t N, int64_t K);
int ob_xnor_gemm_panels(const uint64_t *a, const uint64_t *panels, int32_t *c, int64_t M,
                        int64_t N, int64_t K, int threads);
int ob_direct_conv2d(const float *x, const float *w, int64_t ldw, const float *alpha,
                     const float *beta, float *y, int64_t B, int64_t H, int64_t W, int64_t C,
                     int64_t N, int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t ph,
                     int64_t pw, int threads);
int ob_depthwise_conv2d(const float *x, const float *w, const float *alpha, const float *beta,
                        float *y, int64_t B, int64_t H, int64_t W, int64_t C, int64_t KH,
                        int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int threads);
/* Per group of `len` floats (a row, or one sample of a conv input): scale, zero point, uint8. */
void ob_quant_params(const float *x, int64_t len, float *scale, int32_t *zero, float *inv);
/* y = int8-activation binary-weight GEMM of float rows x (M, K): quantized per row. */
int ob_binary_u8_gemm(const float *x, const uint64_t *wp, const int32_t *wsum,
                      const float *alpha, const float *beta, float *y, int64_t M, int64_t N,
                      int64_t K, int threads);
/* The same for a conv: x float NHWC quantized per sample, uint8 im2col, then the GEMM. */
int ob_binary_u8_conv2d(const float *x, const uint64_t *wp, const int32_t *wsum,
                        const float *alpha, const float *beta, float *y, int64_t B, int64_t H,
                        int64_t W, int64_t C, int64_t N, int64_t KH, int64_t KW, int64_t sh,
                        int64_t sw, int64_t ph, int64_t pw, int threads);
/* Quantization of the op above as uint8 + scale + zero (for tests and the reference). */
void ob_set_u8_amx_min_rows(int n);
int ob_quantize_u8(const float *x, uint8_t *q, float *scale, int32_t *zero, int64_t G,
                   int64_t len, int threads);

/* ob_int8.c: the range kernels of the u8 GEMM per level, and the AMX permission. */
int ob_u8gemm_generic(const ob_u8gemm_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
int ob_amx_enable(void); /* 1 when tiles may be used (asks the kernel once) */
#if OB_X86
int ob_u8gemm_vnni(const ob_u8gemm_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
int ob_u8gemm_amx(const ob_u8gemm_args *p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void ob_quant_rows_avx512(const float *x, int64_t ldx, int64_t len, const float *inv,
                          const int32_t *zero, uint8_t *q, int64_t ldq, int64_t rows);
#endif
extern const ob_isa_table *ob_current_table(void);

#endif /* ONEBIT_OB_KERNELS_H */
