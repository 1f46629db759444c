"""Records: the light, committed copy of runs a README quotes, with the command that remakes them.

``records/<date>_<name>/`` holds, per run, ``runs/<run>/{config,env,summary}.json`` and
``metrics.jsonl`` (no checkpoints), plus ``results.json``, ``README.md`` (the table, mean ± std
over seeds), ``command.sh`` (the one command that makes it again) and ``env.json`` (commit, torch
version, machine, threads). A record of ``onebit compare`` also holds the config file it was made
from (``config.toml``), ``results.md``, ``results.csv`` and ``plots/*.png``.

**Continuing a record.** A grid may outlast the machine it started on: its run folders (under
``--out``) are lost with the machine, while the committed record is not. ``onebit compare
--record R`` with a record ``R`` of the same grid therefore continues it: before anything trains,
each run the record holds (its light files under ``R/runs/``) is restored into the grid's run
folder (:func:`restore_runs`), so it counts as finished and is not trained again, and the record
is then rewritten whole with the runs this call added (:func:`write_record` with ``replace``).
The record's runs join the grid even where the call names fewer methods or seeds
(:func:`record_grid`), so a grid of many sittings grows one call at a time (``--methods fp
--seeds 1`` adds fp's seed 1 to a record of four methods' seed 0). A run is restored only as a
finished run of the same config; rows without their run files are refused, so continuing never
drops a result.

The README's results table is generated from ``records/`` (:func:`update_readme`): the text between
``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced, and ``check=True`` only says
whether it would change (a test holds the two in agreement).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onebit.errors import OnebitError
from onebit.experiments.grid import Job, job_state
from onebit.experiments.report import (
    finished_summary,
    format_table,
    markdown_table,
    summarize,
    table_columns,
)
from onebit.fileio import TMP_MARK, atomic_folder, atomic_write, check_folder, make_folder

__all__ = [
    "README_END",
    "README_START",
    "check_record_folder",
    "check_record_to_continue",
    "readme_block",
    "record_grid",
    "record_rows",
    "restore_runs",
    "update_readme",
    "write_record",
]

LIGHT_FILES = ("config.json", "env.json", "metrics.jsonl", "summary.json", "sensitivity.json")
REPORT_FILES = ("results.md", "results.csv", "results.json")
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
README_COMMAND = "onebit report --readme README.md --records records"


def _env_line(env: dict[str, Any]) -> str:
    keys = ("commit", "torch", "machine", "threads", "date")
    return ", ".join(f"{k} {env[k]}" for k in keys if k in env)


def _copy(src: Path, dest: Path) -> None:
    """Copy one file through the atomic writer (a killed copy leaves the old file or none)."""
    try:
        data = src.read_bytes()
    except OSError as e:
        raise OnebitError(f"cannot read {src} ({e.strerror}).") from None
    atomic_write(dest, data)
    shutil.copystat(src, dest)


def check_record_folder(path: str | Path) -> Path:
    """``path`` if a record may be made there: a folder that does not exist yet, or is empty
    (a record is never written over another); one OnebitError sentence otherwise. ``onebit
    train`` and ``onebit compare`` call it before anything trains."""
    out = check_folder(path, "--record")
    if out.is_dir() and any(out.iterdir()):
        raise OnebitError(
            f"--record {out} already holds files; give a new folder (a record is never "
            "written over another)."
        )
    return out


def check_record_to_continue(path: str | Path) -> Path:
    """``path`` if ``onebit compare`` may write its record there: a new or empty folder, or a
    record that compare wrote before (it holds ``results.json``), which the comparison continues
    (see the module docstring); one OnebitError sentence otherwise."""
    out = check_folder(path, "--record")
    if out.is_dir() and any(out.iterdir()) and not (out / "results.json").is_file():
        raise OnebitError(
            f"--record {out} holds files but no results.json, so it is not a record to "
            "continue; give a new folder."
        )
    return out


def record_grid(record: str | Path) -> list[tuple[str, int]]:
    """The ``(method, seed)`` of every run a record lists, in its order (none for a folder that
    is not a record yet): ``onebit compare`` plans them beside the ones it is asked for, so a
    call that adds a seed or a method keeps what the record holds."""
    root = Path(record)
    if not (root / "results.json").is_file():
        return []
    return [(str(r["method"]), int(r["seed"])) for r in record_rows(root)]


def _record_keys(record: Path) -> set[str]:
    """The run names a record's ``results.json`` lists."""
    if not (record / "results.json").is_file():
        return set()
    return {str(r.get("run", "")) for r in record_rows(record)}


