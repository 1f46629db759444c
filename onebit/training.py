"""One plain training loop: train(), evaluate(), the recipe (TrainConfig), DDP under torchrun.

Every epoch: set the learning rate from a pure function of the epoch, let the method update its
schedule, train over the shuffled training set (order seeded by ``seed`` and the epoch), apply the
method's after-step hook (latent clipping, proximal steps), then evaluate the hard-binarized model
(``model.eval()`` makes binary layers use ``sign(w)``) on validation and test, write one JSON line of
metrics and a checkpoint (model, optimizer, epoch, RNG state, history; ``onebit.checkpoint``) to a
temporary file renamed over the old one. ``resume=True`` restores all of it, so a killed run
continues to the same result as an uninterrupted one. Process-wide torch settings (threads,
determinism, the CPU GEMM mode) hold for the run and are restored when it ends.
"""

from __future__ import annotations

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
            ``multistep`` (times ``gamma`` at each of ``milestones``).
        milestones: epochs at which ``multistep`` multiplies the rate by ``gamma``.
        gamma: the ``multistep`` factor.
        momentum: SGD momentum. nesterov: Nesterov momentum for SGD.
        weight_decay: L2 penalty (SGD) or decoupled decay (AdamW-style is not used: Adam's own).
        loss: ``ce`` (cross-entropy) or ``hinge`` (squared hinge, BinaryConnect/LAB).
        grad_clip: clip the gradient norm to this value (None: off).
        seed: seed of initialization, data order and stochastic binarization.
        threads: torch threads per process (0: all cores divided by the number of processes).
        deterministic: ask torch for deterministic algorithms (during the run).
        compile: wrap the model in ``torch.compile``.
        gemm: the kernel of the fully connected layers' matrix products on the CPU
            (:mod:`onebit.gemm`): ``torch`` (torch's own), ``onebit`` (the native AVX-512 kernel,
            which then also takes the run's threads while torch's other ops run on one), or
            ``auto`` (``onebit`` only for models whose parameters all sit in linear and
            normalization layers, and only where a short measurement on this machine, cached,
            found the kernel faster than torch's; ``torch`` otherwise, and always under
            ``compile``).
        channels_last: use the channels-last memory format for conv nets.
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
    loss: str = "ce"
    grad_clip: float | None = None
    seed: int = 0
    threads: int = 0
    deterministic: bool = True
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


SCHEDULES = ("constant", "exp", "exp_step", "cosine", "multistep")
PER_STEP_SCHEDULES = frozenset({"exp_step"})
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
    if not isinstance(cfg.milestones, list | tuple) or not all(
        isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in cfg.milestones
    ):
        raise _bad("milestones", cfg.milestones, "a list of epochs, whole numbers >= 0")
    for key, allowed in (
        ("optimizer", OPTIMIZERS),
        ("loss", tuple(LOSSES)),
        ("schedule", SCHEDULES),
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
    - ``multistep``: ``lr * gamma ** (number of milestones <= epoch)``.

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
    raise OnebitError(f"unknown train.schedule {cfg.schedule!r}; accepted: {', '.join(SCHEDULES)}.")


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


def _init_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=dist_timeout())
        try:
            dist.init_process_group(
                "nccl" if torch.cuda.is_available() else "gloo", timeout=timeout
            )
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


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    data: Dataset,
    batch_size: int = 1000,
    loss: str = "ce",
    channels_last: bool = False,
) -> tuple[float, float]:
    """Loss and accuracy of the hard-binarized model (eval mode: binary layers use ``sign(w)``)."""
    if len(split) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    total, correct, n = 0.0, 0, 0
    loss_fn = LOSSES[loss]
    try:
        for x, y in batches(
            split, batch_size, mean=data.mean, std=data.std, channels_last=channels_last
        ):
            out = model_logits(model(x), y)
            total += loss_fn(out, y).item() * y.numel()  # per token for sequence targets
            correct += (out.argmax(1) == y).sum().item()
            n += y.numel()
    finally:
        model.train(was_training)
    return total / n, correct / n


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


@dataclass
class _Run:
    """What one call of :func:`train` holds between epochs."""

    model: nn.Module
    net: nn.Module  # the model as stepped: DDP and/or torch.compile around it
    method: Method
    data: Dataset
    cfg: TrainConfig
    opt: torch.optim.Optimizer
    dist: _Dist
    out: Path | None
    history: History
    start: int
    channels_last: bool
    teacher: nn.Module | None
    extra_state: dict[str, Any]
    progress: bool
    board: Any = None


