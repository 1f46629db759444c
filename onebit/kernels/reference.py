"""Plain numpy reference implementations: they define what every native kernel must return.

Conventions shared by all ops:

* Bit packing: ``bits[r, k // 64] >> (k % 64) & 1`` is column ``k`` of row ``r``; a set bit
  means +1, a clear bit means -1, and ``x >= 0`` packs to a set bit (so ``sign(0) = +1``;
  NaN packs to a clear bit). Padding bits past the logical length are zero.
* Binary dot products only count the first ``K`` bits of each row; padding bits are ignored
  even when they are not zero.

These functions favour clarity over speed; they are also the fallback used when the native
extension is not built.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from onebit.shapes import conv_output_size  # re-exported: the one definition lives there

__all__ = [
    "binary_conv2d",
    "binary_float_gemm",
    "clamp_",
    "conv_output_size",
    "erf",
    "gelu",
    "im2col",
    "layer_norm",
    "num_words",
    "pack_bits",
    "pack_conv_weight",
    "scale_bias",
    "softmax",
    "threshold_sign",
    "unpack_bits",
    "xnor_gemm",
]

_CHUNK_ELEMS = 1 << 22  # bound on temporaries in xnor_gemm (elements)


def num_words(n: int) -> int:
    """Number of 64-bit words that hold ``n`` bits."""
    return (n + 63) // 64


def pack_bits(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint64]:
    """Pack ``x >= 0`` of a 2-D array along its last axis into uint64 words."""
    x = np.asarray(x)
    m, k = x.shape
    kw = num_words(k)
    bits = np.zeros((m, kw * 64), dtype=bool)
    bits[:, :k] = x >= 0
    packed = np.packbits(bits, axis=1, bitorder="little")  # byte b holds columns 8b..8b+7
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64).reshape(m, kw)


def unpack_bits(bits: npt.NDArray[np.uint64], k: int) -> npt.NDArray[np.int8]:
    """Inverse of :func:`pack_bits`: the first ``k`` columns as an int8 array of +1/-1."""
    bits = np.asarray(bits, dtype=np.uint64)
    m = bits.shape[0]
    as_bytes = np.ascontiguousarray(bits.astype("<u8")).view(np.uint8).reshape(m, -1)
    flags = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :k]
    return (flags.astype(np.int8) * 2 - 1).astype(np.int8)


def _masked(bits: npt.NDArray[np.uint64], k: int) -> npt.NDArray[np.uint64]:
    """Copy of ``bits`` with every bit at or past column ``k`` cleared."""
    out = np.array(bits, dtype=np.uint64, copy=True)
    kw = out.shape[1]
    if k % 64 and kw:
        out[:, kw - 1] &= np.uint64((1 << (k % 64)) - 1)
    return out


def xnor_gemm(
    a_bits: npt.NDArray[np.uint64], b_bits: npt.NDArray[np.uint64], k: int
) -> npt.NDArray[np.int32]:
    """``out[m, n] = sum_j a[m, j] * b[n, j]`` over the first ``k`` +1/-1 entries.

    Computed as ``k - 2 * popcount(a XOR b)``.
    """
    a = _masked(a_bits, k)
    b = _masked(b_bits, k)
    m, n = a.shape[0], b.shape[0]
    out = np.empty((m, n), dtype=np.int32)
    rows = max(1, _CHUNK_ELEMS // max(1, n * a.shape[1]))
    for r0 in range(0, m, rows):
        x = a[r0 : r0 + rows, None, :] ^ b[None, :, :]
        pc = np.bitwise_count(x).sum(axis=2, dtype=np.int64)
        out[r0 : r0 + rows] = (k - 2 * pc).astype(np.int32)
    return out


def binary_float_gemm(
    x: npt.NDArray[np.float32],
    w_bits: npt.NDArray[np.uint64],
    k: int,
    alpha: npt.NDArray[np.float32] | None = None,
    bias: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """``y = (x @ wb.T) * alpha + bias`` with ``wb`` the +1/-1 matrix of ``w_bits``.

    Accumulates in float64 and rounds the result to float32.
    """
    wb = unpack_bits(w_bits, k).astype(np.float64)
    y = np.asarray(x, dtype=np.float64)[:, :k] @ wb.T
    if alpha is not None:
        y = y * np.asarray(alpha, dtype=np.float64)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    return y.astype(np.float32)


def im2col(
    x: npt.NDArray[np.float32],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> npt.NDArray[np.float32]:
    """NHWC float ``x`` -> ``(N * Ho * Wo, kh * kw * C)`` patches, zero padded.

    Row ``(n, oy, ox)`` holds ``x[n, oy * sh - ph + ky, ox * sw - pw + kx, :]`` for ``ky, kx``
    in order, with zeros where a tap falls in the padding.
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c = x.shape[0], x.shape[3]
    if ph or pw:
        x = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]
    ho, wo = win.shape[1], win.shape[2]
    # (N, Ho, Wo, C, kh, kw) -> (N, Ho, Wo, kh, kw, C)
    cols = np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3), dtype=np.float32)
    return cols.reshape(n * ho * wo, kh * kw * c)