def restore_runs(record: str | Path, jobs: Sequence[Job]) -> list[str]:
    """Copy each finished run of ``record`` into its job's run folder, so the grid skips it.

    A job is restored when its folder does not hold a run yet and ``record/runs/<key>/`` holds a
    finished run (``summary.json``) of the job's config (a record of another config raises).
    Restored folders carry no checkpoints, so a run that an unfinished job starts from (its
    ``needs``) is left to train again. Each folder is made whole or not at all.

    Args:
        record: the record folder (``--record``); nothing happens when it does not exist.
        jobs: the planned grid (``onebit.experiments.compare.plan``).

    Returns:
        The keys of the restored runs.

    Raises:
        OnebitError: the record lists a run the grid does not plan (it would be dropped from
            the rewritten record), a run without its files under ``runs/`` (a record made before
            records kept them), or a run of another config.
    """
    root = Path(record)
    keys = {j.key for j in jobs}
    listed = _record_keys(root) if root.is_dir() else set()
    extra = sorted(listed - keys)
    if extra:  # compare plans the record's runs too (record_grid); this is its guard
        raise OnebitError(
            f"--record {root} holds runs this comparison does not plan ({', '.join(extra)}); "
            "name their methods and seeds too, or give a new folder."
        )
    saved = {
        k
        for k in listed
        if finished_summary(root / "runs" / k) is not None
        and (root / "runs" / k / "config.json").is_file()
    }
    if listed - saved:
        raise OnebitError(
            f"--record {root} lists runs without their files under runs/ "
            f"({', '.join(sorted(listed - saved))}), so they cannot be continued; give a new "
            "folder."
        )
    state = {j.key: job_state(j)[0] for j in jobs}
    usable = saved | {k for k, s in state.items() if s == "done"}
    restored: list[str] = []
    for j in jobs:
        if j.key not in saved or state[j.key] != "new" or j.run_dir.exists():
            continue
        if any(j.key in k.needs and k.key not in usable for k in jobs):
            continue  # a dependent still to train reads this run's checkpoint
        src = root / "runs" / j.key
        files = {n: (src / n).read_bytes() for n in LIGHT_FILES if (src / n).is_file()}
        atomic_folder(j.run_dir, files)
        try:
            job_state(j)
        except OnebitError:
            shutil.rmtree(j.run_dir, ignore_errors=True)
            raise OnebitError(
                f"--record {root} holds a run {j.key} of another config (changed --set or "
                "config file?); give a new folder."
            ) from None
        restored.append(j.key)
    return restored


def _swap_in(new: Path, target: Path) -> None:
    """Put folder ``new`` in the place of folder ``target`` (the old one is deleted)."""
    old = target.with_name(f".{target.name}{TMP_MARK}old-{os.getpid()}")
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def write_record(
    path: str | Path,
    rows: list[dict[str, Any]],
    run_dirs: Sequence[Path],
    argv: Sequence[str],
    title: str = "",
    *,
    config_file: str | Path | None = None,
    report_dir: str | Path | None = None,
    replace: bool = False,
) -> Path:
    """Copy the light files of ``run_dirs`` into ``path`` and write the table and the command.

    Args:
        path: the record folder, e.g. ``records/2026-11-22_fmnist_mlp``.
        rows: one row per run (``RunResult.row()`` or ``onebit.experiments.report.read_run``).
        run_dirs: the run folders whose light files (no checkpoints) are copied to ``runs/``.
        argv: the ``onebit`` arguments that remake the record (written to ``command.sh``).
        title: the README title (default: the folder name).
        config_file: the config file the runs were made from, copied as ``config.toml``.
        report_dir: a folder holding ``results.{md,csv,json}`` and ``plots/`` (a comparison
            folder), copied into the record; its ``results.md`` then heads the record's README.
        replace: ``path`` may hold a record (one that the runs continue): the new record is
            made beside it and then takes its place.

    Returns:
        The record folder.

    Raises:
        OnebitError: ``path`` already holds files and ``replace`` is False
            (:func:`check_record_folder`), or a file cannot be written.
    """
    target = Path(path)
    if replace and target.is_dir() and any(target.iterdir()):
        check_record_to_continue(target)
        tmp = target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        write_record(
            tmp, rows, run_dirs, argv, title, config_file=config_file, report_dir=report_dir
        )
        _swap_in(tmp, target)
        return target
    out = check_record_folder(path)
    make_folder(out / "runs", "--record")
    for d in run_dirs:
        dest = make_folder(out / "runs" / Path(d).name, "--record")
        for name in LIGHT_FILES:
            if (Path(d) / name).exists():
                _copy(Path(d) / name, dest / name)
    atomic_write(out / "results.json", json.dumps(rows, indent=2) + "\n")
    if config_file is not None:
        _copy(Path(config_file), out / "config.toml")
    if report_dir is not None:
        src = Path(report_dir)
        for name in REPORT_FILES:
            if (src / name).is_file():
                _copy(src / name, out / name)
        if (src / "plots").is_dir():
            plots = make_folder(out / "plots", "--record")
            for f in sorted((src / "plots").iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    _copy(f, plots / f.name)
    command = "onebit " + shlex.join(argv)
    atomic_write(out / "command.sh", f"#!/bin/sh\n# remakes this record\n{command}\n")
    os.chmod(out / "command.sh", 0o755)
    first_env = Path(run_dirs[0]) / "env.json" if run_dirs else None
    env = json.loads(first_env.read_text()) if first_env and first_env.is_file() else {}
    if env:
        atomic_write(out / "env.json", json.dumps(env, indent=2) + "\n")
    if report_dir is not None and (out / "results.md").is_file():
        head = (out / "results.md").read_text().rstrip("\n").splitlines()
        if title:
            head[0] = f"# {title}"
    else:
        summary = summarize(rows)
        head = [
            f"# {title or out.name}",
            "",
            "Test accuracy of the hard-binarized model (sign(w) times the scale), mean ± std over seeds.",
            "",
            markdown_table(format_table(summary), table_columns(summary)),
        ]
    lines = [
        *head,
        "",
        f"Made with `{command}`",
        "",
        "Environment of the first run: " + _env_line(env),
        "",
    ]
    atomic_write(out / "README.md", "\n".join(lines))
    return out


# --- the README's results table --------------------------------------------------------------


def record_rows(record: str | Path) -> list[dict[str, Any]]:
    """The per-run rows of a record's ``results.json`` (a list of rows, or a ``{"runs": ...}``
    document written by ``onebit compare``)."""
    path = Path(record) / "results.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OnebitError(f"{path} is not readable JSON ({type(e).__name__}).") from None
    rows = doc.get("runs") if isinstance(doc, dict) else doc
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "method" in r for r in rows):
        raise OnebitError(f"{path} holds no run rows; was it written by onebit?")
    return rows


