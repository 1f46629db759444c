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
import logging
import os
import platform
import secrets
import subprocess
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onebit.checkpoint import load_checkpoint, load_model_state
from onebit.convert import BinarizeReport, binarize_, summary
from onebit.data import TEXT_DATASETS, Dataset, load_dataset, subsample, unnormalized
from onebit.errors import OnebitError
from onebit.experiments.config import Config, build_method, saved_config
from onebit.fileio import (
    atomic_folder,
    atomic_write,
    folder_lock,
    make_folder,
    remove_stale_temps,
)
from onebit.methods import Method
from onebit.models import build, model_options
from onebit.settings import cpu_model, torch_settings
from onebit.training import History, seed_everything, train

log = logging.getLogger(__name__)

__all__ = [
    "PreparedRun",
    "RunResult",
    "build_model",
    "build_reported",
    "environment",
    "load_data",
    "load_run",
    "new_run_dir",
    "prepare_run",
    "run",
    "size_report",
    "train_prepared",
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
    model, method, _ = build_reported(cfg, data_shape, num_classes)
    return model, method


def build_reported(
    cfg: Config, data_shape: tuple[int, ...], num_classes: int
) -> tuple[nn.Module, Method, BinarizeReport]:
    """:func:`build_model` and the report of what ``binarize_`` did to each layer."""
    method = build_method(cfg.method)
    options = dict(cfg.model.options)
    if "act" in model_options(cfg.model.name) and "act" not in options:
        options["act"] = method.hidden_activation()
    model = build(cfg.model.name, data_shape, num_classes, **options)
    on_meta = any(p.is_meta for p in model.parameters())
    example = None if on_meta else (example_input(cfg, data_shape, num_classes),)
    report = binarize_(model, method, example_inputs=example)
    return model, method, report


def example_input(cfg: Config, data_shape: tuple[int, ...], num_classes: int) -> torch.Tensor:
    """A fixed synthetic batch of two inputs (drawn from its own generator: the global RNG is
    untouched): token ids for text data, standard normal values otherwise. binarize_ follows its
    data flow; being fixed, a rebuilt model (``load_run``) gets the same layers."""
    g = torch.Generator().manual_seed(0)
    if cfg.data.name in TEXT_DATASETS:
        return torch.randint(0, max(1, num_classes), (2, *data_shape), generator=g)
    return torch.randn(2, *data_shape, generator=g)


def size_report(
    model: nn.Module, in_shape: tuple[int, ...], example: torch.Tensor | None = None
) -> dict[str, int]:
    """Binary and float parameters, and the deployed size in bytes (1 bit per binary weight)."""
    rows = summary(model, torch.zeros(1, *in_shape) if example is None else example)
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


def _same_run(saved: dict[str, Any], cfg: dict[str, Any]) -> bool:
    """Whether a folder's saved config is ``cfg``'s run: where the runs folder and the data are
    spelled from (``out``, ``data.root``) does not change the run."""

    def key(d: dict[str, Any]) -> dict[str, Any]:
        return {**d, "out": None, "data": {**d.get("data", {}), "root": None}}

    return key(plain_json(saved)) == key(plain_json(cfg))


def plain_json(d: Any) -> Any:
    """``d`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(d))


def _env_json(cfg: Config) -> str:
    # the run's threads hold while env.json records them (train() enters the same setting)
    with torch_settings(threads=cfg.train.threads or None):
        return json.dumps(environment(), indent=2) + "\n"


def _folder_files(cfg: Config) -> dict[str, str]:
    return {"config.json": json.dumps(cfg.to_dict(), indent=2) + "\n", "env.json": _env_json(cfg)}


def new_run_dir(cfg: Config, seed: int | None = None) -> Path:
    """Make a fresh run folder ``<out>/<name>/<method>-s<seed>-<UTC time>-<random id>`` holding
    ``config.json`` and ``env.json``, atomically and under a name no other run has: the folder
    is made under a temporary name and renamed, and a name already taken is never reused (two
    trainings started in the same second get two folders). Returns it."""
    if seed is not None and seed != cfg.train.seed:
        cfg = copy.deepcopy(cfg)
        cfg.train.seed = seed
    parent = make_folder(Path(cfg.out) / cfg.name, "--out")
    remove_stale_temps(parent)  # folders that killed processes were making
    files = _folder_files(cfg)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        name = f"{cfg.method.name}-s{cfg.train.seed}-{stamp}-{secrets.token_hex(3)}"
        try:
            return atomic_folder(parent / name, files)
        except FileExistsError:
            continue
    raise OnebitError(f"cannot find a free run folder name in {parent}.")  # pragma: no cover


def _holds_results(d: Path) -> bool:
    return any((d / f).exists() for f in ("last.pt", "best.pt", "summary.json"))


@dataclass
class PreparedRun:
    """A run ready to train: everything checked and built, its folder made or verified.

    Attributes:
        cfg: the run's config (seed set).
        data: the dataset.
        model: the binarized model, weights from the seed.
        method: the configured method.
        teacher: the distillation teacher, for methods that distil.
        run_dir: the run folder (None: nothing is written, e.g. on a non-main process).
        resume: continue from ``run_dir/last.pt`` when it exists.
        resumed: the folder existed before this run (its env.json is kept; the environment of
            this continuation is added under ``resumed`` once it has finished).
    """

    cfg: Config
    data: Dataset
    model: nn.Module
    method: Method
    teacher: nn.Module | None
    run_dir: Path | None
    resume: bool
    resumed: bool = False


def _build_checked(cfg: Config, data: Dataset) -> tuple[nn.Module, Method]:
    """The model to train; the binarize report goes to the log (the CLI prints it)."""
    try:
        model, method, report = build_reported(cfg, data.input_shape, data.num_classes)
        log.info("%s", report.table())
        return model, method
    except OnebitError:
        raise
    except (RuntimeError, ValueError, TypeError, ZeroDivisionError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OnebitError(
            f"model {cfg.model.name!r} with options {cfg.model.options} cannot be built for "
            f"inputs of shape {tuple(data.input_shape)} ({type(e).__name__}: {first[:160]})."
        ) from None


def prepare_run(
    cfg: Config,
    seed: int | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    data: Dataset | None = None,
    new_folder: bool = False,
) -> PreparedRun:
    """Check and build everything a run needs, then make (or verify) its folder: a bad config,
    model or method option fails here, before any folder is made.

    Args:
        cfg: the config; ``seed`` overrides ``cfg.train.seed``.
        run_dir: the run folder. Made (atomically) if it holds no run; if it holds one of
            another config, or (without ``resume``) one that has results, that is an error.
        resume: continue the run in ``run_dir`` (``onebit train --resume``, compare's grid).
        data: the dataset (loaded from the config when None).
        new_folder: make a fresh, uniquely named folder (:func:`new_run_dir`); ``run_dir``
            must then be None.
    """
    cfg = copy.deepcopy(cfg)
    if seed is not None:
        cfg.train.seed = seed
    data = data if data is not None else load_data(cfg, progress)
    seed_everything(cfg.train.seed)
    model, method = _build_checked(cfg, data)
    is_main = int(os.environ.get("RANK", "0")) == 0
    teacher = load_run(method.distill_from)[1] if method.distill_from is not None else None
    for src in method.run_files().values():  # e.g. the sensitivity ranking it follows
        if not Path(src).is_file():
            raise OnebitError(f"{src} does not exist; method {cfg.method.name!r} reads it.")
    out: Path | None = None
    resumed = False
    if new_folder:
        if run_dir is not None:
            raise ValueError("new_folder makes its own folder; pass run_dir=None")
        out = new_run_dir(cfg) if is_main else None
    elif run_dir is not None:
        out = Path(run_dir)
        if is_main:
            resumed = _own_folder(out, cfg, resume)
    return PreparedRun(cfg, data, model, method, teacher, out, resume, resumed)


def _own_folder(out: Path, cfg: Config, resume: bool) -> bool:
    """Verify that ``out`` holds ``cfg``'s run (True), or make it as a new run folder (False)."""
    cfg_file = out / "config.json"
    if cfg_file.is_file():
        try:
            saved = saved_config(cfg_file)
        except (ValueError, OnebitError) as e:
            raise OnebitError(f"{cfg_file} is not a readable onebit config ({e}).") from None
        if not _same_run(saved, cfg.to_dict()):
            raise OnebitError(
                f"{out} was trained with another config; resume it without --set, or give "
                "another folder."
            )
        if not resume and _holds_results(out):
            raise OnebitError(
                f"{out} already holds a run; continue it with onebit train --resume {out}, or "
                "give another folder."
            )
        if resume and (out / "last.pt").is_file():
            state = load_checkpoint(out / "last.pt")  # a damaged checkpoint: its own sentence
            try:  # read as today's onebit reads it (keys added since take their defaults)
                trained = Config.from_dict(state["config"]).to_dict()
            except (KeyError, TypeError, AttributeError, OnebitError):
                trained = None
            if trained is None or not _same_run(trained, saved):
                raise OnebitError(
                    f"{cfg_file} is not the config {out / 'last.pt'} was trained with (edited?); "
                    "restore it, or train anew in another folder."
                )
        return True
    if out.exists() and not out.is_dir():
        raise OnebitError(f"{out} is a file, not a run folder; give another folder.")
    try:
        atomic_folder(out, _folder_files(cfg))
    except FileExistsError:
        raise OnebitError(
            f"{out} exists but is not a onebit run folder (no config.json); delete it or give "
            "another folder."
        ) from None
    return False


def train_prepared(p: PreparedRun, progress: bool = False) -> RunResult:
    """Train a :func:`prepare_run` run in its folder and describe its result.

    The folder is locked while it trains (:func:`onebit.fileio.folder_lock`): a second process
    continuing the same run gets one sentence instead of writing the same files; temporary files
    that a killed run left are removed first."""
    cfg, out = p.cfg, p.run_dir
    lock = folder_lock(out, "give another run folder") if out is not None else nullcontext()
    with lock:
        if out is not None:
            remove_stale_temps(out, all_of_them=True)  # we hold its lock: all of them are stale
            for name, src in p.method.run_files().items():
                atomic_write(out / name, Path(src).read_bytes())
        before = _epochs_done(out)
        with torch_settings(threads=cfg.train.threads or None):
            history = train(
                p.model,
                p.method,
                p.data,
                cfg.train,
                run_dir=out,
                resume=p.resume,
                progress=progress,
                extra_state={
                    "config": cfg.to_dict(),
                    "input_shape": list(p.data.input_shape),
                    "num_classes": p.data.num_classes,
                    "mean": list(p.data.mean),
                    "std": list(p.data.std),
                    "pixels": _pixels(p.data),
                },
                teacher=p.teacher,
            )
        example = example_input(cfg, p.data.input_shape, p.data.num_classes)[:1]
        size = size_report(p.model, p.data.input_shape, example)
        result = RunResult(out, cfg.method.name, cfg.train.seed, history, size)
        if out is not None:
            if p.resumed and len(history.epochs) > before:
                _add_resume_env(out, cfg)
            try:
                atomic_write(out / "summary.json", json.dumps(result.row(), indent=2) + "\n")
            except OnebitError as e:
                raise OnebitError(
                    f"{str(e).rstrip('.')}; the run's weights and metrics are kept in {out}: "
                    f"free the space and run onebit train --resume {out} to write its summary."
                ) from None
    return result


def _pixels(data: Dataset) -> bool:
    """Whether the model reads pixels (uint8 data, fed as x / 255) rather than float inputs."""
    return data.train.x.dtype == torch.uint8


def _epochs_done(out: Path | None) -> int:
    if out is None or not (out / "metrics.jsonl").is_file():
        return 0
    return sum(1 for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip())


def _add_resume_env(out: Path, cfg: Config) -> None:
    """Add the environment of a finished continuation to env.json (``resumed``); the first
    environment, of the process that started the run, stays as it was."""
    try:
        env = json.loads((out / "env.json").read_text())
    except (OSError, ValueError):
        env = {}
    if not isinstance(env, dict):
        env = {}
    env["resumed"] = [*env.get("resumed", []), json.loads(_env_json(cfg))]
    atomic_write(out / "env.json", json.dumps(env, indent=2) + "\n")


def run(
    cfg: Config,
    seed: int | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    data: Dataset | None = None,
    new_folder: bool = False,
) -> RunResult:
    """Train one configured run (``seed`` overrides ``cfg.train.seed``) and describe its result:
    :func:`prepare_run` (every check, and the folder), then :func:`train_prepared`."""
    prepared = prepare_run(
        cfg,
        seed,
        run_dir=run_dir,
        resume=resume,
        progress=progress,
        data=data,
        new_folder=new_folder,
    )
    return train_prepared(prepared, progress)


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
        raise OnebitError(f"{p} holds no {which}.pt; give a onebit run folder or a .pt checkpoint.")
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
