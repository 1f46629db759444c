"""``onebit compare``: every method on one model, data and budget, as a resumable grid of runs.

The grid is every (method, seed) pair of one config. Each pair is one call of
:func:`onebit.runs.run` in a folder whose name depends only on the pair::

    <out>/<config name>/<method>-s<seed>/      config.json, env.json, metrics.jsonl, last.pt, ...
    <out>/<config name>/results.{md,csv,json}  the table (see onebit.report)
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
``onebit.sensitivity``, shared by every method of that seed that asks for the same stage) and
fills the method's ``ranking`` with its ``sensitivity.json``. ``bitat`` declares ``"fp"``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from onebit.config import Config, build_method, saved_config
from onebit.errors import OnebitError
from onebit.methods import method_class

__all__ = ["Comparison", "Job", "compare", "method_config", "plan"]

log = logging.getLogger(__name__)

INIT_OPTION = "init"
"""The method option a pre-training dependency's ``best.pt`` path is written to."""

STAGES = {"sensitivity": "onebit.sensitivity"}
"""Pre-training stages that are not a method's run: name -> the module that runs them. The module
has ``OPTION`` (the method option its output path fills), ``stage_config(cfg)``,
``output_path(run_dir)``, ``stage_state(cfg, run_dir)`` and ``run_stage(cfg, run_dir, data)``."""


def _stage(name: str) -> Any:
    return importlib.import_module(STAGES[name])


@dataclass(frozen=True)
class Job:
    """One run of the grid.

    Attributes:
        key: ``<method>-s<seed>``, also the run folder's name.
        cfg: the run's full config (method and seed set).
        run_dir: the run folder.
        needs: keys of the runs that must finish first (pre-training stages).
        stage: the pre-training stage this job runs instead of a training run (``STAGES``).
    """

    key: str
    cfg: Config
    run_dir: Path
    needs: tuple[str, ...] = ()
    stage: str | None = None

    @property
    def method(self) -> str:
        """The method's name."""
        return self.cfg.method.name

    @property
    def seed(self) -> int:
        """The seed."""
        return self.cfg.train.seed


@dataclass
class Comparison:
    """What a comparison produced.

    Attributes:
        name: the config name.
        folder: ``<out>/<name>``, holding the run folders and the results.
        jobs: the grid, dependencies first.
        rows: one row per finished run (see ``onebit.report.read_run``).
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


def _plain(d: Any) -> Any:
    """``d`` as it reads back from JSON (tuples become lists), for comparing with a saved config."""
    return json.loads(json.dumps(d))


def plan(cfg: Config, methods: Sequence[str], seeds: Sequence[int]) -> list[Job]:
    """The grid of ``methods`` x ``seeds`` on ``cfg``, with pre-training runs added, in run order.

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
        method_class(m)  # unknown names raise with the accepted list
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
        dep = getattr(build_method(c.method), "pretrain", None)  # may depend on the options
        if dep in STAGES:
            needs = (add_stage(dep, c),)
            option = _stage(dep).OPTION
            if option not in c.method.options:
                c.method.options[option] = str(_stage(dep).output_path(jobs[needs[0]].run_dir))
        elif dep:
            dep_key = add(dep, seed, (*chain, name))
            needs = (dep_key,)
            fields = {f.name for f in dataclasses.fields(method_class(name))}
            if INIT_OPTION in fields and INIT_OPTION not in c.method.options:
                c.method.options[INIT_OPTION] = str(jobs[dep_key].run_dir / "best.pt")
        jobs[key] = Job(key, c, folder / key, needs)
        return key

    def add_stage(stage: str, c: Config) -> str:
        key = f"{stage}-s{c.train.seed}"
        sc = _stage(stage).stage_config(c)
        if key in jobs:
            if _plain(jobs[key].cfg.to_dict()) != _plain(sc.to_dict()):
                raise OnebitError(
                    f"the compared methods ask for different {stage} pre-trainings ({key}); "
                    "compare them separately."
                )
            return key
        jobs[key] = Job(key, sc, folder / key, (), stage)
        return key

    for name in methods:
        for seed in seeds:
            add(name, seed, ())
    return list(jobs.values())


def _state(job: Job) -> tuple[str, Job]:
    """``done``, ``resume`` or ``new``, and the job to run; a folder of another config raises.

    Only where runs are written (``out``) may differ: a grid started with ``--out runs`` can be
    continued with ``--out /abs/path/runs``; the job then keeps the folder's recorded ``out``.
    """
    d = job.run_dir
    if job.stage is not None:
        return _stage(job.stage).stage_state(job.cfg, d), job
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        return "new", job
    try:
        saved = saved_config(cfg_file)
    except (ValueError, OnebitError):
        saved = None
    want = _plain(job.cfg.to_dict())
    if isinstance(saved, dict) and {**saved, "out": want["out"]} == want:
        if saved["out"] != want["out"]:
            cfg = copy.deepcopy(job.cfg)
            cfg.out = saved["out"]
            job = dataclasses.replace(job, cfg=cfg)
    else:
        raise OnebitError(
            f"{d} holds a run of another config (changed --set or config file?); "
            "use another --out, or delete that folder to retrain it."
        )
    try:
        summary = json.loads((d / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    # train() writes a bare summary before run() adds method, seed and size: not finished yet
    if "method" in summary and "size_bytes" in summary:
        return "done", job
    return "resume", job


# --- workers ---------------------------------------------------------------------------------

_DATA: dict[str, Any] = {}


def _exit_with_parent(parent: int, interval: float = 2.0) -> None:
    """Poll the parent's pid; when the parent is gone (killed), end this worker at once.

    A killed ``compare`` would otherwise leave its workers training into run folders that a
    restarted grid then shares with them.
    """
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _init_worker(threads: int, level: int, parent: int | None = None) -> None:
    import torch

    # ``parent`` comes from the parent itself: a parent killed while this worker was still
    # starting would otherwise leave getppid() pointing at the adopting process
    parent = os.getppid() if parent is None else parent
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    if threads > 0:
        torch.set_num_threads(threads)
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] %(message)s",
        datefmt="%H:%M:%S",
    )


