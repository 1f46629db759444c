"""One plain training loop: train(), evaluate(), the recipe (TrainConfig), DDP under torchrun.

Every epoch: set the learning rate from a pure function of the epoch, let the method update its
schedule, train over the shuffled training set (order seeded by ``seed`` and the epoch), apply the
method's after-step hook (latent clipping, proximal steps), then evaluate the hard-binarized model
(``model.eval()`` makes binary layers use ``sign(w)``) on validation and test, write one JSON line of
metrics and a checkpoint (model, optimizer, epoch, RNG state, history; ``onebit.checkpoint``) to a
temporary file renamed over the old one. ``resume=True`` restores all of it, so a killed run
continues to the same result as an uninterrupted one. Process-wide torch settings (threads,
determinism, the CPU GEMM mode) hold for the run and are restored when it ends.

The run trains on ``cfg.device`` (:mod:`onebit.devices`): the model, the teacher and the in-memory
dataset move there for the run (batches and their augmentation are then sliced from device
tensors, with no per-step copy from the host) and the model and teacher move back to where they
were when the run ends. ``cfg.precision`` selects ``torch.autocast`` (bf16 or fp16, the latter with
a gradient scaler); the binarized weights stay ``alpha * sign(w)`` computed in fp32.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from onebit.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_init_,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from onebit.data import Dataset, Split, batches, num_batches
from onebit.devices import (
    PRECISIONS,
    Precision,
    check_device_spec,
    device_name,
    dist_backend,
    resolve_device,
    resolve_precision,
    to_device,
)
from onebit.errors import OnebitError
from onebit.fileio import atomic_write
from onebit.gemm import gemm_backend
from onebit.layers import is_binary_layer, relaxed
from onebit.methods import Method
from onebit.probe import first_tensor
from onebit.schedules import is_partial
from onebit.settings import default_threads, torch_settings

__all__ = [
    "CHECKPOINT_FORMAT",
    "LOSSES",
    "SCHEDULES",
    "History",
    "TrainConfig",
    "TrainStep",
    "evaluate",
    "load_checkpoint",
    "lr_at",
    "make_optimizer",
    "model_logits",
    "save_checkpoint",
    "seed_everything",
    "squared_hinge",
    "train",
]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The training recipe.

    Attributes:
        epochs: passes over the training set.
        batch_size: global batch size (split across processes under torchrun).
        optimizer: ``adam`` or ``sgd``.
        lr: initial learning rate.
        lr_final: last-epoch learning rate for ``exp`` and ``cosine`` schedules.
        schedule: ``constant``, ``exp`` (geometric from lr to lr_final, per epoch), ``exp_step``
            (the same decay at every step, reaching lr_final at the end, as Keras), ``cosine``,
            ``multistep`` (times ``gamma`` at each of ``milestones``), ``onecycle`` (per step:
            up from ``lr / 10`` to ``lr`` over the first ``warmup`` of training, then linearly
            down to ``lr_final``, default 0; see :func:`lr_at`).
        warmup: the fraction of training over which ``onecycle`` rises, in [0, 1).
        milestones: epochs at which ``multistep`` multiplies the rate by ``gamma``.
        gamma: the ``multistep`` factor.
        momentum: SGD momentum. nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty (SGD) or decoupled decay (AdamW-style is not used: Adam's own).
        decay_norm: apply ``weight_decay`` to one-dimensional parameters too (normalization
            scales and shifts, biases). False: only weights of two or more dimensions decay, the
            usual practice for conv nets since Goyal et al. 2017 (a BN scale's size carries no
            capacity to regularize, since the next BN or the ReLU's sign undoes it).
        loss: ``ce`` (cross-entropy) or ``hinge`` (squared hinge, BinaryConnect/LAB).
        label_smoothing: cross-entropy against targets smoothed by this much, in [0, 1) (training
            loss only; evaluation reports the plain cross-entropy).
        grad_clip: clip the gradient norm to this value (None: off).
        seed: seed of initialization, data order and stochastic binarization.
        threads: torch threads per process (0: all cores divided by the number of processes).
        deterministic: ask torch for deterministic algorithms (during the run).
        device: ``auto`` (CUDA if available, else MPS, else the CPU), ``cpu``, ``cuda``,
            ``cuda:N`` or ``mps`` (:func:`onebit.devices.resolve_device`; under torchrun each
            process takes the GPU of its LOCAL_RANK).
        precision: ``fp32``, ``bf16`` (autocast; on a CPU only where it has AMX or AVX512_BF16)
            or ``fp16`` (autocast and a gradient scaler; CUDA only). Evaluation runs in it too.
        compile: wrap the model in ``torch.compile`` (static shapes: one compilation per
            batch shape, 30-40 s each on 2 cores). Off by default: on this project's CPU it
            made a full-precision ResNet-20 step 0.87x (fp32) and 0.76x (bf16) as long
            (records/2026-12-07_epoch_time_resnet20), and a binarized one 0.68-0.84x in bf16
            (bc, bwn, lab, bnn++, gwt, proxquant, bnn; scratch, one thread, batch 128, machine
            shared) but xnor 1.17x; inductor failed on binary conv layers until their weight
            buffers were skipped under compilation (they broke the graph at every layer).
        gemm: the kernel of the fully connected layers' matrix products on the CPU
            (:mod:`onebit.gemm`): ``torch`` (torch's own), ``onebit`` (the native AVX-512 kernel,
            which then also takes the run's threads while torch's other ops run on one), or
            ``auto`` (``onebit`` only for models whose parameters all sit in linear and
            normalization layers, and only where a short measurement on this machine, cached,
            found the kernel faster than torch's; ``torch`` otherwise, and always under
            ``compile``).
        channels_last: use the channels-last memory format for conv nets (models with a
            ``Conv2d``; others ignore it). On by default, on every device and precision: a
            ResNet-20 step took 0.78x (fp32) and 0.83x (bf16) the time of NCHW on this project's
            CPU (benchmarks/bench_epoch_time.py), and it is the layout cuDNN's bf16/fp16
            convolutions prefer.
        eval_batch_size: batch size of evaluation.
        tensorboard: also write TensorBoard event files into the run folder (needs tensorboard).
    """

    epochs: int = 10
    batch_size: int = 100
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_final: float | None = None
    schedule: str = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    decay_norm: bool = True
    loss: str = "ce"
    grad_clip: float | None = None
    seed: int = 0
    threads: int = 0
    deterministic: bool = True
    device: str = "auto"
    precision: str = "fp32"
    label_smoothing: float = 0.0
    warmup: float = 0.0
    compile: bool = False
    gemm: str = "auto"
    channels_last: bool = True
    eval_batch_size: int = 1000
    tensorboard: bool = False


