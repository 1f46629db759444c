/*
 * CPython bindings for the onebit kernels (module onebit.kernels._native).
 *
 * Low-level, unchecked-dtype interface: every array argument is any C-contiguous object
 * exposing the buffer protocol (numpy arrays), outputs are preallocated by the caller.
 * Only byte sizes are validated here; onebit/kernels/__init__.py validates dtypes and
 * shapes and is the public API.  The GIL is released while a kernel runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <time.h>

#include "ob_kernels.h"

static int check_size(const Py_buffer *b, int64_t count, int64_t itemsize, const char *name) {
    int64_t bytes = 0;
    if (count < 0 || __builtin_mul_overflow(count, itemsize, &bytes)) {
        PyErr_Format(PyExc_ValueError, "%s: invalid size", name);
        return -1;
    }
    if ((int64_t)b->len < bytes) {
        PyErr_Format(PyExc_ValueError, "%s: buffer has %zd bytes, %lld needed", name, b->len,
                     (long long)bytes);
        return -1;
    }
    return 0;
}

static int check_dims(int64_t a, int64_t b, int64_t *prod, const char *what) {
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, prod)) {
        PyErr_Format(PyExc_ValueError, "%s: negative or overflowing dimensions", what);
        return -1;
    }
    return 0;
}

static PyObject *finish(int err) {
    if (err) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* pack_bits(x: f32 (M, K), out: u64 (M, Kw), M, K, threads) */
static PyObject *py_pack_bits(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, out;
    long long M, K;
    int threads;
    if (!PyArg_ParseTuple(args, "y*w*LLi", &x, &out, &M, &K, &threads)) return NULL;
    int64_t mk = 0, mkw = 0;
    int err = 0;
    if (check_dims(M, K, &mk, "pack_bits") || check_dims(M, (K + 63) / 64, &mkw, "pack_bits") ||
        check_size(&x, mk, 4, "x") || check_size(&out, mkw, 8, "out")) {
        PyBuffer_Release(&x);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS err = ob_pack_bits((const float *)x.buf, (uint64_t *)out.buf, M, K,
                                              threads);
    Py_END_ALLOW_THREADS PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return finish(err);
}

typedef struct {
    Py_buffer a, b, out;
    long long M, N, K;
    int threads;
} xnor_call;

static void xnor_release(xnor_call *c) {
    PyBuffer_Release(&c->a);
    PyBuffer_Release(&c->b);
    PyBuffer_Release(&c->out);
}

/* Checks the sizes of an xnor_gemm call whose buffers are acquired; releases them on error. */
static int xnor_check(xnor_call *c) {
    int64_t akw = 0, bkw = 0, mn = 0;
    const long long K = c->K;
    if (K < 0 || K > INT32_MAX || check_dims(c->M, (K + 63) / 64, &akw, "xnor_gemm") ||
        check_dims(c->N, (K + 63) / 64, &bkw, "xnor_gemm") ||
        check_dims(c->M, c->N, &mn, "xnor_gemm") || check_size(&c->a, akw, 8, "a") ||
        check_size(&c->b, bkw, 8, "b") || check_size(&c->out, mn, 4, "out")) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "xnor_gemm: K must be in [0, 2**31)");
        }
        xnor_release(c);
        return -1;
    }
    return 0;
}

static int xnor_run(const xnor_call *c) {
    return ob_xnor_gemm((const uint64_t *)c->a.buf, (const uint64_t *)c->b.buf,
                        (int32_t *)c->out.buf, c->M, c->N, c->K, c->threads);
}

