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
    "im2col",
    "num_words",
    "pack_bits",
    "pack_conv_weight",
    "scale_bias",
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


def clamp_(x: npt.NDArray[np.float32], lo: float, hi: float) -> npt.NDArray[np.float32]:
    """In place ``x = min(max(x, lo), hi)``; returns ``x``."""
    np.maximum(x, np.float32(lo), out=x)
    return np.minimum(x, np.float32(hi), out=x)


def sign(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``+1 where x >= 0 else -1`` as float32: both zeros give +1, NaN gives -1 (as
    :func:`pack_bits` reads them)."""
    return np.where(x >= 0, np.float32(1), np.float32(-1))