@dataclass
class History:
    """What a run produced: one dict per epoch, and the test accuracy at best validation and last."""

    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any]:
        """The epoch with the highest validation accuracy (the earliest on ties); for sequence
        models (epochs logging ``val_bpc``), the one with the lowest validation bits per character.

        Epochs marked ``partial`` (a layer-by-layer schedule had left some binarizable layer
        float) are not candidates while another epoch is: the reported model is the binary one.
        """
        eligible = [r for r in self.epochs if not r.get("partial")] or self.epochs
        if all("val_bpc" in r for r in eligible):  # language models: the lowest validation loss
            return min(eligible, key=lambda r: (r["val_bpc"], r["epoch"]))
        return max(eligible, key=lambda r: (r["val_acc"], -r["epoch"]))

    @property
    def last(self) -> dict[str, Any]:
        """The last epoch."""
        return self.epochs[-1]

    def summary(self) -> dict[str, Any]:
        """Test accuracy at the best-validation epoch and at the last one."""
        out = {
            "best_epoch": self.best["epoch"],
            "val_acc_best": self.best["val_acc"],
            "test_acc_best_val": self.best["test_acc"],
            "test_acc_last": self.last["test_acc"],
            "epochs": len(self.epochs),
            "seconds": sum(r["seconds"] for r in self.epochs),
        }
        if "test_bpc" in self.last:  # language models: test cross-entropy in bits per character
            out["val_bpc_best"] = self.best["val_bpc"]
            out["test_bpc_best_val"] = self.best["test_bpc"]
            out["test_bpc_last"] = self.last["test_bpc"]
        # method-specific numbers of the last epoch (relaxed accuracy, fraction off ±1, ...)
        for key in ("relaxed_test_acc", "off_binary"):
            if key in self.last:
                out[key] = self.last[key]
        return out


def model_logits(out: Any, y: Tensor) -> Tensor:
    """The logits in a model's output, with the class dimension where the losses want it (1).

    Accepted: a tensor, a dict or Hugging Face ``ModelOutput`` with ``logits``, a tuple whose
    first entry is the logits. Sequence outputs ``(N, T, C)`` for targets ``(N, T)`` (Hugging
    Face's layout) become ``(N, C, T)`` (PyTorch's, which onebit's own models return).

    Raises:
        OnebitError: the output holds no tensor, or its shape fits the targets in no layout.
    """
    logits = first_tensor(out)
    if logits is None:
        raise OnebitError(
            f"the model returned {type(out).__name__} without a tensor; return the logits, a "
            "dict or ModelOutput with 'logits', or a tuple starting with them."
        )
    if logits.dim() == y.dim() + 1 and logits.shape[0] == y.shape[0]:
        if logits.shape[2:] == y.shape[1:]:
            return logits  # class dimension 1
        if logits.shape[1:-1] == y.shape[1:]:
            return logits.movedim(-1, 1)  # class dimension last
    raise OnebitError(
        f"the model's output has shape {tuple(logits.shape)}, which does not fit targets of "
        f"shape {tuple(y.shape)}: expected (N, classes) or, for sequences, (N, classes, T) or "
        "(N, T, classes)."
    )


def squared_hinge(logits: Tensor, y: Tensor) -> Tensor:
    """Squared hinge loss of BinaryConnect/LAB: ``mean(max(0, 1 - t * logits)^2)``, ``t = ±1`` one-hot."""
    t = F.one_hot(y, logits.shape[1]).to(logits.dtype).mul_(2).sub_(1)
    return F.relu(1 - t * logits).square().mean()


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ce": F.cross_entropy,
    "hinge": squared_hinge,
}