/* xnor_gemm(a: u64 (M, Kw), b: u64 (N, Kw), out: i32 (M, N), M, N, K, threads) */
static PyObject *py_xnor_gemm(PyObject *self, PyObject *args) {
    (void)self;
    xnor_call c;
    if (!PyArg_ParseTuple(args, "y*y*w*LLLi", &c.a, &c.b, &c.out, &c.M, &c.N, &c.K,
                          &c.threads) ||
        xnor_check(&c)) {
        return NULL;
    }
    int err = 0;
    Py_BEGIN_ALLOW_THREADS err = xnor_run(&c);
    Py_END_ALLOW_THREADS xnor_release(&c);
    return finish(err);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* time_xnor_gemm(a, b, out, M, N, K, threads, calls) -> list of seconds, one per call.
 * For benchmarks: the kernel alone, timed in C, without the interpreter's ~1 us per call. */
static PyObject *py_time_xnor_gemm(PyObject *self, PyObject *args) {
    (void)self;
    xnor_call c;
    int calls;
    if (!PyArg_ParseTuple(args, "y*y*w*LLLii", &c.a, &c.b, &c.out, &c.M, &c.N, &c.K,
                          &c.threads, &calls) ||
        xnor_check(&c)) {
        return NULL;
    }
    if (calls < 1) calls = 1;
    double *t = (double *)PyMem_Malloc((size_t)calls * sizeof(double));
    if (t == NULL) {
        xnor_release(&c);
        return PyErr_NoMemory();
    }
    int err = 0;
    Py_BEGIN_ALLOW_THREADS for (int i = 0; i < calls && !err; i++) {
        const double t0 = now_s();
        err = xnor_run(&c);
        t[i] = now_s() - t0;
    }
    Py_END_ALLOW_THREADS xnor_release(&c);
    PyObject *out = err ? PyErr_NoMemory() : PyList_New(calls);
    for (int i = 0; out != NULL && !err && i < calls; i++) {
        PyList_SET_ITEM(out, i, PyFloat_FromDouble(t[i]));
    }
    PyMem_Free(t);
    return out;
}

/* Optional float buffer: None -> not used. */
static int opt_buffer(PyObject *obj, Py_buffer *buf, int *has, int64_t count, const char *name) {
    *has = 0;
    if (obj == Py_None) return 0;
    if (PyObject_GetBuffer(obj, buf, PyBUF_SIMPLE) != 0) return -1;
    *has = 1;
    return check_size(buf, count, 4, name);
}

/* binary_float_gemm(x: f32 (M, K), w: u64 (N, Kw), alpha|None, bias|None, out: f32 (M, N),
 *                   M, N, K, threads) */
static PyObject *py_binary_float_gemm(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, w, out, al, bi;
    PyObject *alpha_obj, *bias_obj;
    long long M, N, K;
    int threads, has_a = 0, has_b = 0, err = 0;
    if (!PyArg_ParseTuple(args, "y*y*OOw*LLLi", &x, &w, &alpha_obj, &bias_obj, &out, &M, &N, &K,
                          &threads))
        return NULL;
    int64_t mk = 0, nkw = 0, mn = 0;
    int bad = K < 0 || check_dims(M, K, &mk, "binary_float_gemm") ||
              check_dims(N, (K + 63) / 64, &nkw, "binary_float_gemm") ||
              check_dims(M, N, &mn, "binary_float_gemm") || check_size(&x, mk, 4, "x") ||
              check_size(&w, nkw, 8, "w") || check_size(&out, mn, 4, "out");
    if (!bad) bad = opt_buffer(alpha_obj, &al, &has_a, N, "alpha") != 0;
    if (!bad) bad = opt_buffer(bias_obj, &bi, &has_b, N, "bias") != 0;
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_binary_float_gemm(
            (const float *)x.buf, (const uint64_t *)w.buf, has_a ? (const float *)al.buf : NULL,
            has_b ? (const float *)bi.buf : NULL, (float *)out.buf, M, N, K, threads);
        Py_END_ALLOW_THREADS
    } else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_ValueError, "binary_float_gemm: K must be >= 0");
    }
    if (has_a) PyBuffer_Release(&al);
    if (has_b) PyBuffer_Release(&bi);
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&out);
    if (bad) return NULL;
    return finish(err);
}

/* binary_conv2d(x: u64 (B, H, W, Cw), w: u64 (Cout, KH, KW, Cw), out: i32 (B, Ho, Wo, Cout),
 *               B, H, W, Cin, Cout, KH, KW, sh, sw, ph, pw, threads) */
static PyObject *py_binary_conv2d(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, w, out;
    long long B, H, W, Cin, Cout, KH, KW, sh, sw, ph, pw;
    int threads, err = 0;
    if (!PyArg_ParseTuple(args, "y*y*w*LLLLLLLLLLLi", &x, &w, &out, &B, &H, &W, &Cin, &Cout, &KH,
                          &KW, &sh, &sw, &ph, &pw, &threads))
        return NULL;
    int bad = 0;
    if (B < 0 || H < 0 || W < 0 || Cin < 1 || Cout < 0 || KH < 1 || KW < 1 || sh < 1 ||
        sw < 1 || ph < 0 || pw < 0 || H + 2 * ph < KH || W + 2 * pw < KW ||
        B > INT32_MAX || H > INT32_MAX || W > INT32_MAX || Cin > INT32_MAX || Cout > INT32_MAX ||
        KH > 4096 || KW > 4096 || ph > INT32_MAX || pw > INT32_MAX ||
        KH * KW * Cin > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "binary_conv2d: invalid geometry");
        bad = 1;
    }
    if (!bad) {
        const int64_t Cw = (Cin + 63) / 64;
        const int64_t Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
        int64_t t1 = 0, t2 = 0, nx = 0, nw = 0, no = 0;
        bad = check_dims(B * H, W, &t1, "binary_conv2d") ||
              check_dims(t1, Cw, &nx, "binary_conv2d") ||
              check_dims(Cout * KH, KW * Cw, &nw, "binary_conv2d") ||
              check_dims(B * Ho, Wo, &t2, "binary_conv2d") ||
              check_dims(t2, Cout, &no, "binary_conv2d") || check_size(&x, nx, 8, "x") ||
              check_size(&w, nw, 8, "w") || check_size(&out, no, 4, "out");
    }
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err =
            ob_binary_conv2d((const uint64_t *)x.buf, (const uint64_t *)w.buf, (int32_t *)out.buf,
                             B, H, W, Cin, Cout, KH, KW, sh, sw, ph, pw, threads);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&out);
    if (bad) return NULL;
    return finish(err);
}

/* im2col_f32(x: f32 (B, H, W, C), out: f32 (B*Ho*Wo, KH*KW*C), B, H, W, C, KH, KW, sh, sw,
 *            ph, pw, threads) */
