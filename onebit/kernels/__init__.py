"""Fast binary kernels on raw numpy buffers (no libtorch).

The heavy lifting is done by the C extension ``onebit.kernels._native`` (its own thread pool,
run-time CPU dispatch between AVX-512 + VPOPCNTDQ, AVX2 and portable C).  When the extension
is not built every op falls back to the numpy reference in :mod:`onebit.kernels.reference`
(same results, much slower) and a warning is logged once.

Bit layout: ``bits[r, k // 64] >> (k % 64) & 1`` is column ``k`` of row ``r``; a set bit is
+1, a clear bit is -1, and ``x >= 0`` packs to a set bit.  Padding bits past the logical
length are zero in everything these kernels produce (and ignored in their inputs).

Conv weights are packed as ``(Cout, KH, KW, ceil(Cin / 64))`` uint64 (see
:func:`pack_conv_weight`); activations are NHWC.

Threads: each op takes ``threads=``; ``None`` uses the global setting of
:func:`set_num_threads`, whose default (0) is ``OMP_NUM_THREADS`` when set, else the CPUs this
process may run on (read once, at the first kernel call); it is independent of
``torch.set_num_threads``.  Small problems use fewer
threads automatically.  The pool's idle workers busy-wait about 1 ms before they sleep, so calls
in a row hand work over in about 0.2 us (an OpenMP parallel region cost about 1 us here).

Dispatch: the best path this CPU supports is used (:func:`get_isa`); :func:`set_isa` forces one
of :func:`available_isas` (tests, benchmarks). The levels, each needing the one before:
``generic`` (portable C), ``avx2``, ``avx512`` (F/BW/VL/DQ + VPOPCNTDQ), ``avx512_vnni`` (adds
VPDPBUSD for the int8-activation ops), ``amx`` (adds AMX-TILE/INT8 tiles for them, with the
kernel's permission). A level the CPU lacks is never offered; the next one below serves.

Layouts made once at load (the packed runtime caches them): :func:`xnor_panels` (B of the XNOR
GEMM in the AVX-512 kernel's k-major panels), :func:`vnni_panels` (weights of the int8 ops),
:func:`direct_conv_weight` (float rows of the direct conv).
"""

from __future__ import annotations

import logging
from types import ModuleType

import numpy as np
import numpy.typing as npt

from onebit.errors import OnebitError
from onebit.kernels import reference
from onebit.kernels.reference import num_words, unpack_bits
from onebit.shapes import conv_output_size, pair

__all__ = [
    "KernelInputError",
    "available_isas",
    "binary_conv2d",
    "binary_float_gemm",
    "binary_u8_conv2d",
    "binary_u8_gemm",
    "clamp_",
    "conv_output_size",
    "depthwise_conv2d",
    "direct_conv2d",
    "direct_conv_weight",
    "erf",
    "gelu",
    "get_isa",
    "get_num_threads",
    "im2col",
    "layer_norm",
    "matmul",
    "matmul_available",
    "native_available",
    "num_words",
    "pack_bits",
    "pack_conv_weight",
    "quantize_u8",
    "reference",
    "scale_bias",
    "set_isa",
    "set_num_threads",
    "sign",
    "softmax",
    "threshold_sign",
    "unpack_bits",
    "vnni_panels",
    "xnor_gemm",
    "xnor_gemm_panels",
    "xnor_panels",
]

log = logging.getLogger(__name__)

_native: ModuleType | None
try:
    from onebit.kernels import _native  # type: ignore[attr-defined,no-redef]
except ImportError as _err:  # not built: every op uses the numpy reference
    _native = None
    _IMPORT_ERROR: str | None = str(_err)
else:
    _IMPORT_ERROR = None

_warned = False
_py_threads = 0  # global thread setting used when the extension is missing (informational)


class KernelInputError(OnebitError, ValueError):
    """An array of the wrong dtype, rank or shape was passed to a kernel."""


def native_available() -> bool:
    """True when the C extension is importable."""
    return _native is not None


def _fallback() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "onebit native kernels are not built (%s); using the slow numpy reference. "
            "Build the extension (pip install -e .) to get the fast kernels.",
            _IMPORT_ERROR,
        )


def available_isas() -> list[str]:
    """Dispatch paths this CPU can run, best first (``[]`` when the extension is missing)."""
    return list(_native.available_isas()) if _native is not None else []


def get_isa() -> str:
    """The dispatch path in use: ``avx512``, ``avx2``, ``generic``, or ``reference``."""
    return str(_native.get_isa()) if _native is not None else "reference"


def set_isa(name: str | None) -> None:
    """Force a dispatch path (for tests and benchmarks); ``None`` or ``"auto"`` picks the best.

    Raises :class:`KernelInputError` if the name is unknown or this CPU cannot run it.
    """
    if _native is None:
        if name not in (None, "auto", "reference"):
            raise KernelInputError(f"cannot select ISA {name!r}: the native kernels are not built.")
        return
    try:
        _native.set_isa(None if name in (None, "auto") else name)
    except ValueError as e:
        raise KernelInputError(f"{e}; available: {', '.join(available_isas())}.") from None