SCHEDULES = ("constant", "exp", "exp_step", "cosine", "multistep", "onecycle")
PER_STEP_SCHEDULES = frozenset({"exp_step", "onecycle"})
"""Schedules whose rate changes every optimizer step, not once per epoch."""
OPTIMIZERS = ("adam", "sgd")


def _bad(key: str, value: Any, accepted: str) -> OnebitError:
    return OnebitError(f"train.{key} = {value!r} is not accepted; give {accepted}.")


def check_recipe(cfg: TrainConfig) -> None:
    """Raise one OnebitError sentence for a recipe that cannot train: epochs or batch sizes
    below 1, a learning rate (or ``lr_final``, ``gamma``, ``momentum``, ``weight_decay``,
    ``grad_clip``) that is NaN, infinite or out of range, an unknown optimizer, loss or schedule.
    ``onebit.train`` and the config reader both call it, before anything is written."""

    def whole(key: str, low: int) -> None:
        v = getattr(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise _bad(key, v, f"a whole number >= {low}")

    def real(key: str, ok: Callable[[float], bool], accepted: str, optional: bool = False) -> None:
        v = getattr(cfg, key)
        if optional and v is None:
            return
        good = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not good or not ok(float(v)):
            raise _bad(key, v, accepted)

    whole("epochs", 1)
    whole("batch_size", 1)
    whole("eval_batch_size", 1)
    whole("seed", 0)
    whole("threads", 0)
    real("lr", lambda v: v > 0, "a finite learning rate > 0")
    if cfg.schedule in ("exp", "exp_step"):
        real("lr_final", lambda v: v > 0, "a finite rate > 0 for an exp schedule, or none", True)
    else:
        real("lr_final", lambda v: v >= 0, "a finite rate >= 0, or none", True)
    real("gamma", lambda v: v > 0, "a finite factor > 0")
    real("momentum", lambda v: 0 <= v < 1, "a finite momentum in [0, 1)")
    real("weight_decay", lambda v: v >= 0, "a finite weight decay >= 0")
    real("grad_clip", lambda v: v > 0, "a finite gradient norm > 0, or none", True)
    real("label_smoothing", lambda v: 0 <= v < 1, "a finite fraction in [0, 1)")
    real("warmup", lambda v: 0 <= v < 1, "a finite fraction of training in [0, 1)")
    if cfg.label_smoothing and cfg.loss != "ce":
        raise _bad("label_smoothing", cfg.label_smoothing, "0 with train.loss = 'hinge'")
    check_device_spec(cfg.device)
    if not isinstance(cfg.milestones, list | tuple) or not all(
        isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in cfg.milestones
    ):
        raise _bad("milestones", cfg.milestones, "a list of epochs, whole numbers >= 0")
    for key, allowed in (
        ("optimizer", OPTIMIZERS),
        ("loss", tuple(LOSSES)),
        ("schedule", SCHEDULES),
        ("precision", PRECISIONS),
    ):
        if getattr(cfg, key) not in allowed:
            raise _bad(key, getattr(cfg, key), "one of " + ", ".join(allowed))


def _check_finite(loss: float, epoch: int, cfg: TrainConfig) -> None:
    """A NaN or infinite training loss ends the run with one sentence (before the epoch is
    saved, so ``last.pt`` keeps the last finite epoch) instead of training on garbage."""
    if not math.isfinite(loss):
        raise OnebitError(
            f"training diverged in epoch {epoch + 1}: the training loss is {loss}; lower "
            f"train.lr (now {cfg.lr:g}) or check the data for NaN or Inf values."
        )


class _dist_errors:  # a context manager, named like the function it reads as
    """Turn a failed collective under torchrun (a timeout, a lost process) into one sentence."""

    def __init__(self, dist_: Any) -> None:
        self.dist = dist_

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: Any, e: BaseException | None, tb: Any) -> bool:
        if e is None or self.dist.world_size <= 1 or isinstance(e, OnebitError):
            return False
        if isinstance(e, RuntimeError) and _is_dist_failure(e):
            raise OnebitError(_dist_failure(e, self.dist.rank, self.dist.world_size)) from None
        return False


