"""``onebit compare``: every method on one model, data and budget, as a resumable grid of runs.

The grid is every (method, seed) pair of one config. Each pair is one call of
:func:`onebit.experiments.runs.run` in a folder whose name depends only on the pair::

    <out>/<config name>/<method>-s<seed>/      config.json, env.json, metrics.jsonl, last.pt, ...
    <out>/<config name>/results.{md,csv,json}  the table (see onebit.experiments.report)
    <out>/<config name>/plots/*.png

Every method trains with the config's model, data, epochs, augmentation and recipe; its options
are its defaults unless the config's ``[method]`` table names that method (then they are the
table's options), except the first/last-layer policy, which ``[method]`` sets for the whole grid.

**Resuming.** Before anything trains, each folder is checked: a run whose ``summary.json`` is
complete is never redone; a run with a ``last.pt`` continues from it (``resume=True``); a folder
holding a run of another config is an error (pick another ``--out``), so a table never mixes
budgets. Killing a comparison (Ctrl-C, a lost machine) and running the same command again
finishes the grid; checkpoints are written atomically, so a run killed mid-epoch loses at most
that epoch.

**Workers.** Runs execute in a pool of ``workers`` processes (the ``spawn`` context: no state is
inherited from the parent). Each worker loads the dataset once and reuses it for its runs. With
``train.threads = 0`` (the default), each worker gets ``cpu_count // workers`` torch threads
(on 2 cores: two single-threaded workers, faster than one two-threaded run); the config itself
is not changed, so a grid may be continued with another ``--workers``. ``workers=1`` runs
in-process.

**Pre-training stages (the hook).** A method that starts from another run (a full-precision
start, a sensitivity ranking) declares it on its class, and compare puts that run in the grid::

    @dataclass(frozen=True)
    class MyMethod(Method):
        name = "mine"
        pretrain: ClassVar[str] = "fp"     # the method whose run (same config and seed) comes first
        init: str | None = None            # compare fills it with that run's best.pt

compare then adds ``fp-s<seed>`` to the grid (shared with the ``fp`` row when ``fp`` is compared
too), starts ``mine-s<seed>`` only once it has finished, and sets ``method.init`` to its
``best.pt`` (unless the config sets ``init``), so the dependency is part of the run's recorded
config. The method reads its ``init`` itself (e.g. loading the weights at the start of epoch 0);
dependencies may chain, and a failed dependency fails its dependents. ``pretrain`` may also be
a property of the method's options (read from the configured instance), and may name a *stage*
(``STAGES``) instead of a method: ``iterative-sens-asc`` without a ranking declares
``"sensitivity"``, so compare adds ``sensitivity-s<seed>`` (the per-layer probes of
``onebit.experiments.sensitivity``, shared by every method of that seed that asks for the same stage) and
fills the method's ``ranking`` with its ``sensitivity.json``. ``bitat`` declares ``"fp"``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onebit.errors import OnebitError
from onebit.experiments import sensitivity
from onebit.experiments.config import Config, build_method
from onebit.experiments.grid import Job, Stage, execute, job_state, plain, worker_threads
from onebit.experiments.records import record_grid, restore_runs
from onebit.experiments.report import read_run, write_results
from onebit.fileio import folder_lock, remove_stale_temps
from onebit.methods import method_preset

__all__ = ["STAGES", "Comparison", "Job", "compare", "method_config", "plan"]

log = logging.getLogger(__name__)

STAGES: dict[str, Stage] = {"sensitivity": sensitivity.STAGE}
"""Pre-training stages that are not a method's run, by the name a method's ``pretrain`` gives."""


@dataclass
class Comparison:
    """What a comparison produced.

    Attributes:
        name: the config name.
        folder: ``<out>/<name>``, holding the run folders and the results.
        jobs: the grid, dependencies first.
        rows: one row per finished run (see ``onebit.experiments.report.read_run``).
        results: the ``results.json`` document (``table``, ``runs``) plus ``plots``.
        ran: keys of the runs trained (or continued) by this call.
        skipped: keys of the runs found finished.
        failed: key -> one sentence, for runs that did not finish.
    """

    name: str
    folder: Path
    jobs: list[Job]
    rows: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def run_dirs(self) -> list[Path]:
        """The run folders of the grid."""
        return [j.run_dir for j in self.jobs]


SHARED_OPTIONS = ("keep_first", "keep_last")


def method_config(cfg: Config, name: str) -> Config:
    """``cfg`` with method ``name``: the config's options if its ``[method]`` names it, else defaults.

    The first/last-layer policy (``keep_first``, ``keep_last``) set in ``[method]`` describes the
    experiment's network, so every binarizing method of the grid gets it (fp ignores it).
    """
    if name == cfg.method.name:
        return copy.deepcopy(cfg)
    shared = {k: v for k, v in cfg.method.options.items() if k in SHARED_OPTIONS}
    return Config.from_dict({**cfg.to_dict(), "method": {"name": name, **shared}})


def plan(
    cfg: Config,
    methods: Sequence[str],
    seeds: Sequence[int],
    extra: Sequence[tuple[str, int]] = (),
) -> list[Job]:
    """The grid of ``methods`` x ``seeds`` on ``cfg``, with pre-training runs added, in run order;
    then the ``(method, seed)`` runs of ``extra`` that the grid lacks (a record's, see
    ``onebit.experiments.records.record_grid``).

    Raises:
        OnebitError: no methods or seeds, a repeated or unknown method, a negative seed, or a
            cycle of pre-training dependencies.
    """
    methods = [m.strip() for m in methods]
    if not methods or any(not m for m in methods):
        raise OnebitError("--methods expects method names separated by commas, e.g. fp,bc,bwn.")
    if len(set(methods)) != len(methods):
        raise OnebitError(f"--methods names a method twice ({','.join(methods)}).")
    if not seeds:
        raise OnebitError("--seeds expects at least one seed, e.g. --seeds 0 1 2.")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise OnebitError(f"--seeds expects distinct non-negative integers, got {list(seeds)}.")
    for m in methods:
        method_preset(m)  # unknown names raise with the accepted list
    folder = Path(cfg.out) / cfg.name
    jobs: dict[str, Job] = {}

    def add(name: str, seed: int, chain: tuple[str, ...]) -> str:
        key = f"{name}-s{seed}"
        if name in chain:
            raise OnebitError(
                f"methods {' -> '.join((*chain, name))} form a cycle of pre-training stages."
            )
        if key in jobs:
            return key
        c = method_config(cfg, name)
        c.train.seed = seed
        needs: tuple[str, ...] = ()
        method = build_method(c.method)
        dep = method.pretrain  # may depend on the options
        option = method.pretrain_option
        if dep in STAGES:
            needs = (add_stage(STAGES[dep], c),)
            if option not in c.method.options:
                c.method.options[option] = str(STAGES[dep].output(jobs[needs[0]].run_dir))
        elif dep:
            dep_key = add(dep, seed, (*chain, name))
            needs = (dep_key,)
            if option in method_preset(name).options() and option not in c.method.options:
                c.method.options[option] = str(jobs[dep_key].run_dir / "best.pt")
        jobs[key] = Job(key, c, folder / key, needs)
        return key

    def add_stage(stage: Stage, c: Config) -> str:
        key = f"{stage.name}-s{c.train.seed}"
        sc = stage.config(c)
        if key in jobs:
            if plain(jobs[key].cfg.to_dict()) != plain(sc.to_dict()):
                raise OnebitError(
                    f"the compared methods ask for different {stage.name} pre-trainings ({key}); "
                    "compare them separately."
                )
            return key
        jobs[key] = Job(key, sc, folder / key, (), stage)
        return key

    for name in methods:
        for seed in seeds:
            add(name, seed, ())
    for name, seed in extra:
        method_preset(name)
        add(name, seed, ())
    return list(jobs.values())


def compare(
    cfg: Config,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    workers: int = 2,
    plots: bool = True,
    on_plan: Callable[[list[Job]], None] | None = None,
    restore: str | Path | None = None,
) -> Comparison:
    """Train every (method, seed) of ``cfg`` that is not finished yet, then write the results.

    Args:
        cfg: the shared config (model, data, recipe, ``out`` and ``name``).
        methods: method names (``onebit.methods.METHODS``).
        seeds: the seeds; every method runs each.
        workers: worker processes (1: in-process).
        plots: draw the PNG plots.
        on_plan: called with the grid before anything trains (the CLI logs it).
        restore: a record of this grid (``--record``): its runs join the grid, and its finished
            runs are copied into their run folders first and count as finished
            (``onebit.experiments.records.restore_runs``), so a grid continues on another
            machine from what was committed.

    Returns:
        The comparison; ``failed`` lists the runs that did not finish (the results hold the
        others, and running the same comparison again retries them).

    Raises:
        OnebitError: bad methods or seeds, ``workers < 1``, a run folder of another config,
            another process comparing into the same folder (``<out>/<name>`` is locked while a
            comparison runs), or a ``restore`` record that cannot be continued.
    """
    if workers < 1:
        raise OnebitError(f"--workers must be at least 1, got {workers}.")
    jobs = plan(cfg, methods, seeds, record_grid(restore) if restore is not None else ())
    for j in jobs:  # a folder of another config is refused before anything is made
        job_state(j)
    folder = Path(cfg.out) / cfg.name
    # one comparison at a time writes a grid folder: a second gets one sentence, not shared runs
    with folder_lock(folder, "give another --out"):
        remove_stale_temps(folder)  # run folders that killed processes were making
        restored = restore_runs(restore, jobs) if restore is not None else []
        for key in restored:
            log.info("restored %s from the record %s", key, restore)
        return _compare(cfg, jobs, workers, plots, on_plan)


def _compare(
    cfg: Config,
    planned: list[Job],
    workers: int,
    plots: bool,
    on_plan: Callable[[list[Job]], None] | None,
) -> Comparison:
    checked = [job_state(j) for j in planned]  # every folder, before any training
    jobs = [j for _, j in checked]
    states = {j.key: state for state, j in checked}
    if on_plan is not None:
        on_plan(jobs)
    result = Comparison(cfg.name, Path(cfg.out) / cfg.name, jobs)
    result.skipped = [k for k, s in states.items() if s == "done"]
    for k in result.skipped:
        log.info("skipping %s: finished", k)
    todo = [j for j in jobs if states[j.key] != "done"]
    workers = min(workers, max(1, len(todo)))
    done = set(result.skipped)
    result.ran = execute(todo, done, workers, worker_threads(workers, cfg), result.failed)
    result.rows = [r for r in (read_run(j.run_dir) for j in jobs) if r is not None]
    result.results = write_results(result.folder, result.rows, cfg.name, result.run_dirs, plots)
    return result