def set_num_threads(n: int) -> None:
    """Global thread count for the kernels (``0`` = ``OMP_NUM_THREADS``, else the CPU count)."""
    global _py_threads
    if not isinstance(n, int) or n < 0:
        raise KernelInputError(f"thread count must be an int >= 0, got {n!r}.")
    _py_threads = n
    if _native is not None:
        _native.set_num_threads(n)


def get_num_threads() -> int:
    """Global thread count the kernels use when ``threads=None``."""
    if _native is not None:
        return int(_native.get_num_threads())
    return _py_threads or 1


# ----------------------------------------------------------------- validation helpers


def _threads(threads: int | None) -> int:
    if threads is None:
        return 0
    if type(threads) is int and threads > 0:  # fast path (bool is not int here)
        return threads
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise KernelInputError(f"threads must be a positive int or None, got {threads!r}.")
    return int(threads)


_DTYPES = {t: np.dtype(t) for t in (np.float32, np.uint64, np.int32, np.uint8)}


def _array(x: object, dtype: type[np.generic], ndim: int, name: str) -> np.ndarray:
    # fast path, kept to a few attribute reads because small kernels (10 us) feel every 100 ns:
    # builtin dtypes are singletons, and a 2-D array whose strides are (itemsize * cols,
    # itemsize) is C-contiguous; numpy arrays from np.empty or safetensors are aligned.
    if type(x) is np.ndarray and x.dtype is _DTYPES.get(dtype) and x.ndim == ndim:
        flags = x.flags
        if flags.c_contiguous and flags.aligned:
            return x
    arr = np.asarray(x)
    if arr.dtype != dtype:
        raise KernelInputError(f"{name} must be {np.dtype(dtype).name}, got {arr.dtype}.")
    if arr.ndim != ndim:
        raise KernelInputError(f"{name} must be {ndim}-D, got shape {arr.shape}.")
    return np.ascontiguousarray(arr)


