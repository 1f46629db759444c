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

enum { OB_ISA_GENERIC = 0, OB_ISA_AVX2 = 1, OB_ISA_AVX512 = 2, OB_ISA_COUNT = 3 };

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
} ob_isa_table;

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
/* float32 NHWC x (B, H, W, C) -> patches (B * Ho * Wo, KH * KW * C), zero padded. */
int ob_im2col_f32(const float *x, float *out, int64_t B, int64_t H, int64_t W, int64_t C,
                  int KH, int KW, int sh, int sw, int ph, int pw, int threads);

#endif /* ONEBIT_OB_KERNELS_H */
