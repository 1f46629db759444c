"""Which BLAS multiplies the fully connected layers during training on the CPU.

torch's CPU wheels do their float32 matrix products in MKL, and MKL takes its AVX2 code path on
CPUs that are not Intel's: on the AMD Zen 5 this project measures on, a 100x2048 by 2048x2048
product runs at about half the rate numpy's OpenBLAS (AVX-512 kernels) reaches on the same core,
and TensorFlow's oneDNN is as fast as OpenBLAS. The matrix products are about 90% of a training
step of the MLPs, so the choice decides the epoch time (records/2026-11-22_fmnist_mlp_larq).

:class:`NumpyLinearMode` is a ``TorchFunctionMode``: inside it every ``F.linear`` on float32 CPU
tensors (``nn.Linear``, ``BinaryLinear``, the LSTM and transformer projections alike) runs its
three products through numpy, with the same math:

    forward   y = x W^T (+ b)
    backward  dL/dx = g W,   dL/dW = g^T x,   dL/db = sum_rows g   (g = dL/dy)

Everything else, autograd included, stays torch's. :func:`resolve` turns ``"auto"`` into
``"numpy"`` on AMD CPUs when numpy's BLAS is OpenBLAS and the run has one thread, else
``"torch"``.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from onebit.errors import OnebitError

BACKENDS = ("auto", "torch", "numpy")


@functools.cache
def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@functools.cache
def _numpy_blas() -> str:
    try:
        info = np.show_config(mode="dicts")  # numpy >= 1.26
        return str(info["Build Dependencies"]["blas"]["name"]).lower()
    except Exception:  # older numpy prints instead of returning; its name is not needed then
        return ""


def resolve(backend: str, threads: int = 1) -> str:
    """``torch`` or ``numpy`` for a configured ``train.gemm`` run on ``threads`` threads.

    ``auto`` picks ``numpy`` on AMD CPUs whose numpy has OpenBLAS, and only for one thread: with
    two, OpenBLAS's worker thread and torch's OpenMP workers each spin-wait for work between
    calls and take the cores from each other (a training step got 2.8x slower here), while
    MKL shares torch's own pool.
    """
    if backend not in BACKENDS:
        raise OnebitError(f"unknown train.gemm {backend!r}; accepted: {', '.join(BACKENDS)}.")
    if backend != "auto":
        return backend
    amd = _cpu_vendor() == "AuthenticAMD"
    return "numpy" if amd and threads == 1 and "openblas" in _numpy_blas() else "torch"


class _NumpyMM(torch.autograd.Function):
    """``x @ w.T`` for 2-D float32 CPU ``x (M, K)`` and ``w (N, K)``, all three products in numpy."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor) -> Tensor:
        x, w = x.detach().contiguous(), w.detach().contiguous()
        ctx.save_for_backward(x, w)
        y = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
        np.matmul(x.numpy(), w.numpy().T, out=y.numpy())
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        gn = g.contiguous().numpy()
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty_like(x)
            np.matmul(gn, w.numpy(), out=gx.numpy())
        if ctx.needs_input_grad[1]:
            gw = torch.empty_like(w)
            np.matmul(gn.T, x.numpy(), out=gw.numpy())
        return gx, gw


def _eligible(x: Tensor, w: Tensor, b: Tensor | None) -> bool:
    """Plain float32 CPU tensors of matching shapes; anything else (subclasses, other dtypes or
    devices) keeps torch's own ``F.linear``."""
    tensors = (x, w) if b is None else (x, w, b)
    return (
        all(type(t) in (Tensor, torch.nn.Parameter) for t in tensors)
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and w.dim() == 2
        and x.dim() >= 1
        and x.shape[-1] == w.shape[1]
        and (b is None or b.shape == (w.shape[0],))
    )


def numpy_linear_fn(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``F.linear(x, w, b)`` with the products in numpy (see the module docstring)."""
    lead = x.shape[:-1]
    y = _NumpyMM.apply(x.reshape(-1, x.shape[-1]), w)
    if b is not None:
        y = y + b
    return y.reshape(*lead, w.shape[0])


class NumpyLinearMode(TorchFunctionMode):
    """Route ``F.linear`` on float32 CPU tensors through :func:`numpy_linear_fn` while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is F.linear:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if _eligible(x, w, b):
                return numpy_linear_fn(x, w, b)
        return func(*args, **kwargs)


@contextlib.contextmanager
def gemm_backend(backend: str, threads: int | None = None) -> Iterator[str]:
    """Train under ``backend`` (``auto``, ``torch`` or ``numpy``) on ``threads`` threads (default:
    torch's count); yields the resolved name. With ``numpy``, numpy's BLAS gets the same number of
    threads for the duration, so a one-thread run stays on one core."""
    threads = threads or torch.get_num_threads()
    name = resolve(backend, threads)
    if name == "torch":
        yield name
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(threads, user_api="blas"), NumpyLinearMode():
        yield name
