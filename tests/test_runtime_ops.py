"""Each general op of the runtime (onebit.runtime.generic) against torch, on its own.

The runtime ops are numpy; the references are the torch functions a captured graph calls. Every
op kind of GENERIC_OPS and every function of its unary and binary tables has a case here, and a
test fails when a new one is added without one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from onebit import kernels
from onebit.runtime import Op, PackedModel
from onebit.runtime.generic import BINARY, GENERIC_OPS, UNARY

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 5, 6, 4)).astype(np.float32)
T = torch.from_numpy(X)


def _run(kind: str, attrs: dict, *inputs: np.ndarray, **tensors: np.ndarray) -> np.ndarray:
    m = PackedModel([], dict(tensors), {})
    op = Op(kind, "op", ["x"] * len(inputs), attrs, {k: k for k in tensors})
    return np.asarray(GENERIC_OPS[kind](m, op, *inputs))


UNARY_REF = {
    "relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "silu": F.silu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid, "exp": torch.exp, "neg": torch.neg,
    "sqrt": lambda t: torch.sqrt(t.abs()), "rsqrt": lambda t: torch.rsqrt(t.abs() + 0.1),
    "erf": torch.erf, "abs": torch.abs, "log": lambda t: torch.log(t.abs() + 0.1),
}  # fmt: skip
# the runtime computes sqrt/rsqrt/log of what the reference feeds it
UNARY_IN = {"sqrt": np.abs, "rsqrt": lambda x: np.abs(x) + np.float32(0.1),
            "log": lambda x: np.abs(x) + np.float32(0.1)}  # fmt: skip

BINARY_REF = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "pow": lambda a, b: torch.pow(a.abs() + 0.5, b), "maximum": torch.maximum,
    "minimum": torch.minimum, "eq": lambda a, b: (a == b).float(),
    "ne": lambda a, b: (a != b).float(), "lt": lambda a, b: (a < b).float(),
    "le": lambda a, b: (a <= b).float(), "gt": lambda a, b: (a > b).float(),
    "ge": lambda a, b: (a >= b).float(),
}  # fmt: skip


def test_every_function_has_a_reference():
    assert set(UNARY) == set(UNARY_REF)
    assert set(BINARY) == set(BINARY_REF)


@pytest.mark.parametrize("fn", sorted(UNARY))
def test_unary(fn):
    x = X * 4  # the range where GELU, erf and sigmoid bend
    got = _run("unary", {"fn": fn}, UNARY_IN.get(fn, lambda v: v)(x))
    ref = UNARY_REF[fn](torch.from_numpy(x)).numpy()
    # torch's own float32 GELU/erf are off by up to ~1e-6 (see the next test)
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6)
    assert got.dtype == np.float32


@pytest.mark.parametrize("native", [True, False], ids=["native", "reference"])
def test_erf_and_gelu_are_float32_accurate(native, monkeypatch):
    """Against float64 math.erf/erfc: the runtime's erf and GELU (numpy has no erf; the kernels
    call libm, their numpy reference a Chebyshev fit) are within a relative 1e-6 of the exact
    value (or 1e-9) everywhere, GELU's negative tail included (float32's rounding of x / sqrt 2
    alone moves erfc by ~1e-6 relative there)."""
    import math

    from onebit import kernels

    if not native:
        monkeypatch.setattr(kernels, "_native", None)
    x = np.linspace(-9, 9, 40001).astype(np.float32)
    x64 = x.astype(np.float64)
    for fn, exact in (
        ("erf", np.array([math.erf(v) for v in x64])),
        ("gelu", np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x64])),
    ):
        err = np.abs(_run("unary", {"fn": fn}, x) - exact)
        assert (err <= 1e-6 * np.abs(exact) + 1e-9).all(), (fn, float(err.max()))
        assert err.max() < 4e-7  # torch's own float32 GELU is off by up to ~1.1e-6 here


@pytest.mark.parametrize("fn", sorted(BINARY))
def test_binary_of_two_values_and_of_a_constant(fn):
    a = X.copy()
    b = RNG.standard_normal((1, 1, 6, 4)).astype(np.float32)
    a[0, 0] = b[0, 0]  # some equal elements for the comparisons
    if fn == "pow":
        a = np.abs(a) + np.float32(0.5)
        ta = torch.from_numpy(a)
        ref = torch.pow(ta, torch.from_numpy(b)).numpy()
    else:
        ref = BINARY_REF[fn](torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(_run("binary", {"fn": fn}, a, b), ref, rtol=1e-6, atol=1e-7)
    got = _run("binary", {"fn": fn, "other_first": False}, a, other=b)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


def test_layout_ops():
    np.testing.assert_array_equal(
        _run("transpose", {"perm": [0, 2, 1, 3]}, X), T.permute(0, 2, 1, 3).numpy()
    )
    np.testing.assert_array_equal(_run("reshape", {"shape": [-1, 20, 6]}, X),
                                  T.reshape(-1, 20, 6).numpy())  # fmt: skip
    y = X[:, :1]
    np.testing.assert_array_equal(
        _run("expand", {"shape": [2, -1, 5, -1, -1]}, y),
        torch.from_numpy(y).expand(2, -1, 5, -1, -1).numpy(),
    )
    np.testing.assert_array_equal(_run("cat", {"axis": 2}, X, X[:, :, :2]),
                                  torch.cat([T, T[:, :, :2]], 2).numpy())  # fmt: skip
    np.testing.assert_array_equal(_run("cast", {"dtype": "int64"}, X * 3),
                                  (T * 3).to(torch.int64).numpy())  # fmt: skip


@pytest.mark.parametrize("fn", ["mean", "sum", "amax", "amin"])
@pytest.mark.parametrize("keepdim", [False, True])
def test_reduce(fn, keepdim):
    ref = getattr(torch, fn)(T, dim=(1, 3), keepdim=keepdim).numpy()
    got = _run("reduce", {"fn": fn, "axes": [1, 3], "keepdim": keepdim}, X)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("log", [False, True])
def test_softmax(log):
    ref = (F.log_softmax if log else F.softmax)(T, dim=-1).numpy()
    np.testing.assert_allclose(_run("softmax", {"axis": -1, "log": log}, X), ref, atol=1e-6)


@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm(affine):
    w, b = (
        RNG.standard_normal((6, 4)).astype(np.float32),
        RNG.standard_normal((6, 4)).astype(np.float32),
    )
    tw, tb = (torch.from_numpy(w), torch.from_numpy(b)) if affine else (None, None)
    ref = F.layer_norm(T, (6, 4), tw, tb, 1e-5).numpy()
    tensors = {"weight": w, "bias": b} if affine else {}
    got = _run("layer_norm", {"axes": [2, 3], "eps": 1e-5}, X, **tensors)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_matmul_where_and_constant():
    a, b = X.reshape(3, 5, 24), RNG.standard_normal((24, 7)).astype(np.float32)
    np.testing.assert_allclose(_run("matmul", {}, a, other=b),
                               (torch.from_numpy(a) @ torch.from_numpy(b)).numpy(), rtol=1e-5, atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(_run("matmul", {}, a, a.transpose(0, 2, 1).copy()),
                               torch.from_numpy(a) @ torch.from_numpy(a).transpose(1, 2), rtol=1e-5, atol=1e-5)  # fmt: skip
    cond = (X > 0).astype(np.float32)
    np.testing.assert_array_equal(_run("where", {}, cond, X, -X),
                                  torch.where(T > 0, T, -T).numpy())  # fmt: skip
    got = _run("where", {}, X, cond=cond, y=np.float32(0.5) * np.ones_like(X))
    np.testing.assert_array_equal(got, torch.where(T > 0, T, 0.5).numpy())
    v = RNG.standard_normal((1, 2, 3)).astype(np.float32)
    out = _run("constant", {}, X, value=v)
    assert out.shape == (3, 2, 3) and (out == v).all()


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(("k", "s", "p", "ceil"), [(3, 2, 1, False), (2, 2, 0, True), (3, 2, 0, True),
                                                   (3, 1, 1, False)])  # fmt: skip
@pytest.mark.parametrize("include", [True, False])
def test_pool2d_with_padding_and_ceil_mode(kind, k, s, p, ceil, include):
    """NHWC pooling equals torch's NCHW pooling, ceil mode as the far-edge extra padding the
    packer computes (rows torch adds for the last window, never counted)."""
    x = RNG.standard_normal((2, 7, 6, 3)).astype(np.float32)  # NHWC
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    if kind == "max":
        ref = F.max_pool2d(t, k, s, p, ceil_mode=ceil)
    else:
        ref = F.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=include)
    ho, wo = ref.shape[2:]
    extra = [max(0, (o - 1) * s + k - (n + 2 * p)) for o, n in ((ho, 7), (wo, 6))]
    attrs = {"kind": kind, "kernel_size": [k, k], "stride": [s, s], "padding": [p, p],
             "count_include_pad": include, "extra_padding": extra}  # fmt: skip
    got = _run("pool2d", attrs, x)
    np.testing.assert_allclose(got, ref.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)


def test_embedding_float_and_binary():
    w = RNG.standard_normal((11, 70)).astype(np.float32)
    ids = RNG.integers(0, 11, (3, 5))
    ref = F.embedding(torch.from_numpy(ids), torch.from_numpy(w)).numpy()
    np.testing.assert_array_equal(_run("embedding", {}, ids, weight=w), ref)
    alpha = np.abs(w).mean(1).astype(np.float32)
    wb = np.where(w >= 0, 1.0, -1.0).astype(np.float32) * alpha[:, None]
    got = _run("embedding", {"dim": 70}, ids, bits=kernels.pack_bits(w), alpha=alpha)
    np.testing.assert_allclose(got, wb[ids], rtol=1e-6)


def _qkv(lq: int = 7, lk: int = 9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = RNG.standard_normal((5, 3, lq, 8)).astype(np.float32)
    k = RNG.standard_normal((5, 3, lk, 8)).astype(np.float32)
    v = RNG.standard_normal((5, 3, lk, 6)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [1 << 18, 1], ids=["one-slice", "per-example"])
def test_attention(causal, chunk, monkeypatch):
    """torch's scaled_dot_product_attention, batch sliced or not; q, k, v strided views as
    a head split leaves them."""
    from onebit.runtime import generic

    monkeypatch.setattr(generic, "_ATTENTION_CHUNK", chunk)
    q, k, v = _qkv()
    qs, ks, vs = (np.ascontiguousarray(a.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
                  for a in (q, k, v))  # fmt: skip
    assert not qs.flags.c_contiguous
    ref = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), is_causal=causal,
                                         scale=0.3).numpy()  # fmt: skip
    got = _run("attention", {"scale": 0.3, "causal": causal}, qs, ks, vs)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["add", "bool"])
@pytest.mark.parametrize("where", ["input", "tensor"])
def test_attention_masks_and_fully_masked_rows(kind, where):
    """A float mask is added, a 0/1 mask (the runtime's booleans) keeps the 1s; a row that
    attends nowhere gives zeros, as torch's math attention does."""
    q, k, v = _qkv()
    keep = RNG.random((5, 1, 7, 9)) > 0.3
    keep[0, 0, 2] = False  # a fully masked row
    if kind == "add":
        mask = np.where(keep, RNG.standard_normal(keep.shape), -np.inf).astype(np.float32)
        tm = torch.from_numpy(mask)
    else:
        mask, tm = keep.astype(np.float32), torch.from_numpy(keep)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v)), attn_mask=tm)
    ref = ref.numpy()
    assert (ref[0, :, 2] == 0).all()  # what torch's math version gives
    attrs = {"scale": 8**-0.5, "mask": kind}
    if where == "input":
        got = _run("attention", attrs, q, k, v, mask)
    else:
        got = _run("attention", attrs, q, k, v, mask=mask)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("native", [True, False], ids=["native", "reference"])