def _threads(cfg: TrainConfig, dist: _Dist) -> int | None:
    """torch threads of the run: the recipe's, or the CPUs shared by the processes under torchrun
    (None: leave torch's setting)."""
    if cfg.threads > 0:
        return cfg.threads
    return default_threads(dist.world_size) if dist.world_size > 1 else None


def _setup(
    model: nn.Module,
    method: Method,
    data: Dataset,
    cfg: TrainConfig,
    dist: _Dist,
    run_dir: str | Path | None,
    resume: bool,
    teacher: nn.Module | None,
) -> _Run:
    """Memory format, optimizer, the run's start (a checkpoint to resume, or the method's init
    weights), DDP and compile wrappers, the metrics file and TensorBoard."""
    channels_last = cfg.channels_last and _has_conv(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = method.make_optimizer(model, cfg) or make_optimizer(
        model, cfg, method.param_groups(model)
    )
    history = History()
    start = 0
    out = Path(run_dir) if run_dir is not None else None
    if out is not None and dist.main:
        out.mkdir(parents=True, exist_ok=True)
    if resume and out is not None and (out / "last.pt").exists():
        state = load_checkpoint(out / "last.pt")
        load_model_state(model, state["model"], str(out / "last.pt"))
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
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
        teacher.eval().requires_grad_(False)
    net: nn.Module = model
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model)
    if cfg.compile:
        net = torch.compile(net)
    run = _Run(model, net, method, data, cfg, opt, dist, out, history, start, channels_last,
               teacher, {}, False)  # fmt: skip
    if out is not None and dist.main:
        _rewrite_metrics(out / "metrics.jsonl", history.epochs)
        if cfg.tensorboard:
            run.board = _tensorboard(out)
    return run


def _train_epoch(run: _Run, epoch: int, lr: float) -> tuple[float, dict[str, Any]]:
    """One pass over the shuffled training set at base rate ``lr`` (per-step schedules change it
    as they go); returns the last rate and the train metrics."""
    model, method, cfg, opt = run.model, run.method, run.cfg, run.opt
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
    loss_fn = LOSSES[cfg.loss]
    tot_loss = torch.zeros(())
    tot_correct = torch.zeros((), dtype=torch.long)
    seen = 0
    per_step = cfg.schedule in PER_STEP_SCHEDULES
    for i, (x, y) in enumerate(bar):
        if per_step:
            lr = lr_at(epoch, cfg, i / steps)
            _set_lr(opt, lr)
        logits = model_logits(run.net(x), y)
        teacher_logits = None
        if run.teacher is not None:
            with torch.no_grad():
                teacher_logits = model_logits(run.teacher(x), y)
        loss = method.training_loss(logits, y, loss_fn(logits, y), teacher_logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        method.after_step(model, lr, epoch=epoch, epochs=cfg.epochs, optimizer=opt)
        # accumulate without .item() so the loop never waits on a sync
        tot_loss += loss.detach() * y.numel()  # y.numel(): tokens, for sequence targets
        tot_correct += (logits.detach().argmax(1) == y).sum()
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
    ev = dict(batch_size=cfg.eval_batch_size, loss=cfg.loss, channels_last=run.channels_last)
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
    save_checkpoint(
        out / "last.pt",
        model=run.model.state_dict(),
        optimizer=run.opt.state_dict(),
        rng=rng_state(),
        history=run.history.epochs,
        **common,
    )
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    if run.board is not None:
        for k, v in rec.items():
            if isinstance(v, float | int) and k != "epoch":
                run.board.add_scalar(k, v, epoch)
        run.board.flush()


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

    torch's threads and determinism flags hold for the run and are restored afterwards
    (:func:`onebit.settings.torch_settings`), as is the CPU GEMM mode of ``cfg.gemm``.
    """
    check_recipe(cfg)
    dist = _init_distributed()
    if cfg.batch_size % dist.world_size:
        raise OnebitError(
            f"train.batch_size {cfg.batch_size} must be divisible by the {dist.world_size} processes."
        )
    deterministic = True if cfg.deterministic else None
    with torch_settings(threads=_threads(cfg, dist), deterministic=deterministic):
        with _dist_errors(dist):  # DDP's first broadcast
            run = _setup(model, method, data, cfg, dist, run_dir, resume, teacher)
        run.extra_state, run.progress = dict(extra_state or {}), progress
        # the kernel of the linear layers' products (onebit.gemm); torch.compile keeps torch's own
        gemm = "torch" if cfg.compile else cfg.gemm
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
    return run.history


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
