"""Which kernel multiplies the fully connected layers' matrices during training on the CPU.

torch's CPU wheels do their float32 matrix products in MKL, and MKL takes its AVX2 code path on
CPUs that are not Intel's: on the AMD Zen 5 this project measures on, a 100x2048 by 2048x2048
product runs at about 90 GFLOP/s on one core, against about 160 for TensorFlow's oneDNN. Those
products are about 90% of a training step of the MLPs, so they decide the epoch time
(records/2026-11-22_fmnist_mlp_epoch_time).

:class:`NativeLinearMode` is a ``TorchFunctionMode``: inside it every ``F.linear`` on float32 CPU
tensors (``nn.Linear``, ``BinaryLinear``, the LSTM and transformer projections alike) runs its
three products through :func:`onebit.kernels.matmul` (AVX-512, the kernels' own thread pool),
with the same math:

    forward   y = x W^T + b
    backward  dL/dx = g W,   dL/dW = g^T x,   dL/db = sum_rows g   (g = dL/dy)

Each operand is read in place, transposed or not (:func:`onebit.kernels.matmul` copies any
other layout). Everything else, autograd included, stays
torch's.

Threads: the kernels' pool and torch's OpenMP pool both spin-wait between calls, so with both
at two threads on two cores each took the cores from the other (a step got 1.2x slower than with
torch alone). :func:`gemm_backend` therefore gives the run's threads to the matrix products and
sets torch to one thread for the rest (normalization, activations, the optimizer), which is why
``auto`` picks the native kernel only for models whose parameters all sit in linear and
normalization layers (:func:`dense_only`): a conv net would lose torch's threads in its convs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.graph import increment_version
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from onebit import kernels
from onebit.errors import OnebitError

BACKENDS = ("auto", "torch", "onebit")


_DENSE = (nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def dense_only(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` belongs to a linear or normalization layer (and there
    is a linear layer) outside any recurrence: its work is a few large ``F.linear`` products, as
    in an MLP. (An LSTM's many small per-step products and gate arithmetic gain nothing.)"""
    from onebit.recurrent import LSTMLayer  # here: recurrent -> layers -> quantizers -> gemm

    modules = list(model.modules())
    owners = [m for m in modules if any(True for _ in m.parameters(recurse=False))]
    return (
        any(isinstance(m, nn.Linear) for m in owners)
        and all(isinstance(m, _DENSE) for m in owners)
        and not any(isinstance(m, LSTMLayer | nn.RNNBase) for m in modules)
    )


def resolve(backend: str, model: nn.Module | None = None) -> str:
    """``torch`` or ``onebit`` for a configured ``train.gemm``; ``auto`` picks ``onebit`` when
    :func:`onebit.kernels.matmul_available` (an AVX-512 CPU and the built extension) and
    ``model`` is :func:`dense_only`."""
    if backend not in BACKENDS:
        raise OnebitError(f"unknown train.gemm {backend!r}; accepted: {', '.join(BACKENDS)}.")
    if backend == "onebit" and not kernels.matmul_available():
        raise OnebitError(
            "train.gemm = 'onebit' needs the native kernels on an AVX-512 CPU "
            f"(this one dispatches to {kernels.get_isa()}); use 'auto' or 'torch'."
        )
    if backend != "auto":
        return backend
    dense = model is not None and dense_only(model)
    return "onebit" if dense and kernels.matmul_available() else "torch"


# The matrix products' threads while gemm_backend holds them. While held, torch has one thread,
# so the weight-sized elementwise passes of binarization (sign, latent clip) go native too.
_threads: int | None = None


def _plain(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


def sign_into(x: Tensor, out: Tensor) -> bool:
    """``out = sign(x)`` (``x >= 0`` -> +1) through the native kernel when the threads are held
    and both are contiguous float32 CPU tensors; returns whether it did."""
    if _threads is None or not (_plain(x) and _plain(out)):
        return False
    kernels.sign(x.detach().numpy(), out.detach().numpy(), threads=_threads)
    increment_version(out)  # a write through numpy is invisible to autograd's in-place check
    return True


def clamp_(x: Tensor, lo: float, hi: float) -> bool:
    """In place ``x = clamp(x, lo, hi)`` through the native kernel when the threads are held and
    ``x`` is a contiguous float32 CPU tensor; returns whether it did."""
    if _threads is None or not _plain(x):
        return False
    kernels.clamp_(x.detach().numpy(), lo, hi, threads=_threads)
    increment_version(x)
    return True


def _mm(a: Tensor, b: Tensor, out: Tensor, accumulate: bool = False) -> Tensor:
    """``out (+)= a @ b`` on float32 CPU tensors through the native kernel."""
    threads = _threads or torch.get_num_threads()
    kernels.matmul(a.numpy(), b.numpy(), out.numpy(), accumulate=accumulate, threads=threads)
    return out


class _NativeLinear(torch.autograd.Function):
    """``x @ w.T + b`` for 2-D float32 CPU ``x (M, K)``, ``w (N, K)``, ``b (N,)`` or None."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        x, w = x.detach(), w.detach()
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        y = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
        if b is not None:  # start from the bias and accumulate: no separate pass to add it
            y.copy_(b.detach().expand_as(y))
        return _mm(x, w.t(), y, accumulate=b is not None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _mm(g, w, torch.empty(x.shape, dtype=x.dtype))
        if ctx.needs_input_grad[1]:
            gw = _mm(g.t(), x, torch.empty(w.shape, dtype=w.dtype))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


def _eligible(x: Tensor, w: Tensor, b: Tensor | None) -> bool:
    """Plain float32 CPU tensors of matching shapes; anything else (subclasses, other dtypes or
    devices, empty batches) keeps torch's own ``F.linear``."""
    tensors = (x, w) if b is None else (x, w, b)
    return (
        all(type(t) in (Tensor, torch.nn.Parameter) for t in tensors)
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and w.dim() == 2
        and x.dim() >= 1
        and x.numel() > 0
        and x.shape[-1] == w.shape[1]
        and (b is None or b.shape == (w.shape[0],))
    )


def native_linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``F.linear(x, w, b)`` with the products in :func:`onebit.kernels.matmul` (module doc)."""
    lead = x.shape[:-1]
    y = _NativeLinear.apply(x.reshape(-1, x.shape[-1]), w, b)
    return y.reshape(*lead, w.shape[0])


class NativeLinearMode(TorchFunctionMode):
    """Route ``F.linear`` on float32 CPU tensors through :func:`native_linear` while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func is F.linear:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if _eligible(x, w, b):
                return native_linear(x, w, b)
        return func(*args, **kwargs)


@contextlib.contextmanager
def gemm_backend(backend: str, model: nn.Module | None = None) -> Iterator[str]:
    """Train ``model`` under ``backend`` (``auto``, ``torch`` or ``onebit``); yields the resolved
    name. With ``onebit`` the matrix products get torch's thread count and torch keeps one thread
    until the block ends (module doc)."""
    global _threads
    name = resolve(backend, model)
    if name == "torch":
        yield name
        return
    saved, outer = torch.get_num_threads(), _threads
    _threads = outer or saved
    torch.set_num_threads(1)
    try:
        with NativeLinearMode():
            yield name
    finally:
        torch.set_num_threads(saved)
        _threads = outer
