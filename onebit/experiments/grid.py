"""The grid of runs that ``onebit compare`` and ``onebit sensitivity`` share: jobs, their state on
disk, and the worker pool that executes them, dependencies first.

A :class:`Job` is one training run (or one pre-training :class:`Stage`) in a folder whose name
depends only on what it trains. :func:`job_state` reads the folder: ``done`` (never redone),
``resume`` (continues from its ``last.pt``) or ``new``; a folder holding a run of another config
is an error, so a table never mixes budgets. :func:`execute` runs jobs in a pool of ``spawn``
worker processes (no state inherited from the parent; each loads the dataset once and reuses it),
which end when the parent is killed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from onebit.errors import OnebitError
from onebit.experiments.config import Config, saved_config
from onebit.experiments.report import finished_summary
from onebit.settings import default_threads, set_process_threads, torch_settings

__all__ = ["Job", "Stage", "data_key", "execute", "job_state", "plain", "worker_threads"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """A pre-training stage that is not one method's run (e.g. the sensitivity probes).

    Its functions are module-level (so a job pickles into a worker by reference):

    Attributes:
        name: the stage's name, what a method's ``pretrain`` says (``sensitivity``).
        config: ``cfg -> the stage's config`` for a run that needs it.
        output: ``folder -> the file the stage leaves`` (the dependent method's option).
        state: ``(stage config, folder) -> done | resume | new`` (raises on another config).
        run: ``(stage config, folder, data) -> output``, the stage itself, in this process.
    """

    name: str
    config: Callable[[Config], Config]
    output: Callable[[Path], Path]
    state: Callable[[Config, Path], str]
    run: Callable[[Config, Path, Any], Path]


@dataclass(frozen=True)
class Job:
    """One run of the grid.

    Attributes:
        key: ``<method>-s<seed>``, also the run folder's name.
        cfg: the run's full config (method and seed set).
        run_dir: the run folder.
        needs: keys of the runs that must finish first (pre-training stages).
        stage: the pre-training stage this job runs instead of a training run.
    """

    key: str
    cfg: Config
    run_dir: Path
    needs: tuple[str, ...] = ()
    stage: Stage | None = None

    @property
    def method(self) -> str:
        """The method's name."""
        return self.cfg.method.name

    @property
    def seed(self) -> int:
        """The seed."""
        return self.cfg.train.seed


def plain(d: Any) -> Any:
    """``d`` as it reads back from JSON (tuples become lists), for comparing with a saved config."""
    return json.loads(json.dumps(d))


def job_state(job: Job) -> tuple[str, Job]:
    """``done``, ``resume`` or ``new``, and the job to run; a folder of another config raises.

    Only where runs are written (``out``) may differ: a grid started with ``--out runs`` can be
    continued with ``--out /abs/path/runs``; the job then keeps the folder's recorded ``out``.
    """
    d = job.run_dir
    if job.stage is not None:
        return job.stage.state(job.cfg, d), job
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        return "new", job
    try:
        saved = saved_config(cfg_file)
    except (ValueError, OnebitError):
        saved = None
    want = plain(job.cfg.to_dict())
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
    if finished_summary(d) is not None:
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
    # ``parent`` comes from the parent itself: a parent killed while this worker was still
    # starting would otherwise leave getppid() pointing at the adopting process
    parent = os.getppid() if parent is None else parent
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    set_process_threads(threads)
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s [worker {os.getpid()}] %(message)s",
        datefmt="%H:%M:%S",
    )


def data_key(cfg: Config) -> str:
    """Runs with equal keys share one loaded dataset."""
    return json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)


def _run_job(
    cfg: Config, run_dir: Path, cache: dict[str, Any] | None = None, stage: Stage | None = None
) -> None:
    """Train (or continue) one run, or run a pre-training stage; the dataset is loaded once per
    process and reused."""
    from onebit.experiments.runs import load_data, run

    cache = _DATA if cache is None else cache
    key = data_key(cfg)
    # the run's threads from the start: what is computed while loading and building (dataset
    # statistics, LAB's first alpha) is a float reduction whose order depends on the threads
    with torch_settings(threads=cfg.train.threads or None):
        if key not in cache:
            cache.clear()  # one dataset at a time
            cache[key] = load_data(cfg)
        if stage is not None:
            stage.run(cfg, run_dir, cache[key])
            return
        run(cfg, run_dir=run_dir, resume=True, data=cache[key])


def _why(e: BaseException) -> str:
    if isinstance(e, BrokenProcessPool):
        return "its worker process died (killed, or out of memory?)"
    return str(e) if isinstance(e, OnebitError) else f"{type(e).__name__}: {e}"


def execute(
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


def worker_threads(workers: int, cfg: Config) -> int:
    """torch threads per worker process: the CPUs shared out (0: leave the setting, for an
    in-process run or a config that sets ``train.threads``, which ``train()`` applies)."""
    return 0 if workers == 1 or cfg.train.threads > 0 else default_threads(workers)
