/*
 * A small persistent thread pool for the kernels' fork/join.
 *
 * Why not OpenMP: in a 2-vCPU VM one libgomp parallel region (fork + join, workers already
 * spinning) costs about 1 us, and the pool it shares with torch is also what torch's own
 * float layers use.  A packed model calls dozens of kernels of 5-50 us each, so that 1 us
 * (and the worker arriving late) is a large part of the 2-thread time.  This pool hands a
 * job to a worker through one cache line per worker and costs about 0.2 us per call here.
 *
 * Protocol.  Worker w (1 <= w < OB_POOL_MAX) owns a slot.  The caller writes the job into
 * the slots of workers 1..nt-1, bumps each slot's generation (release), runs part 0 itself,
 * then spins until `pending` reaches zero (acquire).  A worker spins on its generation for
 * a bounded time (OB_POOL_SPIN pauses, about 1 ms), then sleeps on its condition variable;
 * the caller signals a sleeping worker under the pool lock, so no wake-up is lost.  A slot
 * is written only while its worker is idle (the previous job's `pending` reached zero), so
 * a worker never sees half a job.
 *
 * One job at a time: a second caller (another Python thread with the GIL released) that
 * finds the pool busy runs its job serially instead of waiting.  After fork() the child has
 * no workers; a pthread_atfork handler resets the pool so the child starts its own.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "ob_kernels.h"

#if OB_X86
#include <immintrin.h>
#define OB_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define OB_RELAX() __asm__ __volatile__("yield")
#else
#define OB_RELAX() ((void)0)
#endif

#define OB_POOL_MAX 256
#define OB_POOL_SPIN (1 << 15) /* pauses before a worker sleeps: ~1 ms at ~30 ns each */

typedef struct {
    _Alignas(64) atomic_uint gen;
    int sleeping; /* guarded by g_lock */
    ob_task_fn fn;
    void *ctx;
    int id, nt;
    pthread_cond_t wake;
} ob_slot;

static ob_slot g_slot[OB_POOL_MAX];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static _Alignas(64) atomic_int g_pending;
static atomic_flag g_busy = ATOMIC_FLAG_INIT;
static atomic_int g_started = 1; /* workers 1..g_started-1 exist; grows under g_lock */

/* fork(): hold the lock across it so the child never inherits it locked; the child then
 * forgets the parent's workers (they do not exist there) and any job in flight. */
static void before_fork(void) { pthread_mutex_lock(&g_lock); }
static void after_fork_parent(void) { pthread_mutex_unlock(&g_lock); }
static void after_fork_child(void) {
    atomic_store(&g_started, 1);
    atomic_flag_clear(&g_busy);
    pthread_mutex_unlock(&g_lock);
}
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) {
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

static void *worker_main(void *arg) {
    ob_slot *s = (ob_slot *)arg;
    unsigned seen = 0; /* a slot's generation is 0 when its worker is created */
    for (;;) {
        unsigned g = seen;
        for (int i = 0; i < OB_POOL_SPIN; i++) {
            g = atomic_load_explicit(&s->gen, memory_order_acquire);
            if (g != seen) break;
            OB_RELAX();
        }
        if (g == seen) {
            pthread_mutex_lock(&g_lock);
            s->sleeping = 1;
            while ((g = atomic_load_explicit(&s->gen, memory_order_acquire)) == seen) {
                pthread_cond_wait(&s->wake, &g_lock);
            }
            s->sleeping = 0;
            pthread_mutex_unlock(&g_lock);
        }
        seen = g;
        s->fn(s->ctx, s->id, s->nt);
        atomic_fetch_sub_explicit(&g_pending, 1, memory_order_release);
    }
    return NULL;
}

/* Make sure workers 1..n-1 exist; returns how many threads (caller included) can run. */
static int ensure_workers(int n) {
    if (n > OB_POOL_MAX) n = OB_POOL_MAX;
    int have = atomic_load_explicit(&g_started, memory_order_acquire);
    if (have >= n) return n;
    pthread_once(&g_atfork_once, register_atfork);
    pthread_mutex_lock(&g_lock);
    have = atomic_load_explicit(&g_started, memory_order_relaxed);
    while (have < n) {
        ob_slot *s = &g_slot[have];
        atomic_store_explicit(&s->gen, 0u, memory_order_relaxed);
        s->sleeping = 0;
        pthread_cond_init(&s->wake, NULL);
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&th, &attr, worker_main, s);
        pthread_attr_destroy(&attr);
        if (rc != 0) break; /* run with the threads we have */
        have++;
    }
    atomic_store_explicit(&g_started, have, memory_order_release);
    pthread_mutex_unlock(&g_lock);
    return have < n ? have : n;
}

void ob_parallel(int nt, ob_task_fn fn, void *ctx) {
    if (nt > 1 && atomic_flag_test_and_set_explicit(&g_busy, memory_order_acquire)) nt = 1;
    else if (nt > 1) {
        nt = ensure_workers(nt);
        if (nt <= 1) atomic_flag_clear_explicit(&g_busy, memory_order_release);
    }
    if (nt <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    atomic_store_explicit(&g_pending, nt - 1, memory_order_relaxed);
    for (int w = 1; w < nt; w++) {
        ob_slot *s = &g_slot[w];
        s->fn = fn;
        s->ctx = ctx;
        s->id = w;
        s->nt = nt;
        atomic_fetch_add_explicit(&s->gen, 1u, memory_order_release);
    }
    /* A worker decides to sleep under the lock after re-reading its generation, so checking
     * `sleeping` under the lock after the bumps above cannot miss one. */
    pthread_mutex_lock(&g_lock);
    for (int w = 1; w < nt; w++) {
        if (g_slot[w].sleeping) pthread_cond_signal(&g_slot[w].wake);
    }
    pthread_mutex_unlock(&g_lock);
    fn(ctx, 0, nt);
    while (atomic_load_explicit(&g_pending, memory_order_acquire) != 0) OB_RELAX();
    atomic_flag_clear_explicit(&g_busy, memory_order_release);
}

static int count_default_threads(void) {
    const char *env = getenv("OMP_NUM_THREADS");
    if (env != NULL && *env) {
        char *end = NULL;
        const long v = strtol(env, &end, 10);
        if (end != env && v > 0) return v < OB_POOL_MAX ? (int)v : OB_POOL_MAX;
    }
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n < OB_POOL_MAX ? n : OB_POOL_MAX;
    }
#endif
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (n < OB_POOL_MAX ? (int)n : OB_POOL_MAX) : 1;
}

/* Counted once: every kernel call with threads=None asks, and sched_getaffinity is a system
 * call.  (A benign race: two first callers both count and store the same value.) */
int ob_default_threads(void) {
    static atomic_int cached = 0;
    int n = atomic_load_explicit(&cached, memory_order_relaxed);
    if (n == 0) {
        n = count_default_threads();
        atomic_store_explicit(&cached, n, memory_order_relaxed);
    }
    return n;
}