static PyObject *py_im2col_f32(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, out;
    long long B, H, W, C, KH, KW, sh, sw, ph, pw;
    int threads, err = 0;
    if (!PyArg_ParseTuple(args, "y*w*LLLLLLLLLLi", &x, &out, &B, &H, &W, &C, &KH, &KW, &sh,
                          &sw, &ph, &pw, &threads))
        return NULL;
    int bad = 0;
    if (B < 0 || H < 0 || W < 0 || C < 1 || KH < 1 || KW < 1 || sh < 1 || sw < 1 || ph < 0 ||
        pw < 0 || H + 2 * ph < KH || W + 2 * pw < KW || KH > 4096 || KW > 4096 ||
        sh > INT32_MAX || sw > INT32_MAX || ph > INT32_MAX || pw > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "im2col_f32: invalid geometry");
        bad = 1;
    }
    if (!bad) {
        const int64_t Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
        int64_t t1 = 0, t2 = 0, nx = 0, t3 = 0, no = 0;
        bad = check_dims(B * H, W, &t1, "im2col_f32") || check_dims(t1, C, &nx, "im2col_f32") ||
              check_dims(B * Ho, Wo, &t2, "im2col_f32") ||
              check_dims(KH * KW, C, &t3, "im2col_f32") || check_dims(t2, t3, &no, "im2col_f32") ||
              check_size(&x, nx, 4, "x") || check_size(&out, no, 4, "out");
    }
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err =
            ob_im2col_f32((const float *)x.buf, (float *)out.buf, B, H, W, C, (int)KH, (int)KW,
                          (int)sh, (int)sw, (int)ph, (int)pw, threads);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    if (bad) return NULL;
    return finish(err);
}

/* threshold_sign(y: i32|f32 (M, N), thr: f32 (N,), flip: u8 (N,), out: u64 (M, Nw),
 *                M, N, is_int, threads) */
static PyObject *py_threshold_sign(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer y, thr, flip, out;
    long long M, N;
    int is_int, threads, err = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*w*LLpi", &y, &thr, &flip, &out, &M, &N, &is_int,
                          &threads))
        return NULL;
    int64_t mn = 0, mnw = 0;
    const int bad = check_dims(M, N, &mn, "threshold_sign") ||
                    check_dims(M, (N + 63) / 64, &mnw, "threshold_sign") ||
                    check_size(&y, mn, 4, "y") || check_size(&thr, N, 4, "thresh") ||
                    check_size(&flip, N, 1, "flip") || check_size(&out, mnw, 8, "out");
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS if (is_int) {
            err = ob_threshold_sign_i32((const int32_t *)y.buf, (const float *)thr.buf,
                                        (const uint8_t *)flip.buf, (uint64_t *)out.buf, M, N,
                                        threads);
        }
        else {
            err = ob_threshold_sign_f32((const float *)y.buf, (const float *)thr.buf,
                                        (const uint8_t *)flip.buf, (uint64_t *)out.buf, M, N,
                                        threads);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&y);
    PyBuffer_Release(&thr);
    PyBuffer_Release(&flip);
    PyBuffer_Release(&out);
    if (bad) return NULL;
    return finish(err);
}

/* scale_bias(y: i32 (M, N), alpha: f32 (N,), beta: f32 (N,), out: f32 (M, N), M, N, threads) */
static PyObject *py_scale_bias(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer y, al, be, out;
    long long M, N;
    int threads, err = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*w*LLi", &y, &al, &be, &out, &M, &N, &threads)) return NULL;
    int64_t mn = 0;
    const int bad = check_dims(M, N, &mn, "scale_bias") || check_size(&y, mn, 4, "y") ||
                    check_size(&al, N, 4, "alpha") || check_size(&be, N, 4, "beta") ||
                    check_size(&out, mn, 4, "out");
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err =
            ob_scale_bias((const int32_t *)y.buf, (const float *)al.buf, (const float *)be.buf,
                          (float *)out.buf, M, N, threads);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&y);
    PyBuffer_Release(&al);
    PyBuffer_Release(&be);
    PyBuffer_Release(&out);
    if (bad) return NULL;
    return finish(err);
}

/* special(x: f32 (n,), y: f32 (n,) writable, n, fn, threads): y = erf(x) or GELU(x) */
static PyObject *py_special(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, y;
    long long n;
    int fn, threads, err = 0;
    if (!PyArg_ParseTuple(args, "y*w*Lii", &x, &y, &n, &fn, &threads)) return NULL;
    const int bad = n < 0 || (fn != OB_SPECIAL_ERF && fn != OB_SPECIAL_GELU) ||
                    check_size(&x, n, 4, "x") || check_size(&y, n, 4, "y");
    if (n < 0 || (fn != OB_SPECIAL_ERF && fn != OB_SPECIAL_GELU))
        PyErr_SetString(PyExc_ValueError, "special: negative length or unknown function");
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_special_f32((const float *)x.buf, (float *)y.buf, n, fn,
                                                    threads);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    if (bad) return NULL;
    return finish(err);
}

