"""onebit.kernels: the numpy reference against plain float math, and every native kernel
against the reference on every dispatch path this CPU can run.

Without the C extension the native-path tests are skipped, unless ONEBIT_REQUIRE_NATIVE=1
(CI) makes them fail.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import onebit.kernels as K
from onebit.kernels import reference as R

REQUIRE_NATIVE = os.environ.get("ONEBIT_REQUIRE_NATIVE", "") == "1"
NOT_BUILT = "native kernels not built"
ISAS = K.available_isas() or [NOT_BUILT]

KS = (1, 63, 64, 65, 1000)
NS = (1, 7, 65)
MS = (1, 7, 16)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(g: np.random.Generator, *shape: int) -> np.ndarray:
    return g.standard_normal(shape).astype(np.float32)


def signs(bits: np.ndarray, k: int) -> np.ndarray:
    """+1/-1 float64 matrix of packed rows."""
    return R.unpack_bits(bits, k).astype(np.float64)


def pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


def _require_native() -> None:
    if not K.native_available():
        msg = f"{NOT_BUILT} (onebit.kernels._native cannot be imported)"
        if REQUIRE_NATIVE:
            pytest.fail(f"ONEBIT_REQUIRE_NATIVE=1 but the {msg}.")
        pytest.skip(f"{msg}; set ONEBIT_REQUIRE_NATIVE=1 to fail instead of skipping.")


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest):
    """Run the test on one forced dispatch path, then restore automatic selection."""
    _require_native()
    K.set_isa(request.param)
    assert K.get_isa() == request.param
    yield request.param
    K.set_isa(None)


# ----------------------------------------------------------------------------- reference


def test_reference_pack_bits_layout() -> None:
    x = np.full((2, 70), -1.0, dtype=np.float32)
    x[0, [0, 5, 63, 64, 69]] = 1.0
    x[1, 3] = 0.0  # sign(0) = +1
    x[1, 4] = -0.0
    x[1, 6] = np.nan  # NaN >= 0 is False
    bits = R.pack_bits(x)
    assert bits.dtype == np.uint64 and bits.shape == (2, 2)
    assert int(bits[0, 0]) == (1 << 0) | (1 << 5) | (1 << 63)
    assert int(bits[0, 1]) == (1 << 0) | (1 << 5)  # padding bits 6..63 are zero
    assert int(bits[1, 0]) == (1 << 3) | (1 << 4)
    assert int(bits[1, 1]) == 0
    np.testing.assert_array_equal(R.unpack_bits(bits, 70), np.where(x >= 0, 1, -1))


@pytest.mark.parametrize("k", KS)
def test_reference_xnor_gemm_is_a_pm1_matmul(k: int) -> None:
    g = rng(k)
    a = R.pack_bits(randn(g, 7, k))
    b = R.pack_bits(randn(g, 5, k))
    expected = signs(a, k) @ signs(b, k).T  # (2a-1) @ (2b-1).T
    np.testing.assert_array_equal(R.xnor_gemm(a, b, k), expected.astype(np.int32))
    if k % 64:  # padding bits are ignored even when set
        dirty = a.copy()
        dirty[:, -1] |= np.uint64(1 << 63)
        np.testing.assert_array_equal(R.xnor_gemm(dirty, b, k), expected.astype(np.int32))


def test_reference_binary_float_gemm_is_a_float_matmul() -> None:
    g = rng(1)
    x, wf = randn(g, 6, 100), randn(g, 9, 100)
    alpha, bias = randn(g, 9), randn(g, 9)
    wb = np.where(wf >= 0, 1.0, -1.0)
    expected = (x.astype(np.float64) @ wb.T) * alpha + bias
    got = R.binary_float_gemm(x, R.pack_bits(wf), 100, alpha, bias)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("stride", "padding"), [(1, 0), (1, 1), (2, 1), ((2, 1), (0, 2))])
def test_reference_conv_is_torch_conv_with_zero_padding(stride, padding) -> None:
    g = rng(2)
    x, w = randn(g, 2, 7, 6, 5), randn(g, 4, 5, 3, 2)  # NHWC input, OIHW weights
    xs = np.where(x >= 0, 1, -1).astype(np.int8)
    got = R.binary_conv2d(xs, R.pack_conv_weight(w), pair(stride), pair(padding))
    expected = F.conv2d(
        torch.from_numpy(xs.astype(np.float32)).permute(0, 3, 1, 2),
        torch.from_numpy(np.where(w >= 0, 1.0, -1.0).astype(np.float32)),
        stride=stride,
        padding=padding,
    ).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(got, expected.numpy().astype(np.int32))


def test_reference_threshold_and_scale_bias() -> None:
    y = np.array([[-3, 0, 2, 7], [5, -1, 1, 2]], dtype=np.int32)
    thresh = np.array([-3.0, 0.5, 2.0, np.nan], dtype=np.float32)
    flip = np.array([False, True, False, True])
    bits = R.threshold_sign(y, thresh, flip)
    expected = (y >= thresh) ^ flip
    np.testing.assert_array_equal(R.unpack_bits(bits, 4) > 0, expected)
    alpha, beta = np.array([0.5, -2, 1, 3], np.float32), np.array([1, 0, -1, 0.25], np.float32)
    np.testing.assert_array_equal(R.scale_bias(y, alpha, beta), alpha * y + beta)


# ---------------------------------------------------------------------- python wrapper


def test_wrapper_falls_back_to_reference_and_warns_once(monkeypatch, caplog) -> None:
    monkeypatch.setattr(K, "_native", None)
    monkeypatch.setattr(K, "_warned", False)
    g = rng(3)
    x = randn(g, 5, 70)
    with caplog.at_level(logging.WARNING, logger="onebit.kernels"):
        bits = K.pack_bits(x)
        out = K.xnor_gemm(bits, bits, 70)
    np.testing.assert_array_equal(bits, R.pack_bits(x))
    np.testing.assert_array_equal(out, R.xnor_gemm(bits, bits, 70))
    warnings = [r for r in caplog.records if "not built" in r.getMessage()]
    assert len(warnings) == 1
    assert K.available_isas() == [] and K.get_isa() == "reference"


def test_wrapper_rejects_bad_input() -> None:
    g = rng(4)
    with pytest.raises(K.KernelInputError, match="float32"):
        K.pack_bits(np.zeros((2, 3)))
    bits = R.pack_bits(randn(g, 2, 70))
    with pytest.raises(K.KernelInputError, match="words"):
        K.xnor_gemm(bits, bits, 200)
    with pytest.raises(K.KernelInputError, match="uint64"):
        K.xnor_gemm(bits.astype(np.int64), bits, 70)
    with pytest.raises(K.KernelInputError, match="alpha"):
        K.binary_float_gemm(randn(g, 2, 70), bits, alpha=np.ones(3, np.float32))
    with pytest.raises(K.KernelInputError, match="in_channels"):
        K.binary_conv2d(np.zeros((1, 4, 4, 1), np.uint64), np.zeros((1, 3, 3, 1), np.uint64))
    with pytest.raises(K.KernelInputError):
        K.set_isa("sse9")
    with pytest.raises(K.KernelInputError, match="threads"):
        K.pack_bits(randn(g, 2, 3), threads=0)


def test_native_extension_is_built() -> None:
    _require_native()
    assert K.available_isas()[-1] == "generic"
    assert K.get_isa() == K.available_isas()[0]  # the best path by default


# ------------------------------------------------------------------------ native paths


@pytest.mark.parametrize("k", (*KS, 130, 1024))
def test_pack_bits(isa: str, k: int) -> None:
    g = rng(k)
    x = randn(g, 7, k)
    x[0, : min(k, 5)] = [0.0, -0.0, np.nan, np.inf, -np.inf][: min(k, 5)]
    np.testing.assert_array_equal(K.pack_bits(x), R.pack_bits(x))


@pytest.mark.parametrize(("m", "n", "k"), list(itertools.product(MS, NS, KS)))
def test_xnor_gemm(isa: str, m: int, n: int, k: int) -> None:
    g = rng(m * 10007 + n * 101 + k)
    a = R.pack_bits(randn(g, m, k))
    b = R.pack_bits(randn(g, n, k))
    np.testing.assert_array_equal(K.xnor_gemm(a, b, k), R.xnor_gemm(a, b, k))


@pytest.mark.parametrize(("m", "n", "k"), [(13, 70, 1000), (37, 97, 5000), (64, 256, 4096)])
def test_xnor_gemm_tiles_and_dirty_padding(isa: str, m: int, n: int, k: int) -> None:
    g = rng(5)
    a = g.integers(0, 2**64, size=(m, R.num_words(k)), dtype=np.uint64)
    b = g.integers(0, 2**64, size=(n, R.num_words(k)), dtype=np.uint64)  # padding bits set
    np.testing.assert_array_equal(K.xnor_gemm(a, b, k), R.xnor_gemm(a, b, k))


def _assert_float_gemm_close(got: np.ndarray, expected: np.ndarray, k: int) -> None:
    scale = np.sqrt(max(k, 1))
    np.testing.assert_allclose(got, expected, rtol=1e-4 * scale, atol=1e-3 * scale)


@pytest.mark.parametrize(("m", "n", "k"), list(itertools.product(MS, NS, KS)))
def test_binary_float_gemm(isa: str, m: int, n: int, k: int) -> None:
    g = rng(m * 10007 + n * 101 + k)
    x = randn(g, m, k)
    w = R.pack_bits(randn(g, n, k))
    _assert_float_gemm_close(K.binary_float_gemm(x, w, k), R.binary_float_gemm(x, w, k), k)


@pytest.mark.parametrize(("m", "n", "k"), [(5, 9, 65), (70, 130, 5000), (1, 300, 2000)])
def test_binary_float_gemm_scale_bias_and_blocking(isa: str, m: int, n: int, k: int) -> None:
    g = rng(6)
    x = randn(g, m, k)
    w = g.integers(0, 2**64, size=(n, R.num_words(k)), dtype=np.uint64)  # dirty padding
    alpha, bias = randn(g, n), randn(g, n)
    got = K.binary_float_gemm(x, w, k, alpha, bias)
    _assert_float_gemm_close(got, R.binary_float_gemm(x, w, k, alpha, bias), k)
    got_b = K.binary_float_gemm(x, w, bias=bias)
    _assert_float_gemm_close(got_b, R.binary_float_gemm(x, w, k, None, bias), k)


CONV_CASES = [
    # (batch, H, W, Cin, Cout, KH, KW, stride, padding)
    (1, 6, 5, 3, 4, 3, 3, 1, 0),
    (1, 6, 5, 3, 4, 3, 3, 1, 1),
    (2, 7, 7, 65, 33, 3, 3, 2, 1),
    (1, 8, 6, 65, 7, 3, 3, 2, 0),
    (1, 5, 9, 64, 70, 1, 1, 1, 0),
    (2, 9, 8, 130, 5, 2, 3, (2, 1), (1, 2)),
    (1, 4, 4, 1, 1, 5, 5, 1, 2),
    # channels that do not fill words: taps packed densely (ResNet-20's 16 and 32 channels)
    (2, 8, 8, 16, 16, 3, 3, 1, 1),
    (1, 9, 9, 32, 64, 3, 3, 2, 1),
    (1, 7, 6, 63, 9, 3, 3, 1, 1),
    (1, 5, 5, 100, 3, 3, 3, 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_binary_conv2d(isa: str, case: tuple) -> None:
    nb, h, w, cin, cout, kh, kw, stride, padding = case
    g = rng(h * w * cin + cout)
    x = randn(g, nb, h, w, cin)
    wbits = R.pack_conv_weight(randn(g, cout, cin, kh, kw))
    xs = np.where(x >= 0, 1, -1).astype(np.int8)
    expected = R.binary_conv2d(xs, wbits, pair(stride), pair(padding))
    got = K.binary_conv2d(x, wbits, stride=stride, padding=padding)
    np.testing.assert_array_equal(got, expected)
    # pre-packed input with dirty channel padding, 2-D weights with kernel_size
    xbits = R.pack_bits(x.reshape(-1, cin)).reshape(nb, h, w, -1)
    if cin % 64:
        xbits[..., -1] |= np.uint64(1 << 63)
    got2 = K.binary_conv2d(
        xbits,
        wbits.reshape(cout, -1),
        in_channels=cin,
        kernel_size=(kh, kw),
        stride=stride,
        padding=padding,
    )
    np.testing.assert_array_equal(got2, expected)


@pytest.mark.parametrize("n", (*NS, 64, 200))
@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_threshold_sign(isa: str, n: int, dtype: type) -> None:
    g = rng(n)
    y = g.integers(-50, 50, size=(7, n)).astype(dtype)
    thresh = np.round(randn(g, n) * 20, 1)
    thresh[::2] = np.round(thresh[::2])  # integral thresholds ...
    y[0, ::2] = thresh[::2].astype(dtype)  # ... met exactly
    thresh[: min(n, 3)] = [np.nan, np.inf, -np.inf][: min(n, 3)]
    if n > 4:
        thresh[3:5] = [3e9, -3e9]  # beyond the int32 range
    flip = g.integers(0, 2, size=n).astype(bool)
    got = K.threshold_sign(y, thresh, flip)
    np.testing.assert_array_equal(got, R.threshold_sign(y, thresh, flip))
    np.testing.assert_array_equal(
        K.threshold_sign(y, thresh), R.threshold_sign(y, thresh, np.zeros(n, bool))
    )


@pytest.mark.parametrize("n", (*NS, 200))
def test_scale_bias(isa: str, n: int) -> None:
    g = rng(n)
    y = g.integers(-3000, 3000, size=(7, n)).astype(np.int32)
    alpha, beta = randn(g, n), randn(g, n)
    np.testing.assert_array_equal(K.scale_bias(y, alpha, beta), R.scale_bias(y, alpha, beta))


@pytest.mark.parametrize("n", (0, 1, 63, 1000, 300_001))
@pytest.mark.parametrize("threads", (1, 2))
def test_clamp_in_place(n: int, threads: int) -> None:
    _require_native()
    g = rng(n)
    x = (3 * randn(g, n)).astype(np.float32)
    x[: min(n, 3)] = [np.nan, -np.inf, np.inf][: min(n, 3)]
    expected = R.clamp_(x.copy(), -1.0, 1.0)
    out = K.clamp_(x, -1.0, 1.0, threads=threads)
    assert out is x  # in place
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(K.KernelInputError, match="C-contiguous, writable float32"):
        K.clamp_(np.zeros(4), -1.0, 1.0)


@pytest.mark.parametrize(
    "shape,ks,stride,pad",
    [
        ((1, 5, 7, 3), (3, 3), (1, 1), (1, 1)),
        ((2, 4, 4, 1), (1, 1), (1, 1), (0, 0)),
        ((3, 9, 6, 17), (2, 3), (2, 1), (0, 2)),
        ((1, 6, 6, 64), (5, 5), (2, 2), (2, 2)),
        ((2, 3, 3, 5), (3, 3), (1, 1), (2, 2)),  # padding wider than the image: zero rows
        ((1, 1, 1, 2), (1, 1), (3, 3), (0, 0)),
    ],
)
@pytest.mark.parametrize("threads", (1, 2))
def test_im2col_equals_reference(isa: str, shape, ks, stride, pad, threads: int) -> None:
    x = randn(rng(13), *shape)
    expected = R.im2col(x, ks, stride, pad)
    got = K.im2col(x, ks, stride, pad, threads=threads)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    # and it is what a convolution multiplies: patches @ weights == F.conv2d
    wt = randn(rng(14), 4, shape[3], *ks)
    y = got @ wt.transpose(0, 2, 3, 1).reshape(4, -1).T
    ref = F.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(wt), stride=stride, padding=pad
    ).permute(0, 2, 3, 1)
    np.testing.assert_allclose(y.reshape(ref.shape), ref.numpy(), rtol=1e-4, atol=1e-4)


def test_im2col_rejects_bad_geometry() -> None:
    x = np.zeros((1, 2, 2, 3), np.float32)
    with pytest.raises(K.KernelInputError, match="does not fit"):
        K.im2col(x, 3)
    with pytest.raises(K.KernelInputError, match="stride >= 1"):
        K.im2col(x, 1, stride=0)
    with pytest.raises(K.KernelInputError, match="4-D"):
        K.im2col(x[0], 1)


def test_threads_agree(isa: str) -> None:
    g = rng(7)
    a = R.pack_bits(randn(g, 64, 700))
    b = R.pack_bits(randn(g, 300, 700))
    x = randn(g, 33, 700)
    x_img = randn(g, 2, 12, 12, 70)
    wc = R.pack_conv_weight(randn(g, 40, 70, 3, 3))
    y = g.integers(-99, 99, size=(300, 500)).astype(np.int32)
    th = randn(g, 500)
    ops = {
        "pack": lambda t: K.pack_bits(randn(rng(8), 300, 700), threads=t),
        "xnor": lambda t: K.xnor_gemm(a, b, 700, threads=t),
        "float": lambda t: K.binary_float_gemm(x, b, threads=t),
        "conv": lambda t: K.binary_conv2d(x_img, wc, padding=1, threads=t),
        "thresh": lambda t: K.threshold_sign(y, th, threads=t),
    }
    for name, op in ops.items():
        one, two = op(1), op(2)
        assert np.array_equal(one, two), name
    old = K.get_num_threads()
    try:
        K.set_num_threads(2)
        assert K.get_num_threads() == 2
        np.testing.assert_array_equal(K.xnor_gemm(a, b, 700), ops["xnor"](1))
    finally:
        K.set_num_threads(0)
    assert K.get_num_threads() == old


def _xnor_in_child(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    return K.xnor_gemm(a, b, k, threads=2)


def test_pool_serves_many_callers_and_more_threads_than_cpus(isa: str) -> None:
    """The thread pool runs one job at a time: callers from other Python threads (the GIL is
    released in the kernels) run serially rather than wait or mix their parts, and asking for
    more threads than there are CPUs still splits the work exactly once."""
    g = rng(10)
    a, b = R.pack_bits(randn(g, 40, 700)), R.pack_bits(randn(g, 300, 700))
    expected = R.xnor_gemm(a, b, 700)
    np.testing.assert_array_equal(
        K.xnor_gemm(a, b, 700, threads=(os.cpu_count() or 1) + 3), expected
    )
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda t: K.xnor_gemm(a, b, 700, threads=1 + t % 3), range(48)))
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_pool_in_a_forked_child(isa: str) -> None:
    """A forked child inherits none of the parent's pool threads; its pool starts its own
    instead of waiting forever for workers that do not exist there."""
    g = rng(11)
    a, b = R.pack_bits(randn(g, 16, 300)), R.pack_bits(randn(g, 256, 300))
    K.xnor_gemm(a, b, 300, threads=2)  # the parent's workers now exist
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_xnor_in_child, (a, b, 300)).get(timeout=120)
    np.testing.assert_array_equal(got, R.xnor_gemm(a, b, 300))


def test_time_xnor_gemm(isa: str) -> None:
    """The benchmarks' in-C timer runs the same kernel: one time per call, output exact."""
    g = rng(12)
    a, b = R.pack_bits(randn(g, 7, 65)), R.pack_bits(randn(g, 9, 65))
    out = np.zeros((7, 9), np.int32)
    times = K._native.time_xnor_gemm(a, b, out, 7, 9, 65, 2, 5)
    assert len(times) == 5 and all(t > 0 for t in times)
    np.testing.assert_array_equal(out, R.xnor_gemm(a, b, 65))
    with pytest.raises(ValueError, match="buffer has"):
        K._native.time_xnor_gemm(a, b, out[:3], 7, 9, 65, 1, 5)


def test_wrapper_float_ops_match_torch(isa: str) -> None:
    """End to end: the binary float GEMM equals F.linear with +1/-1 weights."""
    g = rng(9)
    x, wf = randn(g, 16, 300), randn(g, 40, 300)
    expected = F.linear(torch.from_numpy(x), torch.from_numpy(np.where(wf >= 0, 1.0, -1.0)).float())
    got = K.binary_float_gemm(x, K.pack_bits(wf))
    _assert_float_gemm_close(got, expected.numpy(), 300)