def lr_at(epoch: int, cfg: TrainConfig, frac: float = 0.0) -> float:
    """Learning rate of ``epoch`` (0-based), ``frac`` of the way through it (per-step schedules
    only): a pure function of the position in training and the recipe.

    - ``constant``: ``lr``;
    - ``exp``: ``lr * (lr_final / lr) ** (epoch / (epochs - 1))``, geometric from lr to lr_final,
      one rate per epoch (the last epoch runs at lr_final);
    - ``exp_step``: ``lr * (lr_final / lr) ** ((epoch + frac) / epochs)``, the same decay applied
      at every step and reaching lr_final at the end of training, as Keras' ``ExponentialDecay``;
    - ``cosine``: ``lr_final + (lr - lr_final) * (1 + cos(pi * epoch / epochs)) / 2``;
    - ``multistep``: ``lr * gamma ** (number of milestones <= epoch)``;
    - ``onecycle``: with ``t = (epoch + frac) / epochs`` and ``w = warmup``, linear from
      ``lr / 10`` at ``t = 0`` to ``lr`` at ``t = w``, then linear to ``lr_final`` (default 0) at
      ``t = 1`` (Smith & Topin's one cycle with a linear anneal, as fast CIFAR-10 recipes use).

    Raises:
        OnebitError: an unknown schedule.
    """
    final = cfg.lr_final if cfg.lr_final is not None else 0.0
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule in ("exp", "exp_step"):
        final = cfg.lr_final if cfg.lr_final is not None else cfg.lr * 0.1
        if cfg.schedule == "exp_step":
            return cfg.lr * (final / cfg.lr) ** ((epoch + frac) / max(1, cfg.epochs))
        return cfg.lr * (final / cfg.lr) ** (epoch / max(1, cfg.epochs - 1))
    if cfg.schedule == "cosine":
        return final + (cfg.lr - final) * (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule == "onecycle":
        return _one_cycle((epoch + frac) / max(1, cfg.epochs), cfg.lr, final, cfg.warmup)
    raise OnebitError(f"unknown train.schedule {cfg.schedule!r}; accepted: {', '.join(SCHEDULES)}.")


def _one_cycle(t: float, peak: float, final: float, warmup: float) -> float:
    """The one-cycle rate at training progress ``t`` in [0, 1]: up from ``peak / 10``, down to
    ``final``."""
    start = peak / 10
    if t < warmup:
        return start + (peak - start) * t / warmup
    return peak + (final - peak) * (t - warmup) / (1 - warmup)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, groups: list[dict[str, Any]] | None = None
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, L2) or Adam, as the recipe says, over ``groups`` (default: all).

    A group may carry ``lr_scale``: ``train`` sets its rate to ``lr_scale * lr_at(epoch)``.
    """
    params = groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if not cfg.decay_norm:
        params = _split_decay(params)
    # The fused kernels are several times faster than the default for-each path on CPU and GPU.
    fused = all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
        for g in params
        for p in g["params"]
    )
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            fused=fused,
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def _split_decay(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each group as two: its parameters of 2+ dimensions, and its 1-D ones with no decay."""
    out: list[dict[str, Any]] = []
    for g in groups:
        many = [p for p in g["params"] if p.dim() > 1]
        one = [p for p in g["params"] if p.dim() <= 1]
        out += [{**g, "params": many}] if many else []
        out += [{**g, "params": one, "weight_decay": 0.0}] if one else []
    return out


@dataclass(frozen=True)
class _Dist:
    """Process group facts; world_size 1 outside torchrun."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


DIST_TIMEOUT_ENV = "ONEBIT_DIST_TIMEOUT"
DIST_TIMEOUT_DEFAULT = 300.0
"""Seconds a process waits for the others at a collective (gloo's own default is 30 minutes)."""


def dist_timeout() -> float:
    """The collective timeout under torchrun: ``$ONEBIT_DIST_TIMEOUT`` seconds (default 300)."""
    text = os.environ.get(DIST_TIMEOUT_ENV, "").strip()
    if not text:
        return DIST_TIMEOUT_DEFAULT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise OnebitError(
            f"{DIST_TIMEOUT_ENV} = {text!r} is not accepted; give the seconds a process waits "
            "for the others, a number > 0."
        )
    return value


def _world() -> tuple[int, int]:
    """``(WORLD_SIZE, LOCAL_RANK)`` of this process (1 and 0 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))


def _run_device(cfg: TrainConfig) -> torch.device:
    """The run's device (under torchrun: this process's GPU, made torch's current CUDA device so
    that NCCL and ``.cuda()`` use it)."""
    world, local_rank = _world()
    device = resolve_device(cfg.device, local_rank=local_rank, world_size=world)
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(device)
    return device


def _init_distributed(backend: str = "gloo") -> _Dist:
    """Join the process group under torchrun (``backend``: NCCL for CUDA processes, gloo for
    CPU ones); a single process outside it."""
    world = _world()[0]
    if world <= 1:
        return _Dist()
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=dist_timeout())
        try:
            dist.init_process_group(backend, timeout=timeout)
        except (RuntimeError, ValueError) as e:
            raise OnebitError(_dist_failure(e, int(os.environ.get("RANK", "0")), world)) from None
    return _Dist(dist.get_rank(), dist.get_world_size())


def _dist_failure(e: BaseException, rank: int, world: int) -> str:
    """One sentence for a failed collective (a timeout, a lost peer) of process ``rank``."""
    text = str(e).lower()
    if "timed out" in text or "timeout" in text:
        what = f"waited more than {dist_timeout():g} s ({DIST_TIMEOUT_ENV}) for the others"
    else:
        what = f"lost contact with the others ({str(e).splitlines()[0][:120]})"
    return (
        f"process {rank} of {world} {what}; another process stopped or died (see its output), "
        "so this one stops too."
    )


def _is_dist_failure(e: BaseException) -> bool:
    """Whether ``e`` comes from torch.distributed's collectives or store (not from the model)."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return any(
        k in text for k in ("gloo", "nccl", "timed out", "connection closed", "reset by peer")
    )


