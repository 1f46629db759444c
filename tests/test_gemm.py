"""onebit.gemm: linear layers whose matrix products run in numpy, against torch's F.linear."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info
from torch import nn
from torch.nn import functional as F

import onebit
import onebit.gemm as gemm
from onebit.config import TrainConfig
from onebit.errors import OnebitError
from onebit.methods import BinaryConnect
from onebit.training import train
from tests.conftest import tiny_dataset


def _grads(fn, x, w, b):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = None if b is None else b.clone().requires_grad_()
    y = fn(x, w, b)
    y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("lead", [(7,), (3, 5), ()])
@pytest.mark.parametrize("bias", [False, True])
def test_numpy_linear_matches_f_linear_forward_and_backward(lead, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, 13, generator=g)
    w = torch.randn(6, 13, generator=g)
    b = torch.randn(6, generator=g) if bias else None
    ours, ref = _grads(gemm.numpy_linear_fn, x, w, b), _grads(F.linear, x, w, b)
    for a, r in zip(ours, ref, strict=True):
        if r is None:
            assert a is None
        else:
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_no_input_gradient_is_computed_when_none_is_needed():
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 3)  # data, not a parameter
    gemm.numpy_linear_fn(x, w).sum().backward()
    torch.testing.assert_close(w.grad, x.sum(0).expand(4, 3))
    assert x.grad is None


def _uses_numpy(y: torch.Tensor) -> bool:
    """Whether the autograd graph below ``y`` holds a numpy product."""
    seen, todo = set(), [y.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if "_NumpyMM" in type(fn).__name__:
            return True
        todo += [f for f, _ in fn.next_functions]
    return False


def test_the_mode_routes_linear_and_binary_linear_and_leaves_the_rest():
    torch.manual_seed(0)
    model = onebit.models.build("mlp", (1, 4, 4), 3, hidden=[8])
    onebit.binarize_(model, BinaryConnect())
    x = torch.randn(5, 1, 4, 4)
    ref = model(x)
    with gemm.NumpyLinearMode():
        y = model(x)
        plain = nn.Linear(4, 2)(torch.randn(3, 4))
        double = nn.Linear(4, 2).double()(torch.randn(3, 4, dtype=torch.float64))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert _uses_numpy(y) and _uses_numpy(plain)
    assert not _uses_numpy(double)  # float64 keeps torch's kernel
    assert not _uses_numpy(model(x))  # outside the mode


def test_resolve(monkeypatch):
    for vendor, blas, threads, want in [
        ("AuthenticAMD", "scipy-openblas", 1, "numpy"),
        ("AuthenticAMD", "scipy-openblas", 2, "torch"),
        ("AuthenticAMD", "accelerate", 1, "torch"),
        ("GenuineIntel", "scipy-openblas", 1, "torch"),
    ]:
        monkeypatch.setattr(gemm, "_cpu_vendor", lambda v=vendor: v)
        monkeypatch.setattr(gemm, "_numpy_blas", lambda b=blas: b)
        assert gemm.resolve("auto", threads) == want
        assert gemm.resolve("torch", threads) == "torch"
        assert gemm.resolve("numpy", threads) == "numpy"
    with pytest.raises(
        OnebitError, match=r"unknown train\.gemm 'mkl'; accepted: auto, torch, numpy"
    ):
        gemm.resolve("mkl")


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_numpy_backend_gives_blas_the_requested_threads_and_restores_them():
    before = _blas_threads()
    with gemm.gemm_backend("numpy", threads=1) as name:
        assert name == "numpy" and _blas_threads() == {1}
    assert _blas_threads() == before


@pytest.mark.parametrize(("method", "rel"), [("fp", 1e-4), ("bc", 0.05)])
def test_training_with_numpy_products_follows_torch_products(method, rel):
    """Same seed, same data: the two backends differ only in float rounding (which sign flips
    of near-zero latent weights amplify under bc)."""
    data = tiny_dataset(shape=(1, 8, 8), classes=4, n_train=256)
    runs = {}
    for backend in ("torch", "numpy"):
        torch.manual_seed(0)
        model = onebit.models.build("mlp", (1, 8, 8), 4, hidden=[32, 32])
        m = onebit.methods.METHODS[method]()
        onebit.binarize_(model, m)
        cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, threads=1, gemm=backend)
        runs[backend] = [e["train_loss"] for e in train(model, m, data, cfg).epochs]
    assert runs["numpy"] == pytest.approx(runs["torch"], rel=rel)
    assert runs["numpy"][-1] < runs["numpy"][0]
