"""Opt-in native CPU products for training: an explicit context, chosen by measurement.

torch's CPU wheels do their float32 matrix products in MKL, which takes its AVX2 path on CPUs
that are not Intel's: on an AMD Zen 5 a 100x2048 by 2048x2048 product ran at about 90 GFLOP/s
per core, against about 160 for onebit's AVX-512 kernel (``onebit.kernels.matmul``); on an Intel
Xeon with AMX, MKL was faster than that kernel (a float MLP step took 1.27x as long on the
kernel). So nothing here is on by default: the caller enters :func:`gemm_backend` (``train()``
does, with ``train.gemm``), and ``auto`` takes the native kernel only where :func:`measure`
found it faster on this machine for the model's own shapes (cached per machine in
``<cache>/gemm.json``).

Inside :class:`NativeLinearMode` (a ``TorchFunctionMode``), for float32 CPU tensors:

    F.linear    forward  y = x W^T + b
                backward dL/dx = g W,  dL/dW = g^T x,  dL/db = sum_rows g     (g = dL/dy)
    sign_into   out = sign(x)  (x >= 0 -> +1)            onebit.quantizers.sign_into
    clamp_      x = clamp(x, lo, hi)                       Tensor.clamp_ (latent clip)

run in the kernels, each with torch's exact result (the products up to float rounding). Every
other op stays torch's. Threads: the kernels' pool and torch's OpenMP pool both spin-wait
between calls, so with both at two threads on two cores each took the cores from the other (a
step got 1.2x slower). The backend therefore gives the run's threads to the kernels and sets
torch to one thread until the block ends (restored by :func:`onebit.settings.torch_settings`),
which is why ``auto`` only considers models whose parameters all sit in linear and
normalization layers (:func:`dense_only`): a conv net would lose torch's threads in its convs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.graph import increment_version
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from onebit import kernels
from onebit.errors import OnebitError
from onebit.fileio import atomic_write, user_cache_dir
from onebit.quantizers import sign_into
from onebit.recurrent import LSTMLayer
from onebit.settings import cpu_model, torch_settings

__all__ = [
    "BACKENDS",
    "Backend",
    "NativeLinearMode",
    "dense_only",
    "gemm_backend",
    "measure",
    "native_linear",
    "resolve",
]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onebit")
FASTER = 1.25  # auto wants the kernel clearly faster: the rest of a step loses threads, and
# measurements near 1 flip with noise (measured here: 0.98-1.22 at 1 thread, 0.87 at 2)
CACHE_FILE = "gemm.json"

_DENSE = (nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def dense_only(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` belongs to a linear or normalization layer (and there
    is a linear layer) outside any recurrence: its work is a few large ``F.linear`` products, as
    in an MLP. (An LSTM's many small per-step products and gate arithmetic gain nothing.)"""
    modules = list(model.modules())
    owners = [m for m in modules if any(True for _ in m.parameters(recurse=False))]
    return (
        any(isinstance(m, nn.Linear) for m in owners)
        and all(isinstance(m, _DENSE) for m in owners)
        and not any(isinstance(m, LSTMLayer | nn.RNNBase) for m in modules)
    )


def _largest_linear(model: nn.Module) -> tuple[int, int]:
    """``(K, N)`` of the linear layer with the most weights (the step's dominant products)."""
    lin = max(
        (m for m in model.modules() if isinstance(m, nn.Linear)), key=lambda m: m.weight.numel()
    )
    return lin.in_features, lin.out_features


def _machine_key(threads: int, m: int, k: int, n: int) -> str:
    return f"{cpu_model()}|{kernels.get_isa()}|torch {torch.__version__}|{threads}t|{m}x{k}x{n}"