def test_row_kernels_against_their_float64_reference_on_every_isa(native, monkeypatch):
    """kernels.softmax / layer_norm (the runtime's softmax, layer_norm and attention): every
    instruction set gives the same bits (one body, the same operations in the same order), all
    within float32 rounding of the float64 reference, rows of any length (tails of 1-15), -inf
    and NaN entries and fully masked rows included."""
    from onebit.kernels import reference

    if not native:
        monkeypatch.setattr(kernels, "_native", None)
    isas = kernels.available_isas() if native else ["reference"]
    for n in (1, 5, 16, 17, 65, 300):
        x = (RNG.standard_normal((40, n)) * 6).astype(np.float32)
        x[3] = -np.inf
        x[7, 0] = np.nan
        x[9, n // 2] = -np.inf
        w, b = RNG.standard_normal((2, n)).astype(np.float32)
        got: dict[str, list[np.ndarray]] = {}
        try:
            for isa in isas:
                if native:
                    kernels.set_isa(isa)
                got[isa] = [kernels.softmax(x, log=lg, safe=sf) for lg in (False, True)
                            for sf in (False, True)] + [kernels.layer_norm(x[10:], w, b, 1e-5)]  # fmt: skip
        finally:
            if native:
                kernels.set_isa(None)
        first = got[isas[0]]
        for isa in isas[1:]:
            for a, c in zip(got[isa], first, strict=True):
                np.testing.assert_array_equal(a, c, err_msg=f"{isa} n={n}")
        refs = [
            reference.softmax(x, log=lg, safe=sf) for lg in (False, True) for sf in (False, True)
        ]
        refs.append(reference.layer_norm(x[10:], w, b, 1e-5))
        for a, r in zip(first, refs, strict=True):
            np.testing.assert_allclose(a, r, rtol=3e-6, atol=1e-6, err_msg=f"n={n}")
        sm, sm_safe = first[0], first[1]
        assert np.isnan(sm[3]).all() and (sm_safe[3] == 0).all()  # fully masked row
        assert np.isnan(sm[7]).all()  # a NaN spreads over its row, as in torch
        assert sm_safe[9, n // 2] == 0  # exp(-inf)


def test_gelu_gives_the_same_bits_on_every_isa():
    """The vectorized GELU (ob_rows.c) is one body for every instruction set; tails of 1-15
    values, infinities, NaN and |x| > 20 included. Its accuracy: test_erf_and_gelu_are_..."""
    x = np.concatenate([np.linspace(-30, 30, 4099), [np.nan, np.inf, -np.inf, 0.0, -0.0]])
    x = x.astype(np.float32)
    outs = {}
    try:
        for isa in kernels.available_isas():
            kernels.set_isa(isa)
            outs[isa] = kernels.gelu(x)
    finally:
        kernels.set_isa(None)
    for isa, y in outs.items():
        np.testing.assert_array_equal(y, outs["generic"], err_msg=isa)
    y = outs["generic"]
    assert np.isnan(y[-5]) and y[-4] == np.inf and y[-3] == 0 and y[-2] == 0
    big = x[:-5] > 20
    np.testing.assert_array_equal(y[:-5][big], x[:-5][big])


def test_every_op_kind_has_a_case_here():
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    missing = [k for k in GENERIC_OPS if f'"{k}"' not in source]
    assert not missing, missing
