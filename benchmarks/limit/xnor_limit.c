/*
 * The XNOR GEMM "limit": the AVX-512 VPOPCNTDQ micro-kernel alone, for benchmarks only (not
 * library code).  B is already in k-major panels of 32 rows (onebit.kernels.xnor_panels), N is a
 * multiple of 32 and K of 64; no checks, no allocation, no dispatch, no padding, no thread pool:
 * two threads are the caller and one pthread that spins on a flag.  Each call is timed in C.
 *
 *   cc -O3 -march=native -shared -fPIC -pthread xnor_limit.c -o xnor_limit.so
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define NR 32
#define MR 6

static inline __attribute__((always_inline)) void tile(const uint64_t *a, int64_t lda,
                                                       const uint64_t *bt, int64_t Kw, int64_t K,
                                                       int32_t *c, int64_t ldc, const int mr) {
    __m512i acc[MR][4];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < 4; v++) acc[i][v] = _mm512_setzero_si512();
    for (int64_t k = 0; k < Kw; k++) {
        const uint64_t *bk = bt + k * NR;
        const __m512i b0 = _mm512_load_si512(bk), b1 = _mm512_load_si512(bk + 8);
        const __m512i b2 = _mm512_load_si512(bk + 16), b3 = _mm512_load_si512(bk + 24);
        for (int i = 0; i < mr; i++) {
            const __m512i av = _mm512_set1_epi64((long long)a[i * lda + k]);
            acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_xor_si512(av, b0)));
            acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_xor_si512(av, b1)));
            acc[i][2] = _mm512_add_epi64(acc[i][2], _mm512_popcnt_epi64(_mm512_xor_si512(av, b2)));
            acc[i][3] = _mm512_add_epi64(acc[i][3], _mm512_popcnt_epi64(_mm512_xor_si512(av, b3)));
        }
    }
    const __m512i kk = _mm512_set1_epi64(K);
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < 4; v++)
            _mm256_storeu_si256((__m256i *)(c + i * ldc + 8 * v),
                                _mm512_cvtepi64_epi32(_mm512_sub_epi64(kk, _mm512_slli_epi64(acc[i][v], 1))));
}

static void range(const uint64_t *a, const uint64_t *panels, int32_t *c, int64_t M, int64_t N,
                  int64_t K, int64_t n0, int64_t n1) {
    const int64_t Kw = K / 64;
    for (int64_t n = n0; n < n1; n += NR) {
        const uint64_t *bt = panels + (n / NR) * Kw * NR;
        int64_t m = 0;
        for (; m + MR <= M; m += MR) tile(a + m * Kw, Kw, bt, Kw, K, c + m * N + n, N, MR);
        switch (M - m) {
            case 1: tile(a + m * Kw, Kw, bt, Kw, K, c + m * N + n, N, 1); break;
            case 2: tile(a + m * Kw, Kw, bt, Kw, K, c + m * N + n, N, 2); break;
            case 3: tile(a + m * Kw, Kw, bt, Kw, K, c + m * N + n, N, 3); break;
            case 4: tile(a + m * Kw, Kw, bt, Kw, K, c + m * N + n, N, 4); break;
            case 5: tile(a + m * Kw, Kw, bt, Kw, K, c + m * N + n, N, 5); break;
            default: break;
        }
    }
}

typedef struct {
    const uint64_t *a, *p;
    int32_t *c;
    int64_t M, N, K, n0, n1;
    int calls;
    _Atomic int go, done;
} job_t;

static void *worker(void *arg) {
    job_t *j = (job_t *)arg;
    for (int i = 1; i <= j->calls; i++) {
        while (atomic_load_explicit(&j->go, memory_order_acquire) < i) _mm_pause();
        range(j->a, j->p, j->c, j->M, j->N, j->K, j->n0, j->n1);
        atomic_store_explicit(&j->done, i, memory_order_release);
    }
    return 0;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* times[i] = seconds of call i; threads 1 or 2 (N split in halves of whole panels) */
int xnor_limit(const uint64_t *a, const uint64_t *panels, int32_t *c, int64_t M, int64_t N,
               int64_t K, int threads, int calls, double *times) {
    if (threads < 2) {
        for (int i = 0; i < calls; i++) {
            const double t0 = now();
            range(a, panels, c, M, N, K, 0, N);
            times[i] = now() - t0;
        }
        return 0;
    }
    const int64_t half = (N / NR + 1) / 2 * NR;
    job_t j = {a, panels, c, M, N, K, half, N, calls, 0, 0};
    pthread_t th;
    if (pthread_create(&th, 0, worker, &j) != 0) return -1;
    for (int i = 1; i <= calls; i++) {
        const double t0 = now();
        atomic_store_explicit(&j.go, i, memory_order_release);
        range(a, panels, c, M, N, K, 0, half);
        while (atomic_load_explicit(&j.done, memory_order_acquire) < i) _mm_pause();
        times[i - 1] = now() - t0;
    }
    pthread_join(th, 0);
    return 0;
}