/* softmax(x: f32 (R, n), y: f32 (R, n) writable, R, n, log, safe, threads) */
static PyObject *py_softmax(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, y;
    long long R, n;
    int log, safe, threads, err = 0;
    if (!PyArg_ParseTuple(args, "y*w*LLiii", &x, &y, &R, &n, &log, &safe, &threads)) return NULL;
    int64_t rn = 0;
    const int bad = check_dims(R, n, &rn, "softmax") || check_size(&x, rn, 4, "x") ||
                    check_size(&y, rn, 4, "y");
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_softmax_f32((const float *)x.buf, (float *)y.buf, R, n,
                                                    log, safe, threads);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    if (bad) return NULL;
    return finish(err);
}

/* layer_norm(x: f32 (R, n), y: f32 (R, n) writable, R, n, w: f32 (n,) or None, b: f32 (n,) or
 * None, eps, threads) */
static PyObject *py_layer_norm(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, y, w = {0}, b = {0};
    PyObject *wo, *bo;
    long long R, n;
    float eps;
    int threads, err = 0;
    if (!PyArg_ParseTuple(args, "y*w*LLOOfi", &x, &y, &R, &n, &wo, &bo, &eps, &threads))
        return NULL;
    const int got_w = wo != Py_None && PyObject_GetBuffer(wo, &w, PyBUF_C_CONTIGUOUS) == 0;
    const int got_b = bo != Py_None && PyObject_GetBuffer(bo, &b, PyBUF_C_CONTIGUOUS) == 0;
    int64_t rn = 0;
    const int bad = (wo != Py_None && !got_w) || (bo != Py_None && !got_b) ||
                    check_dims(R, n, &rn, "layer_norm") || check_size(&x, rn, 4, "x") ||
                    check_size(&y, rn, 4, "y") || (got_w && check_size(&w, n, 4, "w")) ||
                    (got_b && check_size(&b, n, 4, "b"));
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_layernorm_f32(
            (const float *)x.buf, (float *)y.buf, R, n, got_w ? (const float *)w.buf : NULL,
            got_b ? (const float *)b.buf : NULL, eps, threads);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    if (got_w) PyBuffer_Release(&w);
    if (got_b) PyBuffer_Release(&b);
    if (bad) return NULL;
    return finish(err);
}

/* clamp_(x: f32 (n,) writable, n, lo, hi, threads): x = min(max(x, lo), hi) in place */
static PyObject *py_clamp(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x;
    long long n;
    float lo, hi;
    int threads, err = 0;
    if (!PyArg_ParseTuple(args, "w*Lffi", &x, &n, &lo, &hi, &threads)) return NULL;
    const int bad = n < 0 || check_size(&x, n, 4, "x");
    if (n < 0) PyErr_SetString(PyExc_ValueError, "clamp: negative length");
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_clamp_f32((float *)x.buf, n, lo, hi, threads);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    if (bad) return NULL;
    return finish(err);
}

/* Elements spanned by a (rows, cols) operand with strides (rs, cs): the buffer must hold them. */
static int strided_extent(long long rows, long long cols, long long rs, long long cs,
                          int64_t *extent) {
    *extent = 0;
    if (rows < 0 || cols < 0 || rs < 0 || cs < 0) return -1;
    if (rows == 0 || cols == 0) return 0;
    int64_t a = 0, b = 0;
    if (__builtin_mul_overflow(rows - 1, rs, &a) || __builtin_mul_overflow(cols - 1, cs, &b) ||
        __builtin_add_overflow(a, b, extent) || __builtin_add_overflow(*extent, 1, extent))
        return -1;
    return 0;
}

/* sgemm(a, b, c, M, N, K, rsa, csa, rsb, csb, ldc, accumulate, threads): float32
 * C[m, n] (+)= sum_k a[m * rsa + k * csa] * b[k * rsb + n * csb], C row-major with ldc. */