def _vector(x: object, n: int, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.shape != (n,):
        raise KernelInputError(f"{name} must have shape ({n},), got {arr.shape}.")
    return arr


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    """:func:`onebit.shapes.pair` with ints only (no floats or strings that ``int()`` would
    accept), raising :class:`KernelInputError`."""
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v  # fast path: the runtime passes prepared tuples on every call
    try:
        p = pair(v, name)
        if not isinstance(v, int) and not all(isinstance(e, int) for e in v):  # type: ignore[union-attr]
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    except ValueError as e:
        raise KernelInputError(f"{e}.") from None
    return p


def _check_words(bits: np.ndarray, k: int, name: str) -> None:
    if bits.shape[1] != (k + 63) >> 6:
        raise KernelInputError(
            f"{name} has {bits.shape[1]} words per row; K={k} needs {num_words(k)}."
        )


# ----------------------------------------------------------------------------- ops


def pack_bits(x: npt.ArrayLike, *, threads: int | None = None) -> npt.NDArray[np.uint64]:
    """Pack a float32 ``(M, K)`` array into uint64 ``(M, ceil(K / 64))``: bit = ``x >= 0``."""
    xa = _array(x, np.float32, 2, "x")
    t = _threads(threads)
    m, k = xa.shape
    if _native is None:
        _fallback()
        return reference.pack_bits(xa)
    out = np.empty((m, num_words(k)), dtype=np.uint64)
    _native.pack_bits(xa, out, m, k, t)
    return out


def xnor_gemm(
    a_bits: npt.ArrayLike, b_bits: npt.ArrayLike, k: int, *, threads: int | None = None
) -> npt.NDArray[np.int32]:
    """+1/-1 dot products of packed rows: ``out[m, n] = K - 2 * popcount(a[m] ^ b[n])``.

    ``a_bits`` is uint64 ``(M, Kw)``, ``b_bits`` uint64 ``(N, Kw)`` with ``Kw = ceil(K / 64)``;
    the result is int32 ``(M, N)``.  Exact for any ``K``.
    """
    a = _array(a_bits, np.uint64, 2, "a_bits")
    b = _array(b_bits, np.uint64, 2, "b_bits")
    t = _threads(threads)
    k = int(k)
    if k < 0:
        raise KernelInputError(f"K must be >= 0, got {k}.")
    _check_words(a, k, "a_bits")
    _check_words(b, k, "b_bits")
    if _native is None:
        _fallback()
        return reference.xnor_gemm(a, b, k)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    _native.xnor_gemm(a, b, out, a.shape[0], b.shape[0], k, t)
    return out


def binary_float_gemm(
    x: npt.ArrayLike,
    w_bits: npt.ArrayLike,
    k: int | None = None,
    alpha: npt.ArrayLike | None = None,
    bias: npt.ArrayLike | None = None,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Float input times binary weights: ``y = (x @ wb.T) * alpha + bias``.

    ``x`` is float32 ``(M, K)``, ``w_bits`` uint64 ``(N, ceil(K / 64))`` (``wb`` = +1/-1 from
    the bits), ``alpha`` and ``bias`` optional ``(N,)``.  Returns float32 ``(M, N)``.
    Accumulation order differs from a float GEMM, so results agree to float tolerance.
    """
    xa = _array(x, np.float32, 2, "x")
    w = _array(w_bits, np.uint64, 2, "w_bits")
    t = _threads(threads)
    m, kx = xa.shape
    if k is not None and int(k) != kx:
        raise KernelInputError(f"K={k} does not match x with {kx} columns.")
    _check_words(w, kx, "w_bits")
    n = w.shape[0]
    al = None if alpha is None else _vector(alpha, n, "alpha")
    bi = None if bias is None else _vector(bias, n, "bias")
    if _native is None:
        _fallback()
        return reference.binary_float_gemm(xa, w, kx, al, bi)
    out = np.empty((m, n), dtype=np.float32)
    _native.binary_float_gemm(xa, w, al, bi, out, m, n, kx, t)
    return out


def pack_conv_weight(w: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """Pack float32 conv weights ``(Cout, Cin, KH, KW)`` (torch layout) for :func:`binary_conv2d`.

    Result: uint64 ``(Cout, KH, KW, ceil(Cin / 64))``, bit = ``w >= 0``, input channel ``c``
    in word ``c // 64``, bit ``c % 64``.
    """
    wa = _array(w, np.float32, 4, "w")
    cout, cin, kh, kw = wa.shape
    taps = np.ascontiguousarray(wa.transpose(0, 2, 3, 1)).reshape(cout * kh * kw, cin)
    return pack_bits(taps).reshape(cout, kh, kw, num_words(cin))


def binary_conv2d(
    x: npt.ArrayLike,
    w_bits: npt.ArrayLike,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    in_channels: int | None = None,
    kernel_size: int | tuple[int, int] | None = None,
    threads: int | None = None,
) -> npt.NDArray[np.int32]:
    """Binary-weight, binary-activation 2-D convolution (bit-packed im2col + XNOR GEMM).

    ``x`` is either float32 NHWC ``(N, H, W, Cin)`` (bit = ``x >= 0`` is taken inside) or
    already-packed uint64 ``(N, H, W, ceil(Cin / 64))`` together with ``in_channels``.
    ``w_bits`` is uint64 ``(Cout, KH, KW, ceil(Cin / 64))`` (:func:`pack_conv_weight`), or the
    same memory as 2-D ``(Cout, KH * KW * ceil(Cin / 64))`` together with ``kernel_size``.
    Zero padding of the +1/-1 input: padded taps contribute 0 (exactly), so
    ``out = sum over valid taps of x * w``.  Returns int32 ``(N, Hout, Wout, Cout)``.
    """
    t = _threads(threads)
    xa = np.asarray(x)
    if xa.ndim != 4:
        raise KernelInputError(f"x must be 4-D NHWC, got shape {xa.shape}.")
    if xa.dtype == np.float32:
        nb, h, wd, cin = xa.shape
        if in_channels is not None and in_channels != cin:
            raise KernelInputError(f"in_channels={in_channels} but x has {cin} channels.")
        xbits = None
    elif xa.dtype == np.uint64:
        if in_channels is None:
            raise KernelInputError("packed x (uint64) needs in_channels.")
        nb, h, wd, cwx = xa.shape
        cin = int(in_channels)
        if cin < 1 or cwx != num_words(cin):
            raise KernelInputError(
                f"packed x has {cwx} words per pixel; Cin={cin} needs {num_words(cin)}."
            )
        xbits = np.ascontiguousarray(xa)
    else:
        raise KernelInputError(f"x must be float32 or uint64 (packed), got {xa.dtype}.")
    cw = num_words(cin)
    wa = np.asarray(w_bits)
    if wa.dtype != np.uint64:
        raise KernelInputError(f"w_bits must be uint64, got {wa.dtype}.")
    if wa.ndim == 2:
        if kernel_size is None:
            raise KernelInputError("2-D w_bits needs kernel_size.")
        kh, kw = _pair(kernel_size, "kernel_size")
        if wa.shape[1] != kh * kw * cw:
            raise KernelInputError(
                f"w_bits has {wa.shape[1]} words per filter; expected {kh * kw * cw}."
            )
        wa = wa.reshape(wa.shape[0], kh, kw, cw)
    elif wa.ndim == 4:
        kh, kw = int(wa.shape[1]), int(wa.shape[2])
        if kernel_size is not None and _pair(kernel_size, "kernel_size") != (kh, kw):
            raise KernelInputError(f"kernel_size={kernel_size} but w_bits has {kh}x{kw} taps.")
        if wa.shape[3] != cw:
            raise KernelInputError(f"w_bits has {wa.shape[3]} words per tap; Cin={cin} needs {cw}.")
    else:
        raise KernelInputError(f"w_bits must be 4-D or 2-D, got shape {wa.shape}.")
    wa = np.ascontiguousarray(wa)
    cout = wa.shape[0]
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if sh < 1 or sw < 1 or ph < 0 or pw < 0 or kh < 1 or kw < 1:
        raise KernelInputError("stride and kernel size must be >= 1 and padding >= 0.")
    ho = conv_output_size(h, kh, sh, ph)
    wo = conv_output_size(wd, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise KernelInputError(f"kernel {kh}x{kw} does not fit the padded {h}x{wd} input.")
    if _native is None:
        _fallback()
        if xbits is None:
            xs = np.where(xa >= 0, 1, -1).astype(np.int8)
        else:
            xs = unpack_bits(xbits.reshape(-1, cw), cin).reshape(nb, h, wd, cin)
        return reference.binary_conv2d(xs, wa, (sh, sw), (ph, pw))
    if xbits is None:
        xf = np.ascontiguousarray(xa).reshape(nb * h * wd, cin)
        xbits = np.empty((nb * h * wd, cw), dtype=np.uint64)
        _native.pack_bits(xf, xbits, nb * h * wd, cin, t)
    out = np.empty((nb, ho, wo, cout), dtype=np.int32)
    _native.binary_conv2d(xbits, wa, out, nb, h, wd, cin, cout, kh, kw, sh, sw, ph, pw, t)
    return out


def threshold_sign(
    y: npt.ArrayLike,
    thresh: npt.ArrayLike,
    flip: npt.ArrayLike | None = None,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.uint64]:
    """Fused BatchNorm + sign, packed for the next binary layer.

    Bit ``n`` of row ``m`` is ``(y[m, n] >= thresh[n]) XOR flip[n]`` (``flip`` marks channels
    with a negative BatchNorm scale; default all False).  ``y`` is int32 or float32 ``(M, N)``,
    ``thresh`` float32 ``(N,)``; int32 ``y`` is compared exactly.  Returns uint64
    ``(M, ceil(N / 64))`` with zero padding bits.
    """
    ya = np.asarray(y)
    if ya.dtype not in (np.int32, np.float32):
        raise KernelInputError(f"y must be int32 or float32, got {ya.dtype}.")
    ya = _array(ya, ya.dtype.type, 2, "y")
    t = _threads(threads)
    m, n = ya.shape
    th = _vector(thresh, n, "thresh")
    if flip is None:
        fl = np.zeros(n, dtype=np.uint8)
    elif type(flip) is np.ndarray and flip.dtype == np.uint8 and flip.shape == (n,):
        fl = np.ascontiguousarray(flip)  # 0/1 flags as stored in .onebit files: nonzero = flip
    else:
        fb = np.asarray(flip)
        if fb.shape != (n,):
            raise KernelInputError(f"flip must have shape ({n},), got {fb.shape}.")
        fl = np.ascontiguousarray(fb.astype(bool).view(np.uint8))
    if _native is None:
        _fallback()
        return reference.threshold_sign(ya, th, fl.astype(bool))
    out = np.empty((m, num_words(n)), dtype=np.uint64)
    _native.threshold_sign(ya, th, fl, out, m, n, ya.dtype == np.int32, t)
    return out


def scale_bias(
    y: npt.ArrayLike,
    alpha: npt.ArrayLike,
    beta: npt.ArrayLike,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """``alpha[n] * float32(y[m, n]) + beta[n]`` (int32 ``y`` ``(M, N)`` to float32)."""
    ya = _array(y, np.int32, 2, "y")
    t = _threads(threads)
    m, n = ya.shape
    al = _vector(alpha, n, "alpha")
    be = _vector(beta, n, "beta")
    if _native is None:
        _fallback()
        return reference.scale_bias(ya, al, be)
    out = np.empty((m, n), dtype=np.float32)
    _native.scale_bias(ya, al, be, out, m, n, t)
    return out


def im2col(
    x: npt.ArrayLike,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Float patches of an NHWC image batch, for a convolution as one GEMM.

    ``x`` is float32 ``(N, H, W, C)``; the result is float32 ``(N * Ho * Wo, kh * kw * C)``
    whose row ``(n, oy, ox)`` holds ``x[n, oy * sh - ph + ky, ox * sw - pw + kx, :]`` for
    ``ky, kx`` in order, zero where a tap falls in the padding (see
    :func:`onebit.kernels.reference.im2col`).  The copy is exact.
    """
    xa = _array(x, np.float32, 4, "x")
    ks, st, pd = (
        _pair(kernel_size, "kernel_size"),
        _pair(stride, "stride"),
        _pair(padding, "padding"),
    )
    n, h, w, c = xa.shape
    if min(ks) < 1 or min(st) < 1 or min(pd) < 0 or c < 1:
        raise KernelInputError(
            f"im2col needs kernel_size >= 1, stride >= 1, padding >= 0 and C >= 1; got "
            f"kernel_size={ks}, stride={st}, padding={pd}, C={c}."
        )
    if h + 2 * pd[0] < ks[0] or w + 2 * pd[1] < ks[1]:
        raise KernelInputError(f"a {ks[0]}x{ks[1]} kernel does not fit a padded {h}x{w} image.")
    t = _threads(threads)
    if _native is None:
        _fallback()
        return reference.im2col(xa, ks, st, pd)
    ho = conv_output_size(h, ks[0], st[0], pd[0])
    wo = conv_output_size(w, ks[1], st[1], pd[1])
    out = np.empty((n * ho * wo, ks[0] * ks[1] * c), dtype=np.float32)
    _native.im2col_f32(xa, out, n, h, w, c, ks[0], ks[1], st[0], st[1], pd[0], pd[1], t)
    return out


def _special(x: npt.NDArray[np.float32], fn: int, threads: int | None) -> npt.NDArray[np.float32]:
    xa = np.ascontiguousarray(x, dtype=np.float32)
    if _native is None:
        _fallback()
        return reference.erf(xa) if fn == 0 else reference.gelu(xa)
    out = np.empty_like(xa)
    _native.special(xa, out, xa.size, fn, _threads(threads))
    return out


def erf(x: npt.NDArray[np.float32], *, threads: int | None = None) -> npt.NDArray[np.float32]:
    """``erf(x)`` elementwise, float32 (libm's ``erff``; numpy has no erf). Reference:
    :func:`onebit.kernels.reference.erf`."""
    return _special(x, 0, threads)


def gelu(x: npt.NDArray[np.float32], *, threads: int | None = None) -> npt.NDArray[np.float32]:
    """Exact GELU ``0.5 x erfc(-x / sqrt 2)`` elementwise, float32 (a vectorized erfc, accurate
    in the negative tail where ``1 + erf`` cancels: see ``ob_rows_body.h``). Reference:
    :func:`onebit.kernels.reference.gelu`."""
    return _special(x, 1, threads)


def _rows(x: npt.NDArray[np.float32], what: str) -> npt.NDArray[np.float32]:
    xa = np.ascontiguousarray(x, dtype=np.float32)
    if xa.ndim == 0:
        raise KernelInputError(f"{what} needs an array of at least one axis; got a scalar.")
    return xa


def softmax(
    x: npt.NDArray[np.float32],
    *,
    log: bool = False,
    safe: bool = False,
    out: npt.NDArray[np.float32] | None = None,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Softmax along the last axis, float32: ``y = exp(x - max) / sum exp(x - max)`` per row
    (``log``: log-softmax ``x - max - log sum exp(x - max)``). ``exp`` is Cephes' single-precision
    polynomial (~1 ulp), sums in float32 over 16 partial sums. A row of -inf only gives zeros
    with ``safe`` (attention's fully masked rows, as torch's math attention), NaN without (as
    ``torch.softmax``). ``out`` (C-contiguous float32 of ``x``'s shape, may be ``x``) receives
    the result. Reference: :func:`onebit.kernels.reference.softmax`."""
    xa = _rows(x, "softmax")
    if _native is None:
        _fallback()
        return _into(reference.softmax(xa, log=log, safe=safe), out)
    y = _out_like(xa, out, "softmax")
    n = xa.shape[-1]
    _native.softmax(xa, y, xa.size // n if n else 0, n, int(log), int(safe), _threads(threads))
    return y


def layer_norm(
    x: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32] | None = None,
    bias: npt.NDArray[np.float32] | None = None,
    eps: float = 1e-5,
    *,
    out: npt.NDArray[np.float32] | None = None,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Layer normalization along the last axis (Ba et al. 2016), float32:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance, the mean and
    variance summed in float64; ``weight`` and ``bias`` (the last axis's length) are optional.
    ``out`` as in :func:`softmax`. Reference: :func:`onebit.kernels.reference.layer_norm`."""
    xa = _rows(x, "layer_norm")
    n = xa.shape[-1]
    w = None if weight is None else np.ascontiguousarray(weight, dtype=np.float32).reshape(-1)
    b = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    for name, v in (("weight", w), ("bias", b)):
        if v is not None and v.size != n:
            raise KernelInputError(f"layer_norm's {name} has {v.size} values for rows of {n}.")
    if _native is None:
        _fallback()
        return _into(reference.layer_norm(xa, w, b, eps), out)
    y = _out_like(xa, out, "layer_norm")
    _native.layer_norm(xa, y, xa.size // n if n else 0, n, w, b, float(eps), _threads(threads))
    return y


def _into(
    y: npt.NDArray[np.float32], out: npt.NDArray[np.float32] | None
) -> npt.NDArray[np.float32]:
    """The reference's result ``y``, written into ``out`` when the caller gave one."""
    if out is None:
        return y
    out[...] = y
    return out


def _out_like(
    xa: npt.NDArray[np.float32], out: npt.NDArray[np.float32] | None, what: str
) -> npt.NDArray[np.float32]:
    if out is None:
        return np.empty_like(xa)
    if (
        type(out) is not np.ndarray
        or out.dtype != np.float32
        or out.shape != xa.shape
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise KernelInputError(
            f"{what}'s out must be a writable C-contiguous float32 array of shape {xa.shape}."
        )
    return out


def clamp_(
    x: npt.NDArray[np.float32], lo: float, hi: float, *, threads: int | None = None
) -> npt.NDArray[np.float32]:
    """In place ``x = min(max(x, lo), hi)`` (hardtanh) on a C-contiguous, writable float32 array;
    returns ``x``. One threaded pass, where numpy needs two single-threaded ones."""
    if not (
        type(x) is np.ndarray
        and x.dtype == np.float32
        and x.flags.c_contiguous
        and x.flags.writeable
    ):
        raise KernelInputError("clamp_ needs a C-contiguous, writable float32 numpy array.")
    t = _threads(threads)
    if _native is None:
        _fallback()
        return reference.clamp_(x, lo, hi)
    _native.clamp(x, x.size, float(lo), float(hi), t)
    return x


def _out(out: object, shape: tuple[int, ...], op: str) -> np.ndarray:
    """``out`` checked to be a writable C-contiguous float32 array of ``shape``; a new one if None."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not (
        type(out) is np.ndarray
        and out.dtype == np.float32
        and out.shape == tuple(shape)
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise KernelInputError(f"{op}: out must be a writable C-contiguous float32 {tuple(shape)}.")
    return out


def sign(
    x: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32] | None = None,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """``out = +1 where x >= 0 else -1`` (both zeros give +1, NaN gives -1, as :func:`pack_bits`
    reads them) in one threaded pass over C-contiguous float32 arrays; ``out`` may be ``x``."""
    xa = _array(x, np.float32, x.ndim if isinstance(x, np.ndarray) else 1, "x")
    out = _out(out, xa.shape, "sign")
    t = _threads(threads)
    if _native is None:
        _fallback()
        out[...] = reference.sign(xa)
        return out
    _native.sign(xa, out, xa.size, t)
    return out


def matmul_available() -> bool:
    """True when :func:`matmul` runs a native kernel (the selected ISA has one: AVX-512)."""
    return _native is not None and bool(_native.sgemm_available())


def _operand(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    """A C-contiguous float32 array holding ``x`` and the element strides that read ``x`` from
    it: ``x`` itself (row-major) or the array ``x`` is the transpose of; else a copy."""
    if x.flags.c_contiguous:
        return x, x.shape[1], 1
    if x.T.flags.c_contiguous:
        return x.T, 1, x.shape[0]
    return np.ascontiguousarray(x), x.shape[1], 1


def matmul(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    out: npt.NDArray[np.float32] | None = None,
    *,
    accumulate: bool = False,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Float32 ``out = a @ b`` (``out += a @ b`` with ``accumulate``) for 2-D ``a (M, K)`` and
    ``b (K, N)``, each row-major or the transpose of a row-major array (read in place).

    The AVX-512 kernel packs both operands into cache blocks and runs a 6x64 register tile
    (see ``ob_avx512.c``); it sums each dot product in ``k`` order with one FMA per term, so it
    agrees with any BLAS to rounding. Without that kernel (no AVX-512, or not built) numpy's
    ``matmul`` does the product. ``out`` must be C-contiguous float32 ``(M, N)``.
    """
    aa, ba = np.asarray(a), np.asarray(b)
    if aa.dtype != np.float32 or ba.dtype != np.float32 or aa.ndim != 2 or ba.ndim != 2:
        raise KernelInputError(
            f"matmul needs two 2-D float32 arrays, got {aa.dtype} {aa.shape} and "
            f"{ba.dtype} {ba.shape}."
        )
    (m, k), (k2, n) = aa.shape, ba.shape
    if k != k2:
        raise KernelInputError(f"matmul: inner sizes differ, {aa.shape} @ {ba.shape}.")
    if out is None and accumulate:
        raise KernelInputError("matmul(accumulate=True) needs out.")
    out = _out(out, (m, n), "matmul")
    t = _threads(threads)
    if not matmul_available():
        prod = aa @ ba
        if accumulate:
            out += prod
        else:
            out[...] = prod
        return out
    abase, rsa, csa = _operand(aa)
    bbase, rsb, csb = _operand(ba)
    _native.sgemm(abase, bbase, out, m, n, k, rsa, csa, rsb, csb, n, accumulate, t)
    return out


# ------------------------------------------------------- layouts made once, at load time


def xnor_panels(b_bits: npt.ArrayLike, k: int) -> npt.NDArray[np.uint64]:
    """``b_bits`` uint64 ``(N, ceil(K / 64))`` -> the XNOR GEMM's B panels ``(ceil(N / 32),
    ceil(K / 64), 32)`` (k-major, what the AVX-512 kernel otherwise builds on every call), for
    :func:`xnor_gemm_panels`. Padding bits are cleared."""
    b = _array(b_bits, np.uint64, 2, "b_bits")
    k = int(k)
    _check_words(b, k, "b_bits")
    n = b.shape[0]
    if _native is None:
        return reference.pack_xnor_panels(b, k)
    out = np.empty(((n + 31) // 32, num_words(k), 32), dtype=np.uint64)
    _native.xnor_pack_panels(b, out, n, k)
    return out


def xnor_gemm_panels(
    a_bits: npt.ArrayLike,
    panels: npt.NDArray[np.uint64],
    k: int,
    n: int,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.int32]:
    """:func:`xnor_gemm` with B given as :func:`xnor_panels` of its ``n`` rows (no per-call
    re-layout). Same results, on every ISA."""
    a = _array(a_bits, np.uint64, 2, "a_bits")
    t = _threads(threads)
    k, n = int(k), int(n)
    _check_words(a, k, "a_bits")
    if not (
        type(panels) is np.ndarray
        and panels.dtype == np.uint64
        and panels.flags.c_contiguous
        and panels.shape == ((n + 31) // 32, num_words(k), 32)
    ):
        raise KernelInputError(f"panels must be xnor_panels() of {n} rows with K={k}.")
    if _native is None:
        _fallback()
        b = panels.transpose(0, 2, 1).reshape(-1, num_words(k))[:n]
        return reference.xnor_gemm(a, b, k)
    out = np.empty((a.shape[0], n), dtype=np.int32)
    _native.xnor_gemm_panels(a, panels, out, a.shape[0], n, k, t)
    return out


def vnni_panels(
    w_bits: npt.ArrayLike, k: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
    """Weights of the int8-activation ops: ``(wp, wsum)`` of
    :func:`onebit.kernels.reference.pack_vnni_panels` (1 bit per weight)."""
    w = _array(w_bits, np.uint64, 2, "w_bits")
    _check_words(w, int(k), "w_bits")
    return reference.pack_vnni_panels(w, int(k))


def direct_conv_weight(w_rows: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Float weight rows ``(N, kh * kw * C)`` (im2col order) -> the direct conv's layout
    ``(kh * kw * C, ceil(N / 16) * 16)``, zero past ``N``."""
    w = np.asarray(w_rows, dtype=np.float32)
    if w.ndim != 2:
        raise KernelInputError(f"w_rows must be 2-D, got shape {w.shape}.")
    n, kk = w.shape
    out = np.zeros((kk, (n + 15) // 16 * 16), dtype=np.float32)
    out[:, :n] = w.T
    return out


def _conv_geom(x: np.ndarray, kernel_size, stride, padding) -> tuple:
    (kh, kw), (sh, sw), (ph, pw) = (
        _pair(kernel_size, "kernel_size"),
        _pair(stride, "stride"),
        _pair(padding, "padding"),
    )
    n, h, w, c = x.shape
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or c < 1:
        raise KernelInputError("kernel size and stride must be >= 1, padding >= 0, C >= 1.")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise KernelInputError(f"a {kh}x{kw} kernel does not fit a padded {h}x{w} image.")
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    return n, h, w, c, kh, kw, sh, sw, ph, pw, ho, wo


def direct_conv2d(
    x: npt.ArrayLike,
    w: npt.NDArray[np.float32],
    n_out: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    alpha: npt.ArrayLike | None = None,
    bias: npt.ArrayLike | None = None,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Float32 direct convolution (no im2col) of NHWC ``x``: ``y = alpha * conv(x, w) + bias``.

    ``w`` is :func:`direct_conv_weight` of the ``n_out`` weight rows. For binary-weight layers the
    rows are ±1 and ``alpha`` their scale: every product is exact and the sums are float32 sums
    (in the order kh, kw, c), so results agree with the reference to float rounding.
    """
    xa = _array(x, np.float32, 4, "x")
    n, h, wd, c, kh, kw, sh, sw, ph, pw, ho, wo = _conv_geom(xa, kernel_size, stride, padding)
    n_out = int(n_out)
    wa = _array(w, np.float32, 2, "w")
    if wa.shape[0] != kh * kw * c or wa.shape[1] % 16 or wa.shape[1] < n_out:
        raise KernelInputError(
            f"w must be direct_conv_weight() of {n_out} rows of {kh * kw * c}, got {wa.shape}."
        )
    al = None if alpha is None else _vector(alpha, n_out, "alpha")
    bi = None if bias is None else _vector(bias, n_out, "bias")
    t = _threads(threads)
    if _native is None:
        _fallback()
        return reference.direct_conv2d(xa, wa[:, :n_out].T, (kh, kw), (sh, sw), (ph, pw), al, bi)
    out = np.empty((n, ho, wo, n_out), dtype=np.float32)
    _native.direct_conv2d(
        xa, wa, wa.shape[1], al, bi, out, n, h, wd, c, n_out, kh, kw, sh, sw, ph, pw, t
    )
    return out


def depthwise_conv2d(
    x: npt.ArrayLike,
    w: npt.ArrayLike,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    alpha: npt.ArrayLike | None = None,
    bias: npt.ArrayLike | None = None,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Depthwise conv of NHWC float32 ``x`` with ``w (kh, kw, C)``, ``* alpha + bias`` per channel;
    the same bits as :func:`onebit.kernels.reference.depthwise_conv2d` on every path."""
    xa = _array(x, np.float32, 4, "x")
    wa = _array(w, np.float32, 3, "w")
    n, h, wd, c, kh, kw, sh, sw, ph, pw, ho, wo = _conv_geom(xa, wa.shape[:2], stride, padding)
    if wa.shape[2] != c:
        raise KernelInputError(f"w has {wa.shape[2]} channels, x has {c}.")
    al = None if alpha is None else _vector(alpha, c, "alpha")
    bi = None if bias is None else _vector(bias, c, "bias")
    t = _threads(threads)
    if _native is None:
        _fallback()
        return reference.depthwise_conv2d(xa, wa, (sh, sw), (ph, pw), al, bi)
    out = np.empty((n, ho, wo, c), dtype=np.float32)
    _native.depthwise_conv2d(xa, wa, al, bi, out, n, h, wd, c, kh, kw, sh, sw, ph, pw, t)
    return out


# --------------------------------------------------------------- int8 activations (opt-in)


def quantize_u8(
    x: npt.ArrayLike, *, threads: int | None = None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """Per row of float32 ``(G, L)``: ``(q, scale, zero)`` as
    :func:`onebit.kernels.reference.quantize_u8` (the int8 ops quantize this way)."""
    xa = _array(x, np.float32, 2, "x")
    t = _threads(threads)
    if _native is None:
        _fallback()
        return reference.quantize_u8(xa)
    g, length = xa.shape
    q = np.empty((g, length), dtype=np.uint8)
    sc = np.empty(g, dtype=np.float32)
    zp = np.empty(g, dtype=np.int32)
    _native.quantize_u8(xa, q, sc, zp, g, length, t)
    return q, sc, zp


def _check_vnni(wp: object, wsum: object, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    wpa = _array(wp, np.uint64, 2, "wp")
    wsa = _array(wsum, np.int32, 1, "wsum")
    if wpa.shape != ((n + 15) // 16, (k + 63) // 64 * 16) or wsa.shape != (n,):
        raise KernelInputError(f"wp, wsum must be vnni_panels() of {n} rows with K={k}.")
    return wpa, wsa


def binary_u8_gemm(
    x: npt.ArrayLike,
    wp: npt.NDArray[np.uint64],
    wsum: npt.NDArray[np.int32],
    n_out: int,
    alpha: npt.ArrayLike | None = None,
    bias: npt.ArrayLike | None = None,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """:func:`binary_float_gemm` with 8-bit activations: each row of ``x`` is quantized to uint8
    (:func:`quantize_u8`), multiplied by the ±1 weights exactly in int32 (AMX tiles or VNNI where
    the CPU has them), then scaled: the same bits as
    :func:`onebit.kernels.reference.binary_u8_gemm` on every path. ``wp, wsum`` =
    :func:`vnni_panels`. Not exact against the float product: quantization error."""
    xa = _array(x, np.float32, 2, "x")
    m, k = xa.shape
    n_out = int(n_out)
    wpa, wsa = _check_vnni(wp, wsum, n_out, k)
    al = None if alpha is None else _vector(alpha, n_out, "alpha")
    bi = None if bias is None else _vector(bias, n_out, "bias")
    t = _threads(threads)
    if _native is None:
        _fallback()
        q, sc, zp = reference.quantize_u8(xa)
        return _u8_from_panels(q, sc, zp, wpa, wsa, n_out, k, al, bi)
    out = np.empty((m, n_out), dtype=np.float32)
    _native.binary_u8_gemm(xa, wpa, wsa, al, bi, out, m, n_out, k, t)
    return out


def _unpack_vnni(wp: np.ndarray, n: int, k: int) -> np.ndarray:
    """±1 int64 ``(n, k)`` from :func:`vnni_panels`' words (the numpy fallback)."""
    nb, kq = wp.shape
    raw = np.ascontiguousarray(wp.astype("<u8")).view(np.uint8).reshape(nb, kq, 8)
    bits = np.unpackbits(raw, axis=2, bitorder="little")  # (nb, kq, 64): bit 4 j + i
    s = bits.reshape(nb, kq, 16, 4).transpose(0, 2, 1, 3).reshape(nb * 16, kq * 4)
    return s[:n, :k].astype(np.int64) * 2 - 1


def _u8_from_panels(q, sc, zp, wp, wsum, n, k, al, bi):
    s = _unpack_vnni(wp, n, k)
    acc = q.astype(np.int64) @ s.T
    return reference._u8_epilogue(acc, zp, sc, wsum, al, bi)


def binary_u8_conv2d(
    x: npt.ArrayLike,
    wp: npt.NDArray[np.uint64],
    wsum: npt.NDArray[np.int32],
    n_out: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    alpha: npt.ArrayLike | None = None,
    bias: npt.ArrayLike | None = None,
    *,
    threads: int | None = None,
) -> npt.NDArray[np.float32]:
    """Binary-weight conv of NHWC float32 ``x`` with 8-bit activations: each sample quantized to
    uint8 (:func:`quantize_u8` over its ``H * W * C`` values), padded with its zero point, uint8
    im2col, the int8 GEMM of :func:`binary_u8_gemm`. ``wp, wsum`` = :func:`vnni_panels` of the
    weight rows in im2col order ``(kh, kw, C)``. The same bits as
    :func:`onebit.kernels.reference.binary_u8_conv2d` on every path."""
    xa = _array(x, np.float32, 4, "x")
    n, h, wd, c, kh, kw, sh, sw, ph, pw, ho, wo = _conv_geom(xa, kernel_size, stride, padding)
    n_out = int(n_out)
    wpa, wsa = _check_vnni(wp, wsum, n_out, kh * kw * c)
    al = None if alpha is None else _vector(alpha, n_out, "alpha")
    bi = None if bias is None else _vector(bias, n_out, "bias")
    t = _threads(threads)
    if _native is None:
        _fallback()
        s = _unpack_vnni(wpa, n_out, kh * kw * c)
        bits = reference.pack_bits(s.astype(np.float32))
        return reference.binary_u8_conv2d(xa, bits, (kh, kw), (sh, sw), (ph, pw), al, bi)
    out = np.empty((n, ho, wo, n_out), dtype=np.float32)
    _native.binary_u8_conv2d(
        xa, wpa, wsa, al, bi, out, n, h, wd, c, n_out, kh, kw, sh, sw, ph, pw, t
    )
    return out
