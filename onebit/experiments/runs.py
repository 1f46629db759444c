"""A run end to end from a Config: data, model, method, training, and the run folder it leaves.

A run folder holds ``config.json`` (the validated config, seed included), ``env.json`` (provenance:
commit, torch version, machine, threads, date), ``metrics.jsonl`` (one line per epoch), ``last.pt``
(full checkpoint), ``best.pt`` (weights at the best validation epoch) and ``summary.json``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import functools
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onebit.checkpoint import load_checkpoint, load_model_state
from onebit.convert import binarize_, summary
from onebit.data import Dataset, load_dataset, subsample, unnormalized
from onebit.errors import OnebitError
from onebit.experiments.config import Config, build_method, saved_config
from onebit.fileio import atomic_write
from onebit.methods import Method
from onebit.models import build, model_options
from onebit.settings import cpu_model, torch_settings
from onebit.training import History, seed_everything, train

__all__ = [
    "RunResult",
    "build_model",
    "environment",
    "load_data",
    "load_run",
    "run",
    "size_report",
]


@dataclass
class RunResult:
    """What one run produced."""

    run_dir: Path | None
    method: str
    seed: int
    history: History
    size: dict[str, int]

    def row(self) -> dict[str, Any]:
        """One flat table row: method, seed, accuracies, parameters and size."""
        return {"method": self.method, "seed": self.seed, **self.history.summary(), **self.size}


def load_data(cfg: Config, progress: bool = False) -> Dataset:
    """The dataset a config names (augmentation override and train/validation limits applied)."""
    data = load_dataset(
        cfg.data.name,
        cfg.data.root,
        val_size=cfg.data.val_size,
        path=cfg.data.path,
        progress=progress,
        seq_len=cfg.data.seq_len,
    )
    if cfg.data.augment is not None:
        data.augment = cfg.data.augment
    if not cfg.data.normalize:
        data = unnormalized(data)
    return subsample(data, cfg.data.max_train, cfg.data.max_val)


def build_model(
    cfg: Config, data_shape: tuple[int, ...], num_classes: int
) -> tuple[nn.Module, Method]:
    """The configured model, binarized by the configured method (weights from the current seed)."""
    method = build_method(cfg.method)
    options = dict(cfg.model.options)
    if "act" in model_options(cfg.model.name) and "act" not in options:
        options["act"] = method.hidden_activation()
    model = build(cfg.model.name, data_shape, num_classes, **options)
    binarize_(model, method)
    return model, method


def size_report(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, int]:
    """Binary and float parameters, and the deployed size in bytes (1 bit per binary weight)."""
    rows = summary(model, torch.zeros(1, *in_shape))
    return {
        "binary_params": sum(r.binary_params for r in rows),
        "float_params": sum(r.float_params for r in rows),
        "size_bytes": (sum(r.bits for r in rows) + 7) // 8,
        "float_size_bytes": 4 * sum(r.binary_params + r.float_params for r in rows),
        "binary_macs": sum(r.binary_macs for r in rows),
        "float_macs": sum(r.float_macs for r in rows),
    }


@functools.cache
def _git_commit() -> str:
    # Once per process: the code a process runs is the code it imported, whatever happens later.
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = out.stdout.strip() or "unknown"
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """Provenance of a result: commit, versions, machine, threads, date."""
    return {
        "commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
        "threads": torch.get_num_threads(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def new_run_dir(cfg: Config, seed: int) -> Path:
    """``<out>/<name>/<method>-s<seed>-<UTC time>``: a fresh folder name for one run."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Path(cfg.out) / cfg.name / f"{cfg.method.name}-s{seed}-{stamp}"


def run(
    cfg: Config,
    seed: int | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    data: Dataset | None = None,
) -> RunResult:
    """Train one configured run (``seed`` overrides ``cfg.train.seed``) and describe its result."""
    cfg = copy.deepcopy(cfg)
    if seed is not None:
        cfg.train.seed = seed
    data = data if data is not None else load_data(cfg, progress)
    seed_everything(cfg.train.seed)
    model, method = build_model(cfg, data.input_shape, data.num_classes)
    out = Path(run_dir) if run_dir is not None else None
    is_main = int(os.environ.get("RANK", "0")) == 0
    teacher = load_run(method.distill_from)[1] if method.distill_from is not None else None
    # the run's threads hold while env.json records them (train() enters the same setting)
    with torch_settings(threads=cfg.train.threads or None):
        if out is not None and is_main:
            out.mkdir(parents=True, exist_ok=True)
            if resume and (out / "config.json").exists():
                saved = saved_config(out / "config.json")
                # where the runs folder is spelled from does not change the run
                if {**saved, "out": None} != {**cfg.to_dict(), "out": None}:
                    raise OnebitError(
                        f"{out} was trained with another config; resume it without --set."
                    )
            atomic_write(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
            atomic_write(out / "env.json", json.dumps(environment(), indent=2) + "\n")
            for name, src in method.run_files().items():  # e.g. the sensitivity ranking it follows
                if not Path(src).is_file():
                    raise OnebitError(f"{src} does not exist; method {cfg.method.name!r} reads it.")
                shutil.copyfile(src, out / name)
        history = train(
            model,
            method,
            data,
            cfg.train,
            run_dir=out,
            resume=resume,
            progress=progress,
            extra_state={
                "config": cfg.to_dict(),
                "input_shape": list(data.input_shape),
                "num_classes": data.num_classes,
                "mean": list(data.mean),
                "std": list(data.std),
            },
            teacher=teacher,
        )
    size = size_report(model, data.input_shape)
    result = RunResult(out, cfg.method.name, cfg.train.seed, history, size)
    if out is not None and is_main:
        atomic_write(out / "summary.json", json.dumps(result.row(), indent=2) + "\n")
    return result


def load_run(
    path: str | Path, which: str = "best"
) -> tuple[Config, nn.Module, Method, dict[str, Any]]:
    """Rebuild the model of a run folder (or checkpoint file) and load its weights.

    Args:
        path: a run folder, or a ``.pt`` checkpoint written by onebit.
        which: ``best`` (weights at the best validation epoch) or ``last``, for folders.
    """
    p = Path(path)
    ckpt = p / f"{which}.pt" if p.is_dir() else p
    if p.is_dir() and not ckpt.exists():
        raise OnebitError(f"{p} holds no {which}.pt; is it a onebit run folder?")
    state = load_checkpoint(ckpt)
    try:
        cfg = Config.from_dict(state["config"])
    except (KeyError, OnebitError) as e:
        raise OnebitError(f"{ckpt} carries no usable config ({e}).") from None
    try:
        shape, classes = tuple(state["input_shape"]), int(state["num_classes"])
    except KeyError:
        raise OnebitError(
            f"{ckpt} does not say its input shape; was it written by onebit?"
        ) from None
    model, method = build_model(cfg, shape, classes)
    load_model_state(model, state["model"], str(ckpt))
    return cfg, model, method, state