def paper_numbers(record: str | Path) -> dict[str, str]:
    """``method -> text`` from the record's optional ``paper.json``: the published number beside
    which the README shows ours (e.g. ``"98.82 (LAB paper, 50 epochs)"``)."""
    path = Path(record) / "paper.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        raise OnebitError(f"{path} is not valid JSON.") from None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise OnebitError(f"{path} must map method names to text.")
    return doc


def readme_block(records: str | Path, readme: str | Path) -> str:
    """The generated text between the README markers: one table over every record (each row
    linking to its record folder) and each record's accuracy plot."""
    root = Path(records)
    base = Path(readme).resolve().parent
    folders = (
        sorted(d for d in root.iterdir() if (d / "results.json").is_file()) if root.is_dir() else []
    )
    lines = [f"<!-- generated from {root.name}/ by `{README_COMMAND}`; do not edit -->", ""]
    if not folders:
        return "\n".join([*lines, "No records yet.", ""])
    table: list[dict[str, str]] = []
    plots: list[str] = []
    for d in folders:
        link = Path(os.path.relpath(d.resolve(), base)).as_posix()
        summary = summarize(record_rows(d))
        paper = paper_numbers(d)
        table += [
            {"record": f"[{d.name}]({link}/)", **row, "paper": paper.get(row["method"], "")}
            for row in format_table(summary)
        ]
        if (d / "plots" / "accuracy.png").is_file():
            plots.append(f"![{d.name}: test accuracy per epoch]({link}/plots/accuracy.png)")
    cols = ["record", "method", "seeds", "test_best_val", "test_last", "gap", "epochs", "size"]
    cols += [c for c in ("bpc", "relaxed", "paper") if any(r[c] not in ("", "—") for r in table)]
    lines += [
        "Test accuracy (%) of the hard-binarized model, mean ± std over seeds (best-validation "
        "epoch and last epoch); gap to the full-precision twin in points."
        + (
            " Language models: accuracy per character, and test bits per character in their own "
            "column."
            if "bpc" in cols
            else ""
        ),
        "",
        markdown_table(table, cols),
        "",
    ]
    for p in plots:
        lines += [p, ""]
    return "\n".join(lines)


def update_readme(readme: str | Path, records: str | Path, check: bool = False) -> bool:
    """Replace the README text between the results markers with :func:`readme_block`.

    Args:
        readme: the README file.
        records: the records folder.
        check: only compare, write nothing.

    Returns:
        True when the README differs from the records (and, without ``check``, was rewritten).

    Raises:
        OnebitError: the README is missing or lacks the two markers, or ``records`` is missing
            or holds no record (the table would be emptied: it is left as it is).
    """
    path = Path(readme)
    if not path.is_file():
        raise OnebitError(f"{path} does not exist; give --readme the README file to update.")
    root = Path(records)
    if not root.is_dir():
        raise OnebitError(
            f"records folder {root} does not exist; give --records the folder of the records "
            "the README quotes (the README is left as it is)."
        )
    if not any((d / "results.json").is_file() for d in root.iterdir()):
        raise OnebitError(
            f"{root} holds no records (no <record>/results.json); the README's results table "
            "is left as it is."
        )
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise OnebitError(
            f"{path} has no results table markers; add the lines {README_START} and {README_END}."
        )
    head = text[: start + len(README_START)]
    new = head + "\n" + readme_block(records, path) + text[end:]
    if new == text:
        return False
    if not check:
        atomic_write(path, new)
    return True