def _reduce_sum(values: list[float | Tensor], dist_: _Dist) -> list[float]:
    """``values`` summed over the processes (as float64; unchanged with one process)."""
    if dist_.world_size <= 1:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's RNGs."""
    import random

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or, for a model without any, its buffers) are."""
    t = next(model.parameters(), None)
    t = t if t is not None else next(model.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def _sum_dtype(device: torch.device) -> torch.dtype:
    # sums of a split's losses: float64 as Python's floats were, where the device has it
    return torch.float32 if device.type == "mps" else torch.float64


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    data: Dataset,
    batch_size: int = 1000,
    loss: str = "ce",
    channels_last: bool = False,
    precision: str | Precision = "fp32",
) -> tuple[float, float]:
    """Loss and accuracy of the hard-binarized model (eval mode: binary layers use ``sign(w)``).

    Runs on the model's device (batches of a split held elsewhere are copied there), under
    ``precision`` (``fp32``, ``bf16``, ``fp16`` or a resolved :class:`onebit.devices.Precision`):
    autocast rounds the products, never the binary weights. Sums stay on the device until the
    end (no synchronization per batch).
    """
    if len(split) == 0:
        return float("nan"), float("nan")
    device = _model_device(model)
    if isinstance(precision, str):
        precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=_sum_dtype(device), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    n = 0
    loss_fn = LOSSES[loss]
    try:
        for x, y in batches(
            split, batch_size, mean=data.mean, std=data.std, channels_last=channels_last
        ):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with precision.autocast():
                out = model_logits(model(x), y)
            out = out.float()  # the loss and the arg max of fp32 logits
            total += loss_fn(out, y).to(total.dtype) * y.numel()  # per token for sequences
            correct += (out.argmax(1) == y).sum()
            n += y.numel()
    finally:
        model.train(was_training)
    return total.item() / n, correct.item() / n


NEAR_ZERO = 1e-3


def weight_signs(model: nn.Module) -> dict[str, Tensor]:
    """The sign bit (``w >= 0``) of every binary layer's latent weight, by layer name."""
    return {
        n: (m.weight.detach() >= 0).clone()
        for n, m in model.named_modules()
        if is_binary_layer(m) and m.binary
    }


def diagnostics(model: nn.Module, signs_before: dict[str, Tensor]) -> dict[str, Any]:
    """Per binary layer and overall: the fraction of weights whose sign flipped since
    ``signs_before`` (``flip_rate``), and of latent weights with ``|w| < 1e-3`` (``near_zero``).

    A flip rate that falls to ~0 early says the binary weights froze; a large near-zero fraction says
    many signs are decided by noise.
    """
    flips, near, total = {}, {}, 0
    n_flip = n_near = 0
    for n, m in model.named_modules():
        if not (is_binary_layer(m) and m.binary):
            continue
        w = m.weight.detach()
        near_n = int((w.abs() < NEAR_ZERO).sum())
        near[n] = near_n / w.numel()
        n_near += near_n
        if n in signs_before:
            f = int(((w >= 0) != signs_before[n]).sum())
            flips[n] = f / w.numel()
            n_flip += f
        total += w.numel()
    if total == 0:
        return {}
    return {
        "flip_rate": n_flip / total,
        "near_zero": n_near / total,
        "flip_rate_layers": flips,
        "near_zero_layers": near,
    }


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _train_loss(cfg: TrainConfig) -> Callable[[Tensor, Tensor], Tensor]:
    """The recipe's training loss: ``LOSSES[cfg.loss]``, with label smoothing when it asks."""
    if cfg.loss == "ce" and cfg.label_smoothing:
        return functools.partial(F.cross_entropy, label_smoothing=cfg.label_smoothing)
    return LOSSES[cfg.loss]