def _data_key(cfg: Config) -> str:
    return json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)


def _run_job(
    cfg: Config, run_dir: Path, cache: dict[str, Any] | None = None, stage: str | None = None
) -> None:
    """Train (or continue) one run, or run a pre-training stage; the dataset is loaded once per
    process and reused."""
    from onebit.runs import load_data, run

    if cfg.train.threads > 0:  # before run() records the environment (train() sets it later)
        import torch

        torch.set_num_threads(cfg.train.threads)
    cache = _DATA if cache is None else cache
    key = _data_key(cfg)
    if key not in cache:
        cache.clear()  # one dataset at a time
        cache[key] = load_data(cfg)
    if stage is not None:
        _stage(stage).run_stage(cfg, run_dir, data=cache[key])
        return
    run(cfg, run_dir=run_dir, resume=True, data=cache[key])


def _why(e: BaseException) -> str:
    if isinstance(e, BrokenProcessPool):
        return "its worker process died (killed, or out of memory?)"
    return str(e) if isinstance(e, OnebitError) else f"{type(e).__name__}: {e}"


def _execute(
    todo: list[Job],
    done: set[str],
    workers: int,
    threads: int,
    failed: dict[str, str],
    cache: dict[str, Any] | None = None,
) -> list[str]:
    """Run ``todo`` (dependencies first), at most ``workers`` at a time; returns the keys run.

    ``cache`` (data key -> dataset) serves in-process runs (``workers = 1``)."""
    pending = list(todo)
    ran: list[str] = []

    def ready() -> list[Job]:
        out = []
        for j in list(pending):
            bad = [k for k in j.needs if k in failed]
            if bad:
                failed[j.key] = f"its pre-training run {bad[0]} failed"
                pending.remove(j)
            elif all(k in done for k in j.needs):
                out.append(j)
        return out

    def finished(job: Job, error: BaseException | None) -> None:
        if error is None:
            done.add(job.key)
            ran.append(job.key)
            log.info("finished %s", job.key)
        else:
            failed[job.key] = _why(error)
            log.error("%s failed: %s", job.key, failed[job.key], exc_info=error)

    if workers <= 1:
        cache = {} if cache is None else cache
        while batch := ready():
            job = batch[0]
            pending.remove(job)
            log.info("training %s in %s", job.key, job.run_dir)
            try:
                _run_job(job.cfg, job.run_dir, cache, job.stage)
            except Exception as e:
                finished(job, e)
            else:
                finished(job, None)
        return ran

    ctx = get_context("spawn")
    level = logging.getLogger("onebit").getEffectiveLevel()
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(threads, level, os.getpid()))  # fmt: skip
    running: dict[Future[None], Job] = {}
    try:
        while True:
            for job in ready():
                if len(running) >= workers:
                    break
                pending.remove(job)
                log.info("training %s in %s", job.key, job.run_dir)
                try:
                    running[pool.submit(_run_job, job.cfg, job.run_dir, None, job.stage)] = job
                except BrokenProcessPool as e:  # a worker died (killed, out of memory)
                    finished(job, e)
            if not running:
                break
            complete, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in complete:
                finished(running.pop(fut), fut.exception())
    except BaseException:
        # Ctrl-C or an error here: stop the workers now; their checkpoints are atomic.
        for p in list(getattr(pool, "_processes", {}).values()):
            p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return ran


def compare(
    cfg: Config,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    workers: int = 2,
    plots: bool = True,
    on_plan: Callable[[list[Job]], None] | None = None,
) -> Comparison:
    """Train every (method, seed) of ``cfg`` that is not finished yet, then write the results.

    Args:
        cfg: the shared config (model, data, recipe, ``out`` and ``name``).
        methods: method names (``onebit.methods.METHODS``).
        seeds: the seeds; every method runs each.
        workers: worker processes (1: in-process).
        plots: draw the PNG plots.
        on_plan: called with the grid before anything trains (the CLI logs it).

    Returns:
        The comparison; ``failed`` lists the runs that did not finish (the results hold the
        others, and running the same comparison again retries them).

    Raises:
        OnebitError: bad methods or seeds, ``workers < 1``, or a run folder of another config.
    """
    from onebit.report import read_run, write_results

    if workers < 1:
        raise OnebitError(f"--workers must be at least 1, got {workers}.")
    checked = [_state(j) for j in plan(cfg, methods, seeds)]  # every folder, before any training
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
    # train.threads > 0 is applied by train(); in-process runs keep torch's threads
    threads = (
        0 if workers == 1 or cfg.train.threads > 0 else max(1, (os.cpu_count() or 1) // workers)
    )
    done = set(result.skipped)
    result.ran = _execute(todo, done, workers, threads, result.failed)
    result.rows = [r for r in (read_run(j.run_dir) for j in jobs) if r is not None]
    result.results = write_results(result.folder, result.rows, cfg.name, result.run_dirs, plots)
    return result