static PyObject *py_sgemm(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer a, b, c;
    long long M, N, K, rsa, csa, rsb, csb, ldc;
    int accumulate, threads, err = 0;
    if (!PyArg_ParseTuple(args, "y*y*w*LLLLLLLLpi", &a, &b, &c, &M, &N, &K, &rsa, &csa, &rsb,
                          &csb, &ldc, &accumulate, &threads))
        return NULL;
    int64_t ea = 0, eb = 0, ec = 0;
    int bad = strided_extent(M, K, rsa, csa, &ea) || strided_extent(K, N, rsb, csb, &eb) ||
              strided_extent(M, N, ldc, 1, &ec) || ldc < N;
    if (bad) PyErr_SetString(PyExc_ValueError, "sgemm: invalid sizes or strides");
    bad = bad || check_size(&a, ea, 4, "a") || check_size(&b, eb, 4, "b") ||
          check_size(&c, ec, 4, "c");
    if (!bad) {
        const ob_sgemm_args p = {(const float *)a.buf, rsa, csa, (const float *)b.buf,
                                 rsb, csb, (float *)c.buf, ldc, K, accumulate};
        Py_BEGIN_ALLOW_THREADS err = ob_sgemm(&p, M, N, threads);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    PyBuffer_Release(&c);
    if (bad) return NULL;
    if (err == -2) {
        PyErr_SetString(PyExc_RuntimeError, "sgemm: no kernel for the selected instruction set");
        return NULL;
    }
    return finish(err);
}

static PyObject *py_sgemm_available(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyBool_FromLong(ob_sgemm_available());
}

/* sign(x, out, n, threads): out = x >= 0 ? +1 : -1 */
static PyObject *py_sign(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, out;
    long long n;
    int threads, err = 0;
    if (!PyArg_ParseTuple(args, "y*w*Li", &x, &out, &n, &threads)) return NULL;
    if (n < 0) PyErr_SetString(PyExc_ValueError, "sign: negative length");
    const int bad = n < 0 || check_size(&x, n, 4, "x") || check_size(&out, n, 4, "out");
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_sign_f32((const float *)x.buf, (float *)out.buf, n,
                                                 threads);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    if (bad) return NULL;
    return finish(err);
}

static PyObject *py_available_isas(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    for (int isa = OB_ISA_COUNT - 1; isa >= 0; isa--) {
        if (!ob_isa_supported(isa)) continue;
        PyObject *s = PyUnicode_FromString(ob_isa_name(isa));
        if (s == NULL || PyList_Append(list, s) != 0) {
            Py_XDECREF(s);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(s);
    }
    return list;
}

static PyObject *py_get_isa(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(ob_isa_name(ob_get_isa()));
}

/* set_isa(name or None): None selects the best ISA this CPU supports. */
static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    if (arg == Py_None) {
        ob_set_isa(-1);
        Py_RETURN_NONE;
    }
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL) return NULL;
    for (int isa = 0; isa < OB_ISA_COUNT; isa++) {
        if (strcmp(name, ob_isa_name(isa)) == 0) {
            if (ob_set_isa(isa) != 0) {
                PyErr_Format(PyExc_ValueError, "ISA '%s' is not supported by this CPU", name);
                return NULL;
            }
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown ISA '%s'", name);
    return NULL;
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    const long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > 4096) {
        PyErr_SetString(PyExc_ValueError, "thread count must be in [0, 4096]");
        return NULL;
    }
    ob_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(ob_get_num_threads());
}

/* ---- newer ops: sizes are checked here, shapes and dtypes by onebit/kernels/__init__.py ---- */

static int get_opt(PyObject *obj, Py_buffer *buf, int *has, int64_t count, const char *name) {
    if (opt_buffer(obj, buf, has, count, name) != 0) {
        if (*has) PyBuffer_Release(buf);
        *has = 0;
        return -1;
    }
    return 0;
}

/* xnor_pack_panels(b: u64 (N, Kw), out: u64 (ceil(N/32), Kw, 32), N, K) */
static PyObject *py_xnor_pack_panels(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer b, out;
    long long N, K;
    if (!PyArg_ParseTuple(args, "y*w*LL", &b, &out, &N, &K)) return NULL;
    const int64_t Kw = (K + 63) / 64, P = (N + 31) / 32;
    int64_t nb = 0, no = 0;
    const int bad = K < 0 || K > INT32_MAX || check_dims(N, Kw, &nb, "xnor_pack_panels") ||
                    check_dims(P * 32, Kw, &no, "xnor_pack_panels") ||
                    check_size(&b, nb, 8, "b") || check_size(&out, no, 8, "out");
    if (!bad) ob_xnor_pack_panels((const uint64_t *)b.buf, (uint64_t *)out.buf, N, K);
    else if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "xnor_pack_panels: bad K");
    PyBuffer_Release(&b);
    PyBuffer_Release(&out);
    if (bad) return NULL;
    Py_RETURN_NONE;
}

static int panels_check(xnor_call *c) {
    int64_t akw = 0, pw = 0, mn = 0;
    const long long K = c->K, Kw = (K + 63) / 64;
    if (K < 0 || K > INT32_MAX || check_dims(c->M, Kw, &akw, "xnor_gemm_panels") ||
        check_dims((c->N + 31) / 32 * 32, Kw, &pw, "xnor_gemm_panels") ||
        check_dims(c->M, c->N, &mn, "xnor_gemm_panels") || check_size(&c->a, akw, 8, "a") ||
        check_size(&c->b, pw, 8, "panels") || check_size(&c->out, mn, 4, "out")) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "xnor_gemm_panels: bad K");
        xnor_release(c);
        return -1;
    }
    return 0;
}

static int panels_run(const xnor_call *c) {
    return ob_xnor_gemm_panels((const uint64_t *)c->a.buf, (const uint64_t *)c->b.buf,
                               (int32_t *)c->out.buf, c->M, c->N, c->K, c->threads);
}

/* xnor_gemm_panels(a: u64 (M, Kw), panels, out: i32 (M, N), M, N, K, threads) */
static PyObject *py_xnor_gemm_panels(PyObject *self, PyObject *args) {
    (void)self;
    xnor_call c;
    if (!PyArg_ParseTuple(args, "y*y*w*LLLi", &c.a, &c.b, &c.out, &c.M, &c.N, &c.K,
                          &c.threads) ||
        panels_check(&c)) {
        return NULL;
    }
    int err = 0;
    Py_BEGIN_ALLOW_THREADS err = panels_run(&c);
    Py_END_ALLOW_THREADS xnor_release(&c);
    return finish(err);
}