def _time(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(m: int, k: int, n: int, threads: int, repeats: int = 5) -> float:
    """torch's time over the kernels' time for the three products of a linear layer's training
    step (``x W^T``, ``g W``, ``g^T x``; ``x (m, k)``, ``W (n, k)``), at ``threads`` threads.
    Above 1 the kernel is faster. Best of ``repeats`` for each."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    g = rng.standard_normal((m, n), dtype=np.float32)
    y, gx, gw = (
        np.empty((m, n), np.float32),
        np.empty((m, k), np.float32),
        np.empty((n, k), np.float32),
    )

    def native() -> None:
        kernels.matmul(x, w.T, y, threads=threads)
        kernels.matmul(g, w, gx, threads=threads)
        kernels.matmul(g.T, x, gw, threads=threads)

    tx, tw, tg = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(g)
    ty, tgx, tgw = torch.from_numpy(y), torch.from_numpy(gx), torch.from_numpy(gw)

    def torch_mm() -> None:
        torch.mm(tx, tw.t(), out=ty)
        torch.mm(tg, tw, out=tgx)
        torch.mm(tg.t(), tx, out=tgw)

    with torch_settings(threads=threads):
        t_torch = _time(torch_mm, repeats)
    with torch_settings(threads=1):
        t_native = _time(native, repeats)
    return t_torch / t_native


def _calibrated(m: int, k: int, n: int, threads: int) -> float:
    """:func:`measure`, cached per machine and shape in ``<cache>/gemm.json``."""
    path = user_cache_dir() / CACHE_FILE
    key = _machine_key(threads, m, k, n)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    if isinstance(cache.get(key), int | float):
        return float(cache[key])
    ratio = measure(m, k, n, threads)
    cache[key] = ratio
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(cache, indent=1) + "\n", fsync=False)
    except (OSError, OnebitError) as e:  # a read-only home only costs a re-measure next time
        log.debug("could not cache the GEMM calibration: %s", e)
    return ratio


def resolve(
    backend: str, model: nn.Module | None = None, *, batch: int = 128, threads: int | None = None
) -> str:
    """``torch`` or ``onebit`` for a configured ``train.gemm``.

    ``auto`` picks ``onebit`` only where the kernel exists (AVX-512 and the built extension),
    ``model`` is :func:`dense_only`, and :func:`measure` found the kernel at least 1.25x faster on
    this machine for the model's largest linear layer at ``batch`` rows and ``threads`` threads.
    """
    if backend not in BACKENDS:
        raise OnebitError(f"unknown train.gemm {backend!r}; accepted: {', '.join(BACKENDS)}.")
    if backend == "onebit" and not kernels.matmul_available():
        raise OnebitError(
            "train.gemm = 'onebit' needs the native kernels on an AVX-512 CPU "
            f"(this one dispatches to {kernels.get_isa()}); use 'auto' or 'torch'."
        )
    if backend != "auto":
        return backend
    if model is None or not dense_only(model) or not kernels.matmul_available():
        return "torch"
    k, n = _largest_linear(model)
    t = threads or torch.get_num_threads()
    ratio = _calibrated(batch, k, n, t)
    log.debug("gemm auto: kernel %.2fx torch for %dx%dx%d at %d threads", ratio, batch, k, n, t)
    return "onebit" if ratio >= FASTER else "torch"


def _plain(t: Tensor) -> bool:
    return (
        type(t) in (Tensor, nn.Parameter)
        and t.device.type == "cpu"
        and t.dtype == torch.float32
        and t.is_contiguous()
    )


def _mm(a: Tensor, b: Tensor, out: Tensor, threads: int, accumulate: bool = False) -> Tensor:
    """``out (+)= a @ b`` on float32 CPU tensors through the native kernel."""
    kernels.matmul(a.numpy(), b.numpy(), out.numpy(), accumulate=accumulate, threads=threads)
    return out


class _NativeLinear(torch.autograd.Function):
    """``x @ w.T + b`` for 2-D float32 CPU ``x (M, K)``, ``w (N, K)``, ``b (N,)`` or None."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, threads: int) -> Tensor:
        x, w = x.detach(), w.detach()
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        ctx.threads = threads
        y = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
        if b is not None:  # start from the bias and accumulate: no separate pass to add it
            y.copy_(b.detach().expand_as(y))
        return _mm(x, w.t(), y, threads, accumulate=b is not None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _mm(g, w, torch.empty(x.shape, dtype=x.dtype), ctx.threads)
        if ctx.needs_input_grad[1]:
            gw = _mm(g.t(), x, torch.empty(w.shape, dtype=w.dtype), ctx.threads)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb, None


def _eligible(x: Tensor, w: Tensor, b: Tensor | None) -> bool:
    """Plain float32 CPU tensors of matching shapes; anything else (subclasses, other dtypes or
    devices, empty batches) keeps torch's own ``F.linear``."""
    tensors = (x, w) if b is None else (x, w, b)
    return (
        all(type(t) in (Tensor, nn.Parameter) for t in tensors)
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and w.dim() == 2
        and x.dim() >= 1
        and x.numel() > 0
        and x.shape[-1] == w.shape[1]
        and (b is None or b.shape == (w.shape[0],))
    )


def native_linear(
    x: Tensor, w: Tensor, b: Tensor | None = None, threads: int | None = None
) -> Tensor:
    """``F.linear(x, w, b)`` with the products in :func:`onebit.kernels.matmul` (module doc)."""
    lead = x.shape[:-1]
    t = threads or torch.get_num_threads()
    y = _NativeLinear.apply(x.reshape(-1, x.shape[-1]), w, b, t)
    return y.reshape(*lead, w.shape[0])


class NativeLinearMode(TorchFunctionMode):
    """While active: ``F.linear``, :func:`onebit.quantizers.sign_into` and ``Tensor.clamp_`` on
    float32 CPU tensors run in the native kernels with ``threads`` threads (None: torch's count at
    the call). ``calls`` counts what went native, per op."""

    def __init__(self, threads: int | None = None) -> None:
        super().__init__()
        self.threads = threads
        self.calls = {"linear": 0, "sign": 0, "clamp": 0}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        threads = self.threads or torch.get_num_threads()
        if func is F.linear:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if _eligible(x, w, b):
                self.calls["linear"] += 1
                return native_linear(x, w, b, threads)
        elif func is sign_into and not kwargs:
            x, out = args
            if _plain(x) and _plain(out) and x.shape == out.shape:
                self.calls["sign"] += 1
                kernels.sign(x.detach().numpy(), out.detach().numpy(), threads=threads)
                increment_version(out)  # a write through numpy is invisible to autograd's check
                return out
        elif func is Tensor.clamp_ and len(args) == 3 and not kwargs:
            x, lo, hi = args
            numbers = isinstance(lo, float | int) and isinstance(hi, float | int)
            if _plain(x) and numbers and not (x.requires_grad and torch.is_grad_enabled()):
                self.calls["clamp"] += 1
                kernels.clamp_(x.detach().numpy(), float(lo), float(hi), threads=threads)
                increment_version(x)
                return x
        return func(*args, **kwargs)


@dataclass(frozen=True)
class Backend:
    """What :func:`gemm_backend` chose: ``name`` (``torch`` or ``onebit``), the kernels'
    ``threads`` (0 for torch) and the active mode (None for torch)."""

    name: str
    threads: int = 0
    mode: NativeLinearMode | None = None


@contextlib.contextmanager
def gemm_backend(
    backend: str, model: nn.Module | None = None, *, batch: int = 128
) -> Iterator[Backend]:
    """Within the block, train ``model`` under ``backend`` (``auto``, ``torch`` or ``onebit``; see
    :func:`resolve`). With ``onebit`` the kernels get torch's thread count and torch keeps one
    thread until the block ends; every setting is restored at exit."""
    name = resolve(backend, model, batch=batch)
    if name == "torch":
        yield Backend("torch")
        return
    threads = torch.get_num_threads()
    mode = NativeLinearMode(threads)
    with torch_settings(threads=1), mode:
        yield Backend(name, threads, mode)