def pack_conv_weight(w: npt.NDArray[np.float32]) -> npt.NDArray[np.uint64]:
    """Pack float weights ``(Cout, Cin, KH, KW)`` (torch layout) into the kernel layout.

    The result has shape ``(Cout, KH, KW, ceil(Cin / 64))``: for every output channel and
    tap, the input channels packed along the last axis (bit = ``w >= 0``).
    """
    w = np.asarray(w)
    cout, cin, kh, kw = w.shape
    taps = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(cout * kh * kw, cin)
    return pack_bits(taps).reshape(cout, kh, kw, num_words(cin))


def binary_conv2d(
    x_sign: npt.NDArray[np.int8],
    w_bits: npt.NDArray[np.uint64],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> npt.NDArray[np.int32]:
    """Binary convolution of ``x_sign`` (NHWC, +1/-1) with packed weights.

    ``w_bits`` has shape ``(Cout, KH, KW, ceil(Cin / 64))``.  Padding is zero padding of
    the +1/-1 input: padded taps contribute 0, so each output is the sum over the valid
    taps of +1/-1 products.  Returns int32 ``(N, Hout, Wout, Cout)``.
    """
    xs = np.asarray(x_sign).astype(np.int64)
    n, h, w, cin = xs.shape
    cout, kh, kw, _ = w_bits.shape
    wsign = unpack_bits(w_bits.reshape(cout * kh * kw, -1), cin).astype(np.int64)
    wsign = wsign.reshape(cout, kh, kw, cin)
    sh, sw = stride
    ph, pw = padding
    ho = conv_output_size(h, kh, sh, ph)
    wo = conv_output_size(w, kw, sw, pw)
    xp = np.zeros((n, h + 2 * ph, w + 2 * pw, cin), dtype=np.int64)
    xp[:, ph : ph + h, pw : pw + w, :] = xs
    out = np.zeros((n, ho, wo, cout), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
            out += patch @ wsign[:, i, j, :].T
    return out.astype(np.int32)


def threshold_sign(
    y: npt.NDArray[np.int32] | npt.NDArray[np.float32],
    thresh: npt.NDArray[np.float32],
    flip: npt.NDArray[np.bool_],
) -> npt.NDArray[np.uint64]:
    """Fused BatchNorm + sign: bit ``n`` of row ``m`` is ``(y[m, n] >= thresh[n]) ^ flip[n]``.

    Integer ``y`` is compared exactly (in float64); the result is packed along ``N``.
    """
    y = np.asarray(y)
    cmp = y.astype(np.float64) >= np.asarray(thresh, dtype=np.float32).astype(np.float64)
    bits = cmp ^ np.asarray(flip, dtype=bool)[None, :]
    return pack_bits(np.where(bits, 1.0, -1.0).astype(np.float32))


def scale_bias(
    y: npt.NDArray[np.int32], alpha: npt.NDArray[np.float32], beta: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """``alpha * float32(y) + beta`` in float32, one rounding after the multiply and one after
    the add."""
    yf = np.asarray(y).astype(np.float32)
    prod = (np.asarray(alpha, dtype=np.float32) * yf).astype(np.float32)
    return (prod + np.asarray(beta, dtype=np.float32)).astype(np.float32)


# erfc by the Chebyshev fit of Numerical Recipes (erfcc): relative error < 1.2e-7 for all z
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
         1.48851587, -0.82215223, 0.17087277)  # fmt: skip


def erfc64(x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """erfc in float64 numpy (numpy has none)."""
    z = np.abs(x).astype(np.float64)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.zeros_like(t)
    for c in reversed(_ERFC[1:]):
        poly = (poly + c) * t
    r = t * np.exp(-z * z + _ERFC[0] + poly)
    return np.where(x >= 0, r, 2.0 - r)


def erf(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``erf(x)`` in float32 (computed in float64): ``1 - erfc(x)``, and its Maclaurin series
    ``2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))`` for |x| < 0.5, where 1 - erfc cancels."""
    x64 = np.asarray(x, dtype=np.float64)
    x2, term, series = x64 * x64, x64.copy(), x64.copy()
    for n in range(1, 12):
        term = term * -x2 / n
        series = series + term / (2 * n + 1)
    small = 2.0 / np.sqrt(np.pi) * series
    return np.where(np.abs(x64) < 0.5, small, 1.0 - erfc64(x64)).astype(np.float32)


def gelu(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``GELU(x) = 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(-x / sqrt 2)`` (no cancellation for
    x << 0), float32 (computed in float64)."""
    return (0.5 * x * erfc64(-x / np.sqrt(2.0))).astype(np.float32)


def softmax(x: npt.NDArray[np.float32], *, log: bool = False, safe: bool = False
            ) -> npt.NDArray[np.float32]:  # fmt: skip
    """Softmax along the last axis, ``exp(x - max) / sum exp(x - max)`` (``log``: log-softmax,
    ``x - max - log sum exp(x - max)``), computed in float64. A row of -inf only gives zeros with
    ``safe`` (a fully masked attention row, as torch's math attention) and NaN without."""
    x64 = np.asarray(x, dtype=np.float64)
    mx = x64.max(axis=-1, keepdims=True)
    dead = np.isneginf(mx)
    with np.errstate(invalid="ignore"):
        z = x64 - mx
    s = np.exp(z).sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = z - np.log(s) if log else np.exp(z) / s
    if safe:
        y = np.where(dead, 0.0, y)
    return y.astype(np.float32)


def layer_norm(x: npt.NDArray[np.float32], weight: npt.NDArray[np.float32] | None,
               bias: npt.NDArray[np.float32] | None, eps: float) -> npt.NDArray[np.float32]:  # fmt: skip
    """Layer normalization along the last axis: ``(x - mean) / sqrt(var + eps) * w + b`` with
    the biased variance (Ba et al. 2016), computed in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    d = x64 - x64.mean(axis=-1, keepdims=True)
    y = d / np.sqrt((d * d).mean(axis=-1, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.astype(np.float32)


def clamp_(x: npt.NDArray[np.float32], lo: float, hi: float) -> npt.NDArray[np.float32]:
    """In place ``x = min(max(x, lo), hi)``; returns ``x``."""
    np.maximum(x, np.float32(lo), out=x)
    return np.minimum(x, np.float32(hi), out=x)


def sign(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``+1 where x >= 0 else -1`` as float32: both zeros give +1, NaN gives -1 (as
    :func:`pack_bits` reads them)."""
    return np.where(x >= 0, np.float32(1), np.float32(-1))


# ------------------------------------------------------------------ layouts made at load time


def pack_xnor_panels(b_bits: npt.NDArray[np.uint64], k: int) -> npt.NDArray[np.uint64]:
    """Rows ``(N, Kw)`` of packed bits -> panels ``(ceil(N / 32), Kw, 32)``: ``out[p, w, j]`` is
    word ``w`` of row ``32 p + j`` (zero past ``N``), padding bits past ``k`` cleared."""
    b = _masked(b_bits, k)
    n, kw = b.shape
    p = (n + 31) // 32
    full = np.zeros((p * 32, kw), dtype=np.uint64)
    full[:n] = b
    return np.ascontiguousarray(full.reshape(p, 32, kw).transpose(0, 2, 1))


def pack_vnni_panels(
    w_bits: npt.NDArray[np.uint64], k: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32]]:
    """Weight rows ``(N, Kw)`` -> the int8 kernels' layout and the column sums of the ±1 weights.

    Word ``wp[b, r]`` holds, in bit ``4 j + i``, the sign bit of column ``16 b + j`` at input
    ``4 r + i`` (zero past ``N`` and ``k``); ``wp`` is ``(ceil(N / 16), ceil(k / 64) * 16)``.
    ``wsum[n] = sum_k s(n, k)`` with ``s = ±1``.
    """
    n = w_bits.shape[0]
    s = unpack_bits(w_bits, k) > 0
    nb, kp = (n + 15) // 16, (k + 63) // 64 * 64
    full = np.zeros((nb * 16, kp), dtype=bool)
    full[:n, :k] = s
    arr = full.reshape(nb, 16, kp // 4, 4).transpose(0, 2, 1, 3).reshape(nb, kp // 4, 64)
    packed = np.packbits(arr, axis=2, bitorder="little")
    wp = np.ascontiguousarray(packed).view("<u8").astype(np.uint64).reshape(nb, kp // 4)
    wsum = (2 * s.sum(axis=1, dtype=np.int64) - k).astype(np.int32)
    return wp, wsum


# ------------------------------------------------------------------ int8 activations


def quantize_u8(
    x: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """Per row of a 2-D float32 array: uint8 ``q``, ``scale`` and ``zero`` with
    ``x ≈ scale * (q - zero)``.

    ``[lo, hi] = [min(x, 0), max(x, 0)]``, ``inv = 255 / (hi - lo)``, ``scale = (hi - lo) / 255``,
    ``zero = rint(-lo * inv)``, ``q = clip(rint(x * inv) + zero, 0, 255)`` (all in float32,
    round half to even); a row of zeros gets ``scale = 0``, ``zero = 0``.
    """
    x = np.asarray(x, dtype=np.float32)
    lo = np.minimum(np.min(x, axis=1, initial=0.0), 0).astype(np.float32)
    hi = np.maximum(np.max(x, axis=1, initial=0.0), 0).astype(np.float32)
    rng = (hi - lo).astype(np.float32)
    ok = rng > 0
    safe = np.where(ok, rng, np.float32(1))
    inv = np.where(ok, np.float32(255) / safe, np.float32(0)).astype(np.float32)
    scale = np.where(ok, safe / np.float32(255), np.float32(0)).astype(np.float32)
    zero = np.clip(np.rint((-lo * inv).astype(np.float32)), 0, 255).astype(np.int32)
    t = np.rint((x * inv[:, None]).astype(np.float32)).astype(np.int64) + zero[:, None]
    return np.clip(t, 0, 255).astype(np.uint8), scale, zero


def _u8_epilogue(
    acc: npt.NDArray[np.int64],
    zero: npt.NDArray[np.int32],
    scale: npt.NDArray[np.float32],
    wsum: npt.NDArray[np.int32],
    alpha: npt.NDArray[np.float32] | None,
    bias: npt.NDArray[np.float32] | None,
) -> npt.NDArray[np.float32]:
    d = (acc - zero.astype(np.int64)[:, None] * wsum.astype(np.int64)[None, :]).astype(np.float32)
    y = (d * scale[:, None]).astype(np.float32)
    if alpha is not None:
        y = (y * np.asarray(alpha, dtype=np.float32)).astype(np.float32)
    if bias is not None:
        y = (y + np.asarray(bias, dtype=np.float32)).astype(np.float32)
    return y


def binary_u8_gemm(
    x: npt.NDArray[np.float32],
    w_bits: npt.NDArray[np.uint64],
    k: int,
    alpha: npt.NDArray[np.float32] | None = None,
    bias: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """:func:`binary_float_gemm` with each row of ``x`` quantized to uint8 (:func:`quantize_u8`):
    ``y = ((float32(acc - zero * wsum) * scale) * alpha) + bias``, ``acc = q @ s.T`` exact."""
    q, scale, zero = quantize_u8(x)
    s = unpack_bits(w_bits, k).astype(np.int64)
    acc = q.astype(np.int64) @ s.T
    return _u8_epilogue(acc, zero, scale, s.sum(axis=1).astype(np.int32), alpha, bias)


def binary_u8_conv2d(
    x: npt.NDArray[np.float32],
    w_bits: npt.NDArray[np.uint64],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    alpha: npt.NDArray[np.float32] | None = None,
    bias: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Binary-weight conv of NHWC float ``x`` with each sample quantized to uint8 as one row
    (:func:`quantize_u8`), padded with its zero point (the value 0). ``w_bits`` holds rows of
    ``kh * kw * C`` bits in im2col order; returns float32 NHWC."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    q, scale, zero = quantize_u8(x.reshape(n, -1))
    qi = q.reshape(n, h, w, c).astype(np.int64)
    qp = np.broadcast_to(
        zero.astype(np.int64)[:, None, None, None], (n, h + 2 * ph, w + 2 * pw, c)
    ).copy()
    qp[:, ph : ph + h, pw : pw + w] = qi
    cols = im2col(qp.astype(np.float64), (kh, kw), (sh, sw), (0, 0)).astype(np.int64)
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    s = unpack_bits(w_bits, kh * kw * c).astype(np.int64)
    acc = cols @ s.T
    rows = np.repeat(np.arange(n), ho * wo)
    y = _u8_epilogue(acc, zero[rows], scale[rows], s.sum(axis=1).astype(np.int32), alpha, bias)
    return y.reshape(n, ho, wo, -1)


# ------------------------------------------------------------------ direct float convs


def direct_conv2d(
    x: npt.NDArray[np.float32],
    w_rows: npt.NDArray[np.float32],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    alpha: npt.NDArray[np.float32] | None = None,
    bias: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Dense conv of NHWC float ``x`` with weight rows ``(N, kh * kw * C)`` in im2col order,
    ``y = alpha * conv + bias``, accumulated in float64 (the kernels agree to float rounding)."""
    n, h, w, _ = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    cols = im2col(np.asarray(x, dtype=np.float32), (kh, kw), (sh, sw), (ph, pw))
    y = cols.astype(np.float64) @ np.asarray(w_rows, dtype=np.float64).T
    if alpha is not None:
        y = y * np.asarray(alpha, dtype=np.float64)
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64)
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    return y.astype(np.float32).reshape(n, ho, wo, -1)


def depthwise_conv2d(
    x: npt.NDArray[np.float32],
    w: npt.NDArray[np.float32],
    stride: tuple[int, int],
    padding: tuple[int, int],
    alpha: npt.NDArray[np.float32] | None = None,
    bias: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Depthwise conv of NHWC float32 ``x`` with ``w (kh, kw, C)``: per channel, the taps inside the
    image summed in order in float32 (``acc = acc + x * w``), then ``acc * alpha + bias``."""
    x = np.asarray(x, dtype=np.float32)
    n, h, wd, c = x.shape
    kh, kw = w.shape[:2]
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(wd, kw, sw, pw)
    acc = np.zeros((n, ho, wo, c), dtype=np.float32)
    oy, ox = np.arange(ho), np.arange(wo)
    for i in range(kh):
        iy = oy * sh - ph + i
        vy = (iy >= 0) & (iy < h)
        for j in range(kw):
            ix = ox * sw - pw + j
            vx = (ix >= 0) & (ix < wd)
            if not vy.any() or not vx.any():
                continue
            tap = x[:, iy[vy]][:, :, ix[vx]] * np.asarray(w[i, j], dtype=np.float32)
            sub = acc[:, vy][:, :, vx] + tap
            acc[np.ix_(np.arange(n), oy[vy], ox[vx])] = sub
    if alpha is not None:
        acc = (acc * np.asarray(alpha, dtype=np.float32)).astype(np.float32)
    if bias is not None:
        acc = (acc + np.asarray(bias, dtype=np.float32)).astype(np.float32)
    return acc
