"""The load-time layouts and the newer kernels (XNOR GEMM on prepacked panels, direct and depthwise
convs, the int8-activation GEMM and conv) against the numpy reference on every dispatch path this
CPU can run, over shapes that are not multiples of the tiles; then packed models through these
paths against torch.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import onebit
import onebit.kernels as K
from onebit.kernels import reference as R
from onebit.methods import BNN, BinaryConnect
from onebit.packer import pack
from onebit.runtime import ops as rt

NOT_BUILT = "native kernels not built"
ISAS = K.available_isas() or [NOT_BUILT]


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest):
    if not K.native_available():
        if os.environ.get("ONEBIT_REQUIRE_NATIVE", "") == "1":  # CI: a missing build fails
            pytest.fail(NOT_BUILT)
        pytest.skip(NOT_BUILT)
    K.set_isa(request.param)
    yield request.param
    K.set_isa(None)
    K._native.set_u8_amx_min_rows(6)


def randn(g: np.random.Generator, *shape: int) -> np.ndarray:
    return g.standard_normal(shape).astype(np.float32)


GEMM_SHAPES = [
    (1, 1, 1),
    (3, 17, 65),
    (7, 33, 200),
    (16, 16, 64),
    (17, 70, 129),
    (37, 31, 300),
    (70, 100, 1000),
    (130, 16, 144),
]


@pytest.mark.parametrize(("m", "n", "k"), GEMM_SHAPES)
def test_xnor_gemm_panels(isa: str, m: int, n: int, k: int) -> None:
    g = np.random.default_rng(m * 1000 + n + k)
    a, b = R.pack_bits(randn(g, m, k)), R.pack_bits(randn(g, n, k))
    if k % 64:  # padding bits of B are ignored (cleared by the packing)
        b[:, -1] |= np.uint64(1 << 63)
    panels = K.xnor_panels(b, k)
    np.testing.assert_array_equal(panels, R.pack_xnor_panels(b, k))
    expected = R.xnor_gemm(a, b, k)
    np.testing.assert_array_equal(K.xnor_gemm_panels(a, panels, k, n), expected)
    np.testing.assert_array_equal(K.xnor_gemm_panels(a, panels, k, n, threads=2), expected)


def test_xnor_panels_reject_wrong_shapes() -> None:
    b = R.pack_bits(np.ones((5, 70), np.float32))
    with pytest.raises(K.KernelInputError):
        K.xnor_gemm_panels(b, K.xnor_panels(b, 70), 70, 40)


@pytest.mark.parametrize(("m", "n", "k"), GEMM_SHAPES)
def test_binary_u8_gemm(isa: str, m: int, n: int, k: int) -> None:
    g = np.random.default_rng(m * 7 + n * 3 + k)
    x = randn(g, m, k)
    x[0] = np.abs(x[0])  # a row without negatives (zero point 0)
    bits = R.pack_bits(randn(g, n, k))
    alpha, bias = randn(g, n), randn(g, n)
    wp, ws = K.vnni_panels(bits, k)
    expected = R.binary_u8_gemm(x, bits, k, alpha, bias)
    # on the amx path: AMX tiles from 1 row, from 6 (the default), never (VNNI only)
    for amx_rows in [1, 6, 1 << 30] if isa == "amx" else [6]:
        K._native.set_u8_amx_min_rows(amx_rows)
        got = K.binary_u8_gemm(x, wp, ws, n, alpha, bias)
        np.testing.assert_array_equal(got, expected, err_msg=f"amx_rows={amx_rows}")
        got = K.binary_u8_gemm(x, wp, ws, n, alpha, bias, threads=2)
        np.testing.assert_array_equal(got, expected, err_msg=f"amx_rows={amx_rows}")
        np.testing.assert_array_equal(K.binary_u8_gemm(x, wp, ws, n), R.binary_u8_gemm(x, bits, k))


def test_u8_gemm_is_close_to_the_exact_product() -> None:
    g = np.random.default_rng(5)
    x, wf = randn(g, 9, 300), randn(g, 20, 300)
    bits = R.pack_bits(wf)
    wp, ws = K.vnni_panels(bits, 300)
    exact = R.binary_float_gemm(x, bits, 300)
    approx = K.binary_u8_gemm(x, wp, ws, 20)
    # per-row step (hi - lo) / 255, errors add up like a random walk over K
    step = (x.max(1) - np.minimum(x.min(1), 0)) / 255
    assert np.all(np.abs(approx - exact) <= 4 * step[:, None] * np.sqrt(300))


def test_quantize_u8_matches_reference_and_edge_rows(isa: str) -> None:
    g = np.random.default_rng(6)
    x = randn(g, 6, 1000)
    x[1] = 0.0  # all zeros: scale 0
    x[2] = np.abs(x[2])  # no negatives
    x[3] = -np.abs(x[3])  # no positives
    q, sc, zp = K.quantize_u8(x)
    q2, sc2, zp2 = R.quantize_u8(x)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(sc, sc2)
    np.testing.assert_array_equal(zp, zp2)
    assert sc[1] == 0 and zp[2] == 0 and zp[3] == 255
    np.testing.assert_allclose(
        sc[:, None] * (q.astype(np.float32) - zp[:, None]), x, atol=float(sc.max())
    )


CONV_CASES = [
    # batch, H, W, Cin, Cout, kernel, stride, padding
    (1, 5, 6, 3, 16, (3, 3), (1, 1), (1, 1)),
    (2, 8, 8, 16, 32, (3, 3), (2, 2), (1, 1)),
    (3, 7, 5, 20, 70, (3, 3), (1, 1), (0, 0)),
    (1, 4, 4, 64, 10, (1, 1), (1, 1), (0, 0)),
    (2, 9, 9, 8, 17, (3, 2), (2, 1), (1, 0)),
    (1, 20, 19, 5, 33, (3, 3), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_direct_and_u8_conv(isa: str, case: tuple) -> None:
    b, h, w, cin, cout, ks, st, pd = case
    g = np.random.default_rng(cin * cout + h)
    x = randn(g, b, h, w, cin)
    k = ks[0] * ks[1] * cin
    rows = np.where(randn(g, cout, k) >= 0, 1.0, -1.0).astype(np.float32)
    alpha, bias = np.abs(randn(g, cout)), randn(g, cout)
    got = K.direct_conv2d(x, K.direct_conv_weight(rows), cout, ks, st, pd, alpha, bias)
    ref = R.direct_conv2d(x, rows, ks, st, pd, alpha, bias)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    floats = randn(g, cout, k)  # float weights too (the sums are float32 sums)
    got = K.direct_conv2d(x, K.direct_conv_weight(floats), cout, ks, st, pd, threads=2)
    np.testing.assert_allclose(got, R.direct_conv2d(x, floats, ks, st, pd), rtol=1e-4, atol=1e-3)
    bits = R.pack_bits(rows)
    wp, ws = K.vnni_panels(bits, k)
    expected = R.binary_u8_conv2d(x, bits, ks, st, pd, alpha, bias)
    np.testing.assert_array_equal(
        K.binary_u8_conv2d(x, wp, ws, cout, ks, st, pd, alpha, bias), expected
    )
    np.testing.assert_array_equal(
        K.binary_u8_conv2d(x, wp, ws, cout, ks, st, pd, alpha, bias, threads=2), expected
    )


@pytest.mark.parametrize("case", CONV_CASES)
def test_depthwise_conv(isa: str, case: tuple) -> None:
    b, h, w, c, _, ks, st, pd = case
    g = np.random.default_rng(c + h)
    x, wt = randn(g, b, h, w, c), randn(g, ks[0], ks[1], c)
    alpha, bias = randn(g, c), randn(g, c)
    ref = R.depthwise_conv2d(x, wt, st, pd, alpha, bias)
    np.testing.assert_array_equal(K.depthwise_conv2d(x, wt, st, pd, alpha, bias), ref)
    np.testing.assert_array_equal(K.depthwise_conv2d(x, wt, st, pd, alpha, bias, threads=2), ref)


def test_new_ops_fall_back_to_the_reference(monkeypatch) -> None:
    g = np.random.default_rng(8)
    x, bits = randn(g, 5, 100), R.pack_bits(randn(g, 19, 100))
    wp, ws = K.vnni_panels(bits, 100)
    panels = K.xnor_panels(bits, 100)
    a = R.pack_bits(x)
    xi = randn(g, 2, 6, 6, 4)
    rows = np.where(randn(g, 9, 36) >= 0, 1.0, -1.0).astype(np.float32)
    cwp, cws = K.vnni_panels(R.pack_bits(rows), 36)
    native = (
        K.binary_u8_gemm(x, wp, ws, 19),
        K.xnor_gemm_panels(a, panels, 100, 19),
        K.binary_u8_conv2d(xi, cwp, cws, 9, 3, 1, 1),
        K.depthwise_conv2d(xi, randn(np.random.default_rng(1), 3, 3, 4), 1, 1),
    )
    monkeypatch.setattr(K, "_native", None)
    fallback = (
        K.binary_u8_gemm(x, wp, ws, 19),
        K.xnor_gemm_panels(a, panels, 100, 19),
        K.binary_u8_conv2d(xi, cwp, cws, 9, 3, 1, 1),
        K.depthwise_conv2d(xi, randn(np.random.default_rng(1), 3, 3, 4), 1, 1),
    )
    for n, f in zip(native, fallback, strict=True):
        np.testing.assert_array_equal(n, f)


def test_isa_levels_are_ordered() -> None:
    if not K.native_available():
        if os.environ.get("ONEBIT_REQUIRE_NATIVE", "") == "1":
            pytest.fail(NOT_BUILT)
        pytest.skip(NOT_BUILT)
    levels = ["amx", "avx512_vnni", "avx512", "avx2", "generic"]
    isas = K.available_isas()
    assert isas == [i for i in levels if i in isas]  # best first, each level needs the next
    assert isas == levels[levels.index(isas[0]) :]


# ------------------------------------------------------------------ packed models


def _model(name, shape, kw, method):
    torch.manual_seed(0)
    model = onebit.models.build(name, shape, 10, act=method.hidden_activation(), **kw)
    onebit.binarize_(model, method)
    g = torch.Generator().manual_seed(0)
    for mod in model.modules():  # BN statistics that keep activations in a sane range
        if isinstance(mod, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            mod.running_mean.copy_(0.1 * torch.randn(mod.num_features, generator=g))
            mod.running_var.copy_(1 + torch.rand(mod.num_features, generator=g))
    return model.eval()


MODELS = [
    ("resnet20", (3, 16, 16), {"width": 8}),
    ("mobilenet_small", (3, 16, 16), {"stem": 8, "channels": (8, 16, 16), "strides": (2, 1, 1)}),
    ("mlp", (1, 12, 12), {"hidden": [70, 33]}),
]


@pytest.mark.parametrize(("name", "shape", "kw"), MODELS)
def test_packed_models_through_every_path(isa, name, shape, kw) -> None:
    """Exact path (direct/depthwise convs, panels) equals torch; int8 activations give the same
    bits on every ISA path and stay close to the exact outputs."""
    model = _model(name, shape, kw, BinaryConnect())
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    packed = pack(model, shape)
    exact = packed(x.numpy())
    np.testing.assert_allclose(exact, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    rt.set_activations(packed, "int8")
    approx = packed(x.numpy())
    assert np.abs(approx - exact).max() <= 0.1 * np.abs(exact).max()
    K.set_isa("generic")
    np.testing.assert_array_equal(packed(x.numpy()), approx)
    K.set_isa(isa)


def test_xnor_mlp_uses_panels_and_matches_torch(isa) -> None:
    model = _model("mlp", (1, 12, 12), {"hidden": [70, 33]}, BNN())
    x = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x).numpy()
    packed = pack(model, (1, 12, 12))
    np.testing.assert_allclose(packed(x.numpy()), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert any(key[1] == "xnor_panels" for key in packed.cache if isinstance(key, tuple)) == (
        isa in ("avx512", "avx512_vnni", "amx")
    )


def test_activations_option(monkeypatch) -> None:
    model = _model("mlp", (1, 12, 12), {"hidden": [20]}, BinaryConnect())
    packed = pack(model, (1, 12, 12))
    assert rt.get_activations(packed) == "float"
    with pytest.raises(ValueError):
        rt.set_activations(packed, "int4")
    monkeypatch.setenv("ONEBIT_ACTIVATIONS", "int8")
    fresh = pack(model, (1, 12, 12))
    assert rt.get_activations(fresh) == "int8"
