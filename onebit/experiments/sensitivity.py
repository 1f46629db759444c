"""Sensitivity pre-training (Lan 2021, arXiv 2111.07046): how much each layer minds being binary.

For each binarizable layer ``k`` of the configured model, a *probe* trains the net in which only
``k`` is binary (method ``iterative`` with ``order = [k]``: plain ``sign(w)``, no scale, no clip,
identity STE, the other layers float) for ``epochs_per_layer`` epochs, and records its best
validation accuracy. The ranking file lists the layers with those accuracies; the orders
``sensitivity-ascending`` (least sensitive = highest probe accuracy first) and
``sensitivity-descending`` of ``onebit.schedules`` read it.

A stage folder (``<out>/<name>/sensitivity-s<seed>/``) holds::

    stage.json          the stage's config (the probes' template), checked on every reuse
    probe-<layer>/      one ordinary run folder per layer (resumable like any run)
    sensitivity.json    the ranking (written last, atomically: its presence means done)
    sensitivity.png     validation accuracy per layer (with matplotlib)

``onebit sensitivity CONFIG`` runs it on its own, the probes in parallel worker processes (one
torch thread each on 2 cores) through the grid of ``onebit.experiments.grid``; ``onebit compare`` runs it
as a pre-training stage of the sensitivity-guided methods (its folder is the same, so a ranking
made first by ``onebit sensitivity`` with the same config is reused).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from onebit.errors import OnebitError
from onebit.experiments.config import Config, MethodConfig
from onebit.experiments.grid import Job, Stage, data_key, execute, job_state, plain, worker_threads
from onebit.fileio import atomic_write, folder_lock, make_folder
from onebit.schedules import Ranking, auto_epochs_per_layer, schedulable_layers, write_ranking

__all__ = [
    "RANKING_FILE",
    "STAGE",
    "layer_names",
    "output_path",
    "probe_epochs",
    "run_stage",
    "run_stages",
    "sensitivity",
    "stage_config",
    "stage_dir",
    "stage_state",
]

log = logging.getLogger(__name__)

RANKING_FILE = "sensitivity.json"
STAGE_FILE = "stage.json"
PROBE_METHOD = "iterative"


def stage_config(cfg: Config) -> Config:
    """The stage's config: ``cfg``'s data, model, recipe, seed and place, with method ``iterative``
    (and ``cfg``'s ``epochs_per_layer`` when its method sets one). ``train.epochs`` is the budget
    of the runs the ranking serves: it defines the automatic ``epochs_per_layer``."""
    c = copy.deepcopy(cfg)
    epl = cfg.method.options.get("epochs_per_layer")
    c.method = MethodConfig(PROBE_METHOD, {} if epl is None else {"epochs_per_layer": epl})
    return c


def stage_dir(cfg: Config) -> Path:
    """``<out>/<name>/sensitivity-s<seed>``."""
    return Path(cfg.out) / cfg.name / f"sensitivity-s{cfg.train.seed}"


def output_path(run_dir: str | Path) -> Path:
    """The ranking file of a stage folder."""
    return Path(run_dir) / RANKING_FILE


def stage_state(cfg: Config, run_dir: str | Path) -> str:
    """``done`` (ranking written), ``resume`` (started) or ``new``.

    Raises:
        OnebitError: the folder holds a stage of another config.
    """
    d = Path(run_dir)
    f = d / STAGE_FILE
    if not f.is_file():
        return "new"
    try:
        saved = json.loads(f.read_text())
    except ValueError:
        saved = None
    want = plain(cfg.to_dict())
    if not isinstance(saved, dict) or {**saved, "out": None} != {**want, "out": None}:
        raise OnebitError(
            f"{d} holds a sensitivity pre-training of another config; use another --out, or "
            "delete that folder to redo it."
        )
    return "done" if output_path(d).is_file() else "resume"


def layer_names(cfg: Config, input_shape: Sequence[int], num_classes: int) -> list[str]:
    """The layers the probes binarize: every Conv/Linear of the model (method ``iterative``)."""
    from onebit.experiments.runs import build_model

    with torch.device("meta"):  # names only: allocate nothing
        model, _ = build_model(stage_config(cfg), tuple(input_shape), num_classes)
    return schedulable_layers(model)


def probe_epochs(cfg: Config, n_layers: int) -> int:
    """Epochs of each probe: the stage's ``epochs_per_layer`` (or the automatic one for
    ``train.epochs`` and ``n_layers``), rounded, at least 1."""
    epl = cfg.method.options.get("epochs_per_layer")
    if epl is None:
        epl = auto_epochs_per_layer(n_layers, cfg.train.epochs)
    return max(1, round(float(epl)))


def _probe_jobs(cfg: Config, run_dir: Path, names: Sequence[str]) -> list[Job]:
    epochs = probe_epochs(cfg, len(names))
    jobs = []
    for name in names:
        c = copy.deepcopy(cfg)
        c.method = MethodConfig(PROBE_METHOD, {"order": [name], "epochs_per_layer": epochs})
        c.train.epochs = epochs
        jobs.append(Job(f"{run_dir.name}/{name}", c, run_dir / f"probe-{name}"))
    return jobs


def _gather(cfg: Config, run_dir: Path, names: Sequence[str], jobs: Sequence[Job]) -> Path:
    layers, per_layer = [], {}
    for name, job in zip(names, jobs, strict=True):
        s = json.loads((job.run_dir / "summary.json").read_text())
        layers.append((name, float(s["val_acc_best"])))
        per_layer[name] = {
            "test_acc": s["test_acc_best_val"],
            "epoch": s["best_epoch"],
            "run": job.run_dir.name,
        }
    extra: dict[str, Any] = {"per_layer": per_layer, "config": cfg.to_dict()}
    ranking = Ranking(tuple(layers), probe_epochs(cfg, len(names)), extra)
    path = write_ranking(output_path(run_dir), ranking)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning(
            "matplotlib is not installed; no sensitivity plot (pip install 'onebit[plots]')"
        )
    else:
        from onebit.experiments.plots import plot_sensitivity

        pairs = [(n, [a]) for n, a in layers]
        plot_sensitivity({f"probes ({ranking.epochs_per_layer} ep)": pairs},
                         run_dir / "sensitivity.png")  # fmt: skip
    log.info("sensitivity ranking %s: ascending %s", path, ", ".join(ranking.order(True)))
    return path


def run_stages(
    stages: Sequence[tuple[Config, Path]], data: Any = None, workers: int = 1
) -> list[Path]:
    """Run the sensitivity pre-training of each ``(stage config, folder)``; returns the rankings.

    The probes of every stage go into one pool of ``workers`` processes (``workers = 1``: in
    this process, with ``data`` when given); finished probes and stages are not redone.

    Raises:
        OnebitError: a folder of another config, or a probe that failed.
    """
    if workers < 1:
        raise OnebitError(f"--workers must be at least 1, got {workers}.")
    todo: list[tuple[Config, Path]] = []
    for cfg, d in stages:
        if stage_state(cfg, d) != "done":
            make_folder(d, "--out")
            atomic_write(d / STAGE_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
            todo.append((cfg, d))
    if todo:
        if data is None:
            from onebit.experiments.runs import load_data

            data = load_data(todo[0][0])
        probes = []
        for cfg, d in todo:
            names = layer_names(cfg, data.input_shape, data.num_classes)
            probes.append((cfg, d, names, _probe_jobs(cfg, d, names)))
        checked = [job_state(j) for *_, jobs in probes for j in jobs]
        done = {j.key for state, j in checked if state == "done"}
        run = [j for state, j in checked if state != "done"]
        workers = min(workers, max(1, len(run)))
        threads = worker_threads(workers, todo[0][0])
        failed: dict[str, str] = {}
        log.info("sensitivity: %d probe runs (%d finished before)", len(run), len(done))
        execute(run, done, workers, threads, failed, {data_key(todo[0][0]): data})
        if failed:
            key, why = next(iter(failed.items()))
            raise OnebitError(f"sensitivity probe {key} failed: {why}")
        for cfg, d, names, jobs in probes:
            _gather(cfg, d, names, jobs)
    return [output_path(d) for _, d in stages]


def run_stage(cfg: Config, run_dir: str | Path, data: Any = None) -> Path:
    """One stage, its probes in this process (``onebit compare`` runs it inside a worker)."""
    return run_stages([(cfg, Path(run_dir))], data, workers=1)[0]


def sensitivity(
    cfg: Config, seeds: Sequence[int] | None = None, workers: int = 2, data: Any = None
) -> list[Path]:
    """``onebit sensitivity``: the ranking of ``cfg`` for each seed (default: the config's), in
    ``<out>/<name>/sensitivity-s<seed>/``; returns the ranking files."""
    if workers < 1:
        raise OnebitError(f"--workers must be at least 1, got {workers}.")
    seeds = list(seeds) if seeds else [cfg.train.seed]
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise OnebitError(f"--seeds expects distinct non-negative integers, got {seeds}.")
    stages = []
    for seed in seeds:
        c = copy.deepcopy(cfg)
        c.train.seed = seed
        sc = stage_config(c)
        stages.append((sc, stage_dir(sc)))
    # the same folder as onebit compare's grid: one process at a time
    with folder_lock(Path(cfg.out) / cfg.name, "give another --out"):
        return run_stages(stages, data, workers)


STAGE = Stage("sensitivity", stage_config, output_path, stage_state, run_stage)
"""The sensitivity pre-training as a stage of ``onebit compare``'s grid."""