/* time_xnor_gemm_panels(a, panels, out, M, N, K, threads, calls) -> seconds of each call */
static PyObject *py_time_xnor_gemm_panels(PyObject *self, PyObject *args) {
    (void)self;
    xnor_call c;
    int calls;
    if (!PyArg_ParseTuple(args, "y*y*w*LLLii", &c.a, &c.b, &c.out, &c.M, &c.N, &c.K,
                          &c.threads, &calls) ||
        panels_check(&c)) {
        return NULL;
    }
    if (calls < 1) calls = 1;
    double *t = (double *)PyMem_Malloc((size_t)calls * sizeof(double));
    if (t == NULL) {
        xnor_release(&c);
        return PyErr_NoMemory();
    }
    int err = 0;
    Py_BEGIN_ALLOW_THREADS for (int i = 0; i < calls && !err; i++) {
        const double t0 = now_s();
        err = panels_run(&c);
        t[i] = now_s() - t0;
    }
    Py_END_ALLOW_THREADS xnor_release(&c);
    PyObject *out = err ? PyErr_NoMemory() : PyList_New(calls);
    for (int i = 0; out != NULL && !err && i < calls; i++) {
        PyList_SET_ITEM(out, i, PyFloat_FromDouble(t[i]));
    }
    PyMem_Free(t);
    return out;
}

static int conv_geometry(long long B, long long H, long long W, long long C, long long KH,
                         long long KW, long long sh, long long sw, long long ph, long long pw,
                         const char *what) {
    if (B < 0 || H < 0 || W < 0 || C < 1 || KH < 1 || KW < 1 || sh < 1 || sw < 1 || ph < 0 ||
        pw < 0 || H + 2 * ph < KH || W + 2 * pw < KW || KH > 4096 || KW > 4096 ||
        B > INT32_MAX || H > INT32_MAX || W > INT32_MAX || C > INT32_MAX || ph > INT32_MAX ||
        pw > INT32_MAX || sh > INT32_MAX || sw > INT32_MAX || KH * KW * C > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: invalid geometry", what);
        return -1;
    }
    return 0;
}

/* direct_conv2d(x f32 (B,H,W,C), w f32 (KH*KW*C, ldw), ldw, alpha|None, beta|None,
 *               y f32 (B,Ho,Wo,N), B, H, W, C, N, KH, KW, sh, sw, ph, pw, threads) */
static PyObject *py_direct_conv2d(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, w, y, al, be;
    PyObject *ao, *bo;
    long long ldw, B, H, W, C, N, KH, KW, sh, sw, ph, pw;
    int threads, ha = 0, hb = 0, err = 0;
    if (!PyArg_ParseTuple(args, "y*y*LOOw*LLLLLLLLLLLi", &x, &w, &ldw, &ao, &bo, &y, &B, &H, &W,
                          &C, &N, &KH, &KW, &sh, &sw, &ph, &pw, &threads))
        return NULL;
    int bad = conv_geometry(B, H, W, C, KH, KW, sh, sw, ph, pw, "direct_conv2d") ||
              N < 0 || ldw < N || ldw % 16 != 0;
    if (bad && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "direct_conv2d: bad N/ldw");
    if (!bad) {
        const int64_t Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
        bad = check_size(&x, B * H * W * C, 4, "x") || check_size(&w, KH * KW * C * ldw, 4, "w") ||
              check_size(&y, B * Ho * Wo * N, 4, "y") ||
              get_opt(ao, &al, &ha, N, "alpha") || get_opt(bo, &be, &hb, N, "beta");
    }
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_direct_conv2d(
            (const float *)x.buf, (const float *)w.buf, ldw, ha ? (const float *)al.buf : NULL,
            hb ? (const float *)be.buf : NULL, (float *)y.buf, B, H, W, C, N, KH, KW, sh, sw, ph,
            pw, threads);
        Py_END_ALLOW_THREADS
    }
    if (ha) PyBuffer_Release(&al);
    if (hb) PyBuffer_Release(&be);
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&y);
    if (bad) return NULL;
    return finish(err);
}

/* depthwise_conv2d(x f32 (B,H,W,C), w f32 (KH,KW,C), alpha|None, beta|None, y f32 (B,Ho,Wo,C),
 *                  B, H, W, C, KH, KW, sh, sw, ph, pw, threads) */
static PyObject *py_depthwise_conv2d(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, w, y, al, be;
    PyObject *ao, *bo;
    long long B, H, W, C, KH, KW, sh, sw, ph, pw;
    int threads, ha = 0, hb = 0, err = 0;
    if (!PyArg_ParseTuple(args, "y*y*OOw*LLLLLLLLLLi", &x, &w, &ao, &bo, &y, &B, &H, &W, &C, &KH,
                          &KW, &sh, &sw, &ph, &pw, &threads))
        return NULL;
    int bad = conv_geometry(B, H, W, C, KH, KW, sh, sw, ph, pw, "depthwise_conv2d");
    if (!bad) {
        const int64_t Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
        bad = check_size(&x, B * H * W * C, 4, "x") || check_size(&w, KH * KW * C, 4, "w") ||
              check_size(&y, B * Ho * Wo * C, 4, "y") ||
              get_opt(ao, &al, &ha, C, "alpha") || get_opt(bo, &be, &hb, C, "beta");
    }
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_depthwise_conv2d(
            (const float *)x.buf, (const float *)w.buf, ha ? (const float *)al.buf : NULL,
            hb ? (const float *)be.buf : NULL, (float *)y.buf, B, H, W, C, KH, KW, sh, sw, ph, pw,
            threads);
        Py_END_ALLOW_THREADS
    }
    if (ha) PyBuffer_Release(&al);
    if (hb) PyBuffer_Release(&be);
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&y);
    if (bad) return NULL;
    return finish(err);
}