class TrainStep:
    """One optimizer step of :func:`train` (also for one's own loop, and for benchmarks).

    ``step(x, y, lr, epoch=e, epochs=n)`` runs the forward pass of ``net`` (the model, or DDP /
    ``torch.compile`` around it; the teacher's too when distilling) under the precision's
    autocast, the method's training loss on fp32 logits, the backward pass (through a gradient
    scaler for fp16), the recipe's gradient clip, the optimizer's step and the method's after-step
    hook, and returns the detached loss and logits.

    Args:
        model: the model being trained (the method's hooks see it).
        method: the method (loss and after-step hook).
        opt: the optimizer.
        cfg: the recipe (loss, label smoothing, gradient clip).
        net: what the forward pass calls (default: ``model``).
        precision: autocast dtype and scaler (default: fp32 on the model's device).
        teacher: the distillation teacher, or None.
    """

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        opt: torch.optim.Optimizer,
        cfg: TrainConfig,
        *,
        net: nn.Module | None = None,
        precision: Precision | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        self.model, self.method, self.opt, self.cfg = model, method, opt, cfg
        self.net = net if net is not None else model
        self.precision = precision or Precision(device_type=_model_device(model).type)
        self.teacher = teacher
        self.loss_fn = _train_loss(cfg)
        self.scaler = self.precision.grad_scaler()
        if self.scaler is not None:
            # A fused optimizer tells the scaler it skips an overflowed step itself, but it skips
            # only its own parameter update: work done after it (LAB's accumulator and scale)
            # would read infinite gradients. Without the flag the scaler skips the whole step().
            opt._step_supports_amp_scaling = False  # type: ignore[attr-defined]

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        lr: float,
        *,
        epoch: int = 0,
        epochs: int = 1,
        step: int = 0,
        steps: int = 0,
    ) -> tuple[Tensor, Tensor]:
        teacher_logits = None
        with self.precision.autocast():
            logits = model_logits(self.net(x), y)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = model_logits(self.teacher(x), y).float()
        logits = logits.float()  # losses in fp32 (a no-op without autocast)
        loss = self.method.training_loss(logits, y, self.loss_fn(logits, y), teacher_logits)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)  # the clip and the optimizer see true gradients
        if self.cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.scaler is None:
            self.opt.step()
        elif not self._scaled_step():
            return loss.detach(), logits.detach()  # overflowed: skipped whole, hooks included
        self.method.after_step(
            self.model, lr, epoch=epoch, epochs=epochs, optimizer=self.opt, step=step, steps=steps
        )
        return loss.detach(), logits.detach()

    def _scaled_step(self) -> bool:
        """The optimizer's step through the gradient scaler; False when it was skipped because a
        gradient overflowed (the scaler then lowers its scale, and only then)."""
        assert self.scaler is not None
        scale = self.scaler.get_scale()
        self.scaler.step(self.opt)
        self.scaler.update()
        return self.scaler.get_scale() >= scale


@dataclass
class _Run:
    """What one call of :func:`train` holds between epochs."""

    model: nn.Module
    method: Method
    data: Dataset  # on the run's device
    cfg: TrainConfig
    opt: torch.optim.Optimizer
    step: TrainStep
    dist: _Dist
    device: torch.device
    precision: Precision
    out: Path | None
    history: History
    start: int
    channels_last: bool
    extra_state: dict[str, Any]
    progress: bool
    board: Any = None


def _threads(cfg: TrainConfig, dist: _Dist) -> int | None:
    """torch threads of the run: the recipe's, or the CPUs shared by the processes under torchrun
    (None: leave torch's setting)."""
    if cfg.threads > 0:
        return cfg.threads
    return default_threads(dist.world_size) if dist.world_size > 1 else None


def _gemm_choice(cfg: TrainConfig, device: torch.device, precision: Precision) -> str:
    """``cfg.gemm``, or ``torch`` where onebit's kernel does not apply: it multiplies fp32 on
    the CPU, and torch.compile keeps torch's own products."""
    if device.type == "cpu" and precision.dtype is None:
        return "torch" if cfg.compile else cfg.gemm
    if cfg.gemm == "onebit":
        raise OnebitError(
            f"train.gemm = 'onebit' multiplies in fp32 on the CPU, but the run is "
            f"{precision.name} on {device.type}; use train.gemm = 'torch' or 'auto'."
        )
    return "torch"


def _device_rng_state(device: torch.device) -> dict[str, Tensor]:
    """The generator state of an accelerator (stochastic binarization and dropout draw there)."""
    if device.type == "cuda":
        return {"cuda": torch.cuda.get_rng_state(device)}
    if device.type == "mps":
        return {"mps": torch.mps.get_rng_state()}
    return {}


