"""onebit.gemm and kernels.matmul: the native float32 products against torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import onebit
import onebit.gemm as gemm
from onebit import kernels
from onebit.errors import OnebitError
from onebit.methods import BinaryConnect
from onebit.training import TrainConfig, train
from tests.conftest import tiny_dataset

native = pytest.mark.skipif(
    not kernels.matmul_available(), reason="the native matmul needs AVX-512 and the extension"
)


def _operand(rng, rows, cols, transposed):
    """A float32 (rows, cols) array, row-major or as the transpose of one."""
    if transposed:
        return rng.standard_normal((cols, rows)).astype(np.float32).T
    return rng.standard_normal((rows, cols)).astype(np.float32)


# sizes around the 6x64 tile, the 16-wide transposes and the 256-deep k blocks
SHAPES = [(1, 1, 1), (7, 33, 65), (13, 300, 129), (6, 16, 64), (100, 257, 200), (130, 20, 1100)]


@native
@pytest.mark.parametrize(("m", "k", "n"), SHAPES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_matmul_matches_float64_for_every_layout(m, k, n, ta, tb):
    rng = np.random.default_rng(m * 1000 + k + n)
    a, b = _operand(rng, m, k, ta), _operand(rng, k, n, tb)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    out = kernels.matmul(a, b)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.sqrt(k))
    kernels.matmul(a, b, out, accumulate=True)
    np.testing.assert_allclose(out, 2 * ref, rtol=1e-5, atol=2e-5 * np.sqrt(k))


@native
def test_matmul_threads_split_the_work_without_changing_a_bit():
    rng = np.random.default_rng(0)
    a, b = _operand(rng, 50, 300, False), _operand(rng, 300, 700, True)
    one = kernels.matmul(a, b, threads=1)
    np.testing.assert_array_equal(kernels.matmul(a, b, threads=2), one)
    np.testing.assert_array_equal(kernels.matmul(a, b, threads=5), one)


def test_matmul_rejects_bad_input():
    a = np.ones((3, 4), np.float32)
    with pytest.raises(kernels.KernelInputError, match="inner sizes differ"):
        kernels.matmul(a, a)
    with pytest.raises(kernels.KernelInputError, match="float32"):
        kernels.matmul(a.astype(np.float64), a.T)
    with pytest.raises(kernels.KernelInputError, match="out must be"):
        kernels.matmul(a, a.T, np.empty((4, 4), np.float32))


def test_matmul_without_the_kernel_is_numpys(monkeypatch):
    monkeypatch.setattr(kernels, "matmul_available", lambda: False)
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = kernels.matmul(a, a.T)
    np.testing.assert_array_equal(out, a @ a.T)
    np.testing.assert_array_equal(kernels.matmul(a, a.T, out, accumulate=True), 2 * (a @ a.T))


def _grads(fn, x, w, b):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = None if b is None else b.clone().requires_grad_()
    y = fn(x, w, b)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


@native
@pytest.mark.parametrize("lead", [(7,), (3, 5), ()])
@pytest.mark.parametrize("bias", [False, True])
def test_native_linear_matches_f_linear_forward_and_backward(lead, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, 13, generator=g)
    w = torch.randn(6, 13, generator=g)
    b = torch.randn(6, generator=g) if bias else None
    ours, ref = _grads(gemm.native_linear, x, w, b), _grads(F.linear, x, w, b)
    for a, r in zip(ours, ref, strict=True):
        if r is None:
            assert a is None
        else:
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


@native
def test_no_input_gradient_is_computed_when_none_is_needed():
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 3)  # data, not a parameter
    gemm.native_linear(x, w).sum().backward()
    torch.testing.assert_close(w.grad, x.sum(0).expand(4, 3))
    assert x.grad is None


def _uses_native(y: torch.Tensor) -> bool:
    """Whether the autograd graph below ``y`` holds a native product."""
    seen, todo = set(), [y.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if "_NativeLinear" in type(fn).__name__:
            return True
        todo += [f for f, _ in fn.next_functions]
    return False


@native
def test_the_mode_routes_linear_and_binary_linear_and_leaves_the_rest():
    torch.manual_seed(0)
    model = onebit.models.build("mlp", (1, 4, 4), 3, hidden=[8])
    onebit.binarize_(model, BinaryConnect())
    x = torch.randn(5, 1, 4, 4)
    ref = model(x)
    with gemm.NativeLinearMode():
        y = model(x)
        plain = nn.Linear(4, 2)(torch.randn(3, 4))
        double = nn.Linear(4, 2).double()(torch.randn(3, 4, dtype=torch.float64))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert _uses_native(y) and _uses_native(plain)
    assert not _uses_native(double)  # float64 keeps torch's kernel
    assert not _uses_native(model(x))  # outside the mode


def test_auto_picks_the_native_kernel_for_dense_models_only(monkeypatch, tmp_path):
    mlp = onebit.models.build("mlp", (1, 8, 8), 4, hidden=[16])
    cnn = onebit.models.build("small_cnn", (1, 8, 8), 4)
    lstm = onebit.models.build("lstm_lm", (16,), 30, hidden=8)
    assert gemm.dense_only(mlp) and not gemm.dense_only(cnn) and not gemm.dense_only(lstm)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = []
    monkeypatch.setattr(gemm, "measure", lambda *a: measured.append(a) or 2.0)  # kernel 2x faster
    for available, want in [(True, "onebit"), (False, "torch")]:
        monkeypatch.setattr(kernels, "matmul_available", lambda a=available: a)
        assert gemm.resolve("auto", mlp) == want
        assert gemm.resolve("auto", cnn) == "torch"
        assert gemm.resolve("torch", mlp) == "torch"
    assert len(measured) == 1  # measured once, then read from the machine's cache
    with pytest.raises(OnebitError, match=r"needs the native kernels on an AVX-512 CPU"):
        gemm.resolve("onebit", mlp)
    with pytest.raises(
        OnebitError, match=r"unknown train\.gemm 'mkl'; accepted: auto, torch, onebit"
    ):
        gemm.resolve("mkl")
    # where the kernel was measured slower (an Intel Xeon with AMX), auto keeps torch's products
    monkeypatch.setattr(kernels, "matmul_available", lambda: True)
    monkeypatch.setattr(gemm, "measure", lambda *a: 0.79)
    assert gemm.resolve("auto", mlp, batch=64) == "torch"


@native
def test_the_native_backend_holds_the_threads_and_gives_them_back():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with gemm.gemm_backend("onebit") as backend:
            assert backend.name == "onebit"
            assert torch.get_num_threads() == 1 and backend.threads == 2
        assert torch.get_num_threads() == 2 and not torch.overrides._get_current_function_mode()
    finally:
        torch.set_num_threads(before)


@native
@pytest.mark.parametrize(("method", "rel"), [("fp", 1e-4), ("bc", 0.05)])
def test_training_with_native_products_follows_torch_products(method, rel):
    """Same seed, same data: the two kernels differ only in float rounding (which sign flips
    of near-zero latent weights amplify under bc)."""
    data = tiny_dataset(shape=(1, 8, 8), classes=4, n_train=256)
    runs = {}
    for backend in ("torch", "onebit"):
        torch.manual_seed(0)
        model = onebit.models.build("mlp", (1, 8, 8), 4, hidden=[32, 32])
        m = onebit.methods.METHODS[method]()
        onebit.binarize_(model, m)
        cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, threads=1, gemm=backend)
        runs[backend] = [e["train_loss"] for e in train(model, m, data, cfg).epochs]
    assert runs["onebit"] == pytest.approx(runs["torch"], rel=rel)
    assert runs["onebit"][-1] < runs["onebit"][0]


def test_sign_kernel_matches_the_quantizer_sign():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, -1e-30, 3.0, float("inf"), -float("inf")])
    x = torch.cat([x, torch.randn(1000)])
    ref = onebit.quantizers.sign(x)
    np.testing.assert_array_equal(kernels.sign(x.numpy()), ref.numpy())
    y = x.clone().numpy()
    np.testing.assert_array_equal(kernels.sign(y, y, threads=2), ref.numpy())  # in place


@native
def test_held_threads_send_sign_and_clip_to_the_kernels_with_torchs_results():
    torch.manual_seed(0)
    model = onebit.models.build("mlp", (1, 4, 4), 3, hidden=[300])
    method = BinaryConnect()
    onebit.binarize_(model, method)
    layer = next(m for m in model.modules() if onebit.layers.is_binary_layer(m) and m.binary)
    with torch.no_grad():
        layer.weight.mul_(3)
    w0 = layer.weight.detach().clone()
    out = torch.empty_like(w0)
    onebit.quantizers.sign_into(w0, out)  # outside the backend: torch does it
    with gemm.gemm_backend("onebit", model) as backend:
        onebit.quantizers.sign_into(layer.weight, out)
        assert backend.mode.calls["sign"] == 1
        torch.testing.assert_close(out, onebit.quantizers.sign(w0), rtol=0, atol=0)
        method.after_step(model)
        assert backend.mode.calls["clamp"] == 2  # both binary layers' latent clip
    torch.testing.assert_close(layer.weight.detach(), w0.clamp(-1, 1), rtol=0, atol=0)


@native
def test_a_native_sign_write_still_trips_autograds_in_place_check():
    """As tests/test_layers.py checks for torch's path: reusing the forward-weight buffer before
    the first graph's backward raises instead of silently using the new weights."""
    lin = onebit.layers.binary_from_float(
        nn.Linear(4, 3), onebit.quantizers.SignIdentity(), "none", None
    )
    x = torch.randn(2, 4, requires_grad=True)
    with gemm.gemm_backend("onebit"):
        y1 = lin(x)
        lin._buffer().busy = False  # pretend the lending rule failed: the native write is seen
        lin(x).sum().backward()
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y1.sum().backward()