/* quantize_u8(x f32 (G, L), q u8 (G, L), scale f32 (G,), zero i32 (G,), G, L, threads) */
static PyObject *py_quantize_u8(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, q, sc, zp;
    long long G, L;
    int threads, err = 0;
    if (!PyArg_ParseTuple(args, "y*w*w*w*LLi", &x, &q, &sc, &zp, &G, &L, &threads)) return NULL;
    int64_t gl = 0;
    const int bad = check_dims(G, L, &gl, "quantize_u8") || check_size(&x, gl, 4, "x") ||
                    check_size(&q, gl, 1, "q") || check_size(&sc, G, 4, "scale") ||
                    check_size(&zp, G, 4, "zero");
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_quantize_u8((const float *)x.buf, (uint8_t *)q.buf,
                                                    (float *)sc.buf, (int32_t *)zp.buf, G, L,
                                                    threads);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&q);
    PyBuffer_Release(&sc);
    PyBuffer_Release(&zp);
    if (bad) return NULL;
    return finish(err);
}

/* binary_u8_gemm(x f32 (M, K), wp u64 (ceil(N/16), ceil(K/64)*16), wsum i32 (N,), alpha|None,
 *                beta|None, y f32 (M, N), M, N, K, threads) */
static PyObject *py_binary_u8_gemm(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, wp, ws, y, al, be;
    PyObject *ao, *bo;
    long long M, N, K;
    int threads, ha = 0, hb = 0, err = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*OOw*LLLi", &x, &wp, &ws, &ao, &bo, &y, &M, &N, &K,
                          &threads))
        return NULL;
    int64_t mk = 0, mn = 0, np = 0;
    int bad = K < 0 || K > (1 << 24) || check_dims(M, K, &mk, "binary_u8_gemm") ||
              check_dims(M, N, &mn, "binary_u8_gemm") ||
              check_dims((N + 15) / 16, (K + 63) / 64 * 16, &np, "binary_u8_gemm");
    if (bad && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "binary_u8_gemm: bad K");
    bad = bad || check_size(&x, mk, 4, "x") || check_size(&wp, np, 8, "wp") ||
          check_size(&ws, N, 4, "wsum") || check_size(&y, mn, 4, "y") ||
          get_opt(ao, &al, &ha, N, "alpha") || get_opt(bo, &be, &hb, N, "beta");
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_binary_u8_gemm(
            (const float *)x.buf, (const uint64_t *)wp.buf, (const int32_t *)ws.buf,
            ha ? (const float *)al.buf : NULL, hb ? (const float *)be.buf : NULL, (float *)y.buf,
            M, N, K, threads);
        Py_END_ALLOW_THREADS
    }
    if (ha) PyBuffer_Release(&al);
    if (hb) PyBuffer_Release(&be);
    PyBuffer_Release(&x);
    PyBuffer_Release(&wp);
    PyBuffer_Release(&ws);
    PyBuffer_Release(&y);
    if (bad) return NULL;
    return finish(err);
}

/* binary_u8_conv2d(x f32 (B,H,W,C), wp, wsum, alpha|None, beta|None, y f32 (B,Ho,Wo,N),
 *                  B, H, W, C, N, KH, KW, sh, sw, ph, pw, threads) */
static PyObject *py_binary_u8_conv2d(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer x, wp, ws, y, al, be;
    PyObject *ao, *bo;
    long long B, H, W, C, N, KH, KW, sh, sw, ph, pw;
    int threads, ha = 0, hb = 0, err = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*OOw*LLLLLLLLLLLi", &x, &wp, &ws, &ao, &bo, &y, &B, &H,
                          &W, &C, &N, &KH, &KW, &sh, &sw, &ph, &pw, &threads))
        return NULL;
    int bad = conv_geometry(B, H, W, C, KH, KW, sh, sw, ph, pw, "binary_u8_conv2d") || N < 0 ||
              KH * KW * C > (1 << 24);
    if (bad && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "binary_u8_conv2d: bad N");
    if (!bad) {
        const int64_t Ho = (H + 2 * ph - KH) / sh + 1, Wo = (W + 2 * pw - KW) / sw + 1;
        const int64_t K = KH * KW * C;
        bad = check_size(&x, B * H * W * C, 4, "x") ||
              check_size(&wp, (N + 15) / 16 * ((K + 63) / 64 * 16), 8, "wp") ||
              check_size(&ws, N, 4, "wsum") || check_size(&y, B * Ho * Wo * N, 4, "y") ||
              get_opt(ao, &al, &ha, N, "alpha") || get_opt(bo, &be, &hb, N, "beta");
    }
    if (!bad) {
        Py_BEGIN_ALLOW_THREADS err = ob_binary_u8_conv2d(
            (const float *)x.buf, (const uint64_t *)wp.buf, (const int32_t *)ws.buf,
            ha ? (const float *)al.buf : NULL, hb ? (const float *)be.buf : NULL, (float *)y.buf,
            B, H, W, C, N, KH, KW, sh, sw, ph, pw, threads);
        Py_END_ALLOW_THREADS
    }
    if (ha) PyBuffer_Release(&al);
    if (hb) PyBuffer_Release(&be);
    PyBuffer_Release(&x);
    PyBuffer_Release(&wp);
    PyBuffer_Release(&ws);
    PyBuffer_Release(&y);
    if (bad) return NULL;
    return finish(err);
}