def _set_device_rng_state(device: torch.device, state: dict[str, Any]) -> None:
    """Restore :func:`_device_rng_state` (a run resumed on another kind of device skips it)."""
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def _setup(
    model: nn.Module,
    method: Method,
    data: Dataset,
    cfg: TrainConfig,
    dist: _Dist,
    run_dir: str | Path | None,
    resume: bool,
    teacher: nn.Module | None,
    precision: Precision,
    device: torch.device,
) -> _Run:
    """Device and memory format, optimizer, the run's start (a checkpoint to resume, or the
    method's init weights), DDP and compile wrappers, the step, the metrics file and TensorBoard."""
    channels_last = cfg.channels_last and _has_conv(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    data = to_device(data, device)
    opt = method.make_optimizer(model, cfg) or make_optimizer(
        model, cfg, method.param_groups(model)
    )
    history = History()
    start = 0
    state: dict[str, Any] = {}
    out = Path(run_dir) if run_dir is not None else None
    if out is not None and dist.main:
        out.mkdir(parents=True, exist_ok=True)
    if resume and out is not None and (out / "last.pt").exists():
        state = load_checkpoint(out / "last.pt")
        load_model_state(model, state["model"], str(out / "last.pt"))
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        _set_device_rng_state(device, state["rng"])
        history.epochs = list(state["history"])
        start = state["epoch"] + 1
        log.info("resuming %s at epoch %d", out, start + 1)
    elif method.init_checkpoint is not None:  # a resumed run keeps its own weights
        load_init_(model, method.init_checkpoint)
        log.info("starting from %s", method.init_checkpoint)
    if method.distill_from is not None and teacher is None:
        raise OnebitError(
            f"method {method.name!r} distils from {method.distill_from}: pass its model as "
            "train(..., teacher=...) (onebit's runs load it themselves)."
        )
    if teacher is not None:
        teacher.to(device).eval().requires_grad_(False)
    net: nn.Module = model
    if dist.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        net = torch.compile(net, dynamic=False)  # static shapes (test_compile_*, test_precision.py)
    step = TrainStep(model, method, opt, cfg, net=net, precision=precision, teacher=teacher)
    if step.scaler is not None and "grad_scaler" in state:
        step.scaler.load_state_dict(state["grad_scaler"])
    run = _Run(model, method, data, cfg, opt, step, dist, device, precision, out, history, start,
               channels_last, {}, False)  # fmt: skip
    if out is not None and dist.main:
        _rewrite_metrics(out / "metrics.jsonl", history.epochs)
        if cfg.tensorboard:
            run.board = _tensorboard(out)
    return run


def _train_epoch(run: _Run, epoch: int, lr: float) -> tuple[float, dict[str, Any]]:
    """One pass over the shuffled training set at base rate ``lr`` (per-step schedules change it
    as they go); returns the last rate and the train metrics."""
    model, cfg, opt = run.model, run.cfg, run.opt
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    model.train()
    it = batches(
        run.data.train,
        cfg.batch_size,
        mean=run.data.mean,
        std=run.data.std,
        shuffle=True,
        generator=gen,
        augment=run.data.augment,
        rank=run.dist.rank,
        world_size=run.dist.world_size,
        channels_last=run.channels_last,
    )
    steps = num_batches(len(run.data.train), cfg.batch_size, drop_last=False)
    bar = _bar(it, steps, f"epoch {epoch + 1}/{cfg.epochs}", run.progress and run.dist.main)
    # sums on the device, read once at the end: the loop never waits on a synchronization
    tot_loss = torch.zeros((), device=run.device)
    tot_correct = torch.zeros((), dtype=torch.long, device=run.device)
    seen = 0
    per_step = cfg.schedule in PER_STEP_SCHEDULES
    for i, (x, y) in enumerate(bar):
        if per_step:
            lr = lr_at(epoch, cfg, i / steps)
            _set_lr(opt, lr)
        loss, logits = run.step(
            x,
            y,
            lr,
            epoch=epoch,
            epochs=cfg.epochs,
            step=epoch * steps + i,
            steps=cfg.epochs * steps,
        )
        tot_loss += loss * y.numel()  # y.numel(): tokens, for sequence targets
        tot_correct += (logits.argmax(1) == y).sum()
        seen += y.numel()
    if run.dist.world_size > 1:  # every process's shard counts, not the main process's alone
        loss_sum, correct, seen_all = _reduce_sum([tot_loss, tot_correct, seen], run.dist)
        return lr, {
            "train_loss": loss_sum / max(seen_all, 1),
            "train_acc": correct / max(seen_all, 1),
        }
    return lr, {
        "train_loss": tot_loss.item() / max(seen, 1),
        "train_acc": tot_correct.item() / max(seen, 1),
    }


def _evaluate_epoch(run: _Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validation and test loss and accuracy of the hard-binarized model, and the extra numbers
    (the method's own, bits per token, the relaxed model's accuracy)."""
    model, data, cfg = run.model, run.data, run.cfg
    ev = dict(
        batch_size=cfg.eval_batch_size,
        loss=cfg.loss,
        channels_last=run.channels_last,
        precision=run.precision,
    )
    val_loss, val_acc = evaluate(model, data.val, data, **ev)
    test_loss, test_acc = evaluate(model, data.test, data, **ev)
    if math.isnan(val_acc):  # no validation split: select on test, and say so in the record
        val_loss, val_acc = test_loss, test_acc
    main = {"val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc}
    extra: dict[str, Any] = dict(run.method.metrics(model))
    if cfg.loss == "ce" and data.train.y.dim() > 1:  # sequences: cross-entropy in bits/token
        extra.update(val_bpc=val_loss / math.log(2), test_bpc=test_loss / math.log(2))
    if run.method.relaxed_eval:  # the relaxed model (training forward weights), beside the hard one
        with relaxed(model):
            extra["relaxed_test_acc"] = evaluate(model, data.test, data, **ev)[1]
    return main, extra


def _save_epoch(run: _Run, epoch: int, rec: dict[str, Any]) -> None:
    """best.pt (when this epoch is the best), last.pt, the metrics line, TensorBoard."""
    out = run.out
    if out is None or not run.dist.main:
        return
    common = {**run.extra_state, "epoch": epoch}
    if run.history.best["epoch"] == epoch:
        save_checkpoint(out / "best.pt", model=run.model.state_dict(), **common)
    scaler = run.step.scaler
    save_checkpoint(
        out / "last.pt",
        model=run.model.state_dict(),
        optimizer=run.opt.state_dict(),
        rng={**rng_state(), **_device_rng_state(run.device)},
        history=run.history.epochs,
        **({"grad_scaler": scaler.state_dict()} if scaler is not None else {}),
        **common,
    )
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    if run.board is not None:
        for k, v in rec.items():
            if isinstance(v, float | int) and k != "epoch":
                run.board.add_scalar(k, v, epoch)
        run.board.flush()


def _log_placement(run: _Run) -> None:
    """One line: where and how the run trains."""
    cfg = run.cfg
    log.info(
        "training on %s (%s), %s%s%s",
        run.device,
        device_name(run.device),
        run.precision.describe(),
        ", channels_last" if run.channels_last else "",
        ", torch.compile" if cfg.compile else "",
    )


def train(
    model: nn.Module,
    method: Method,
    data: Dataset,
    cfg: TrainConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    extra_state: dict[str, Any] | None = None,
    teacher: nn.Module | None = None,
) -> History:
    """Train ``model`` (already binarized by ``onebit.binarize_``) with ``method`` under ``cfg``.

    Args:
        model: the model to train in place.
        method: supplies optimizer (when it carries one), per-epoch and after-step hooks, the
            weights to start from (``init_checkpoint``) and the loss (``training_loss``).
        data: train/val/test splits.
        cfg: the recipe.
        run_dir: where metrics.jsonl, last.pt (full checkpoint) and best.pt (weights at the best
            validation epoch) go; None keeps everything in memory.
        resume: continue from ``run_dir/last.pt`` when it exists.
        progress: show a progress bar (main process only).
        extra_state: merged into every checkpoint (``onebit.experiments.runs`` stores the config).
        teacher: the distillation teacher, for methods whose ``distill_from`` names one.

    Returns:
        The history; ``history.summary()`` has the test accuracy at the best validation epoch and at
        the last one, both of the hard-binarized model.

    The run trains on ``cfg.device`` in ``cfg.precision`` (one log line says which); the model and
    the teacher return to the device they came from when it ends, and ``data`` is not changed (a
    copy of it lives on the device during the run). torch's threads and determinism flags hold
    for the run and are restored afterwards (:func:`onebit.settings.torch_settings`), as is the
    CPU GEMM mode of ``cfg.gemm``.
    """
    check_recipe(cfg)
    device = _run_device(cfg)
    precision = resolve_precision(cfg.precision, device)
    gemm = _gemm_choice(cfg, device, precision)
    dist = _init_distributed(dist_backend(device))
    if cfg.batch_size % dist.world_size:
        raise OnebitError(
            f"train.batch_size {cfg.batch_size} must be divisible by the {dist.world_size} processes."
        )
    homes = [(m, _model_device(m)) for m in (model, teacher) if m is not None]
    deterministic = True if cfg.deterministic else None
    with torch_settings(threads=_threads(cfg, dist), deterministic=deterministic):
        try:
            with _dist_errors(dist):  # DDP's first broadcast
                run = _setup(
                    model, method, data, cfg, dist, run_dir, resume, teacher, precision, device
                )
            run.extra_state, run.progress = dict(extra_state or {}), progress
            if dist.main:
                _log_placement(run)
            _train_epochs(run, gemm)
        finally:
            for m, home in homes:  # back where the caller had it
                m.to(home)
    return run.history


def _train_epochs(run: _Run, gemm: str) -> None:
    """The epochs of a set-up run, under the CPU GEMM mode ``gemm`` (:mod:`onebit.gemm`)."""
    model, method, cfg, dist = run.model, run.method, run.cfg, run.dist
    with gemm_backend(gemm, model, batch=cfg.batch_size // dist.world_size) as backend:
        if dist.main and backend.name != "torch":
            log.info("matrix products of linear layers: %s kernel", backend.name)
        for epoch in range(run.start, cfg.epochs):
            t0 = time.perf_counter()
            lr = lr_at(epoch, cfg)
            _set_lr(run.opt, lr)
            method.on_epoch_start(model, epoch, cfg.epochs)
            signs_before = weight_signs(model)
            with _dist_errors(dist):
                lr, trained = _train_epoch(run, epoch, lr)
            _check_finite(trained["train_loss"], epoch, cfg)
            train_seconds = time.perf_counter() - t0
            main, extra = _evaluate_epoch(run)
            rec = {
                "epoch": epoch,
                "lr": lr,
                **trained,
                **main,
                "train_seconds": train_seconds,
                "seconds": time.perf_counter() - t0,
                "gemm": backend.name,
                "device": str(run.device),
                "precision": run.precision.name,
                **({"partial": True} if is_partial(model.modules()) else {}),
                **extra,
                **diagnostics(model, signs_before),
            }
            run.history.epochs.append(rec)
            (log.info if dist.main else log.debug)(  # one process reports
                "epoch %d/%d  loss %.4f  train %.4f  val %.4f  test %.4f  (%.1fs)",
                epoch + 1, cfg.epochs, rec["train_loss"], rec["train_acc"],
                rec["val_acc"], rec["test_acc"], rec["seconds"],
            )  # fmt: skip
            _save_epoch(run, epoch, rec)


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise OnebitError(
            "train.tensorboard = true needs the tensorboard package: pip install tensorboard."
        ) from None
    return SummaryWriter(str(out / "tensorboard"))


def _rewrite_metrics(path: Path, epochs: list[dict[str, Any]]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in epochs))


def _bar(it: Any, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)