static PyObject *py_set_u8_amx_min_rows(PyObject *self, PyObject *arg) {
    (void)self;
    const long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    ob_set_u8_amx_min_rows(n > 1 << 30 ? 1 << 30 : (int)n);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pack_bits", py_pack_bits, METH_VARARGS, "pack_bits(x, out, M, K, threads)"},
    {"xnor_gemm", py_xnor_gemm, METH_VARARGS, "xnor_gemm(a, b, out, M, N, K, threads)"},
    {"time_xnor_gemm", py_time_xnor_gemm, METH_VARARGS,
     "time_xnor_gemm(a, b, out, M, N, K, threads, calls) -> seconds of each call"},
    {"binary_float_gemm", py_binary_float_gemm, METH_VARARGS,
     "binary_float_gemm(x, w, alpha, bias, out, M, N, K, threads)"},
    {"binary_conv2d", py_binary_conv2d, METH_VARARGS,
     "binary_conv2d(x, w, out, B, H, W, Cin, Cout, KH, KW, sh, sw, ph, pw, threads)"},
    {"im2col_f32", py_im2col_f32, METH_VARARGS,
     "im2col_f32(x, out, B, H, W, C, KH, KW, sh, sw, ph, pw, threads)"},
    {"threshold_sign", py_threshold_sign, METH_VARARGS,
     "threshold_sign(y, thresh, flip, out, M, N, is_int, threads)"},
    {"scale_bias", py_scale_bias, METH_VARARGS, "scale_bias(y, alpha, beta, out, M, N, threads)"},
    {"clamp", py_clamp, METH_VARARGS, "clamp(x, n, lo, hi, threads): x = min(max(x, lo), hi)"},
    {"special", py_special, METH_VARARGS, "special(x, y, n, fn, threads): y = erf(x) / GELU(x)"},
    {"softmax", py_softmax, METH_VARARGS, "softmax(x, y, R, n, log, safe, threads): rows"},
    {"layer_norm", py_layer_norm, METH_VARARGS,
     "layer_norm(x, y, R, n, w, b, eps, threads): rows, w and b may be None"},
    {"sgemm", py_sgemm, METH_VARARGS,
     "sgemm(a, b, c, M, N, K, rsa, csa, rsb, csb, ldc, accumulate, threads)"},
    {"sgemm_available", py_sgemm_available, METH_NOARGS,
     "Whether the selected instruction set has a float32 GEMM."},
    {"sign", py_sign, METH_VARARGS, "sign(x, out, n, threads): out = x >= 0 ? +1 : -1"},
    {"xnor_pack_panels", py_xnor_pack_panels, METH_VARARGS, "xnor_pack_panels(b, out, N, K)"},
    {"xnor_gemm_panels", py_xnor_gemm_panels, METH_VARARGS,
     "xnor_gemm_panels(a, panels, out, M, N, K, threads)"},
    {"time_xnor_gemm_panels", py_time_xnor_gemm_panels, METH_VARARGS,
     "time_xnor_gemm_panels(a, panels, out, M, N, K, threads, calls) -> seconds of each call"},
    {"direct_conv2d", py_direct_conv2d, METH_VARARGS,
     "direct_conv2d(x, w, ldw, alpha, beta, y, B, H, W, C, N, KH, KW, sh, sw, ph, pw, threads)"},
    {"depthwise_conv2d", py_depthwise_conv2d, METH_VARARGS,
     "depthwise_conv2d(x, w, alpha, beta, y, B, H, W, C, KH, KW, sh, sw, ph, pw, threads)"},
    {"quantize_u8", py_quantize_u8, METH_VARARGS, "quantize_u8(x, q, scale, zero, G, L, threads)"},
    {"binary_u8_gemm", py_binary_u8_gemm, METH_VARARGS,
     "binary_u8_gemm(x, wp, wsum, alpha, beta, y, M, N, K, threads)"},
    {"binary_u8_conv2d", py_binary_u8_conv2d, METH_VARARGS,
     "binary_u8_conv2d(x, wp, wsum, alpha, beta, y, B, H, W, C, N, KH, KW, sh, sw, ph, pw, threads)"},
    {"set_u8_amx_min_rows", py_set_u8_amx_min_rows, METH_O,
     "Rows from which the int8 GEMM uses AMX tiles (tests, benchmarks)."},
    {"available_isas", py_available_isas, METH_NOARGS, "ISAs this CPU can run, best first."},
    {"get_isa", py_get_isa, METH_NOARGS, "The ISA the kernels dispatch to."},
    {"set_isa", py_set_isa, METH_O, "Force an ISA by name; None restores the best one."},
    {"set_num_threads", py_set_num_threads, METH_O, "Global thread count (0 = OMP_NUM_THREADS or the CPU count)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "Global thread count."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "onebit native binary kernels (no libtorch).", -1, methods,
    NULL,                  NULL,      NULL,                                           NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
