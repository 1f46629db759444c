"""Tables and plots from run folders: mean ± std over seeds, as Markdown, CSV, JSON and PNG.

Everything here reads what runs left on disk (``config.json``, ``summary.json``,
``metrics.jsonl``, ``last.pt``, an optional ``sensitivity.json``) and trains nothing, so
``onebit compare`` and ``onebit report`` make the same table from the same folders:

- :func:`find_runs` expands comparison folders into run folders;
- :func:`read_run` is one run's row (method, seed, accuracies, time, size);
- :func:`summarize` is one numeric row per method (accuracies in percent, gap to ``fp`` in
  points), in a fixed order (``fp`` first, then the methods' registry order), so the result does
  not depend on the order folders were listed in;
- :func:`write_results` writes ``results.md``, ``results.csv``, ``results.json`` and ``plots/``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onebit.errors import OnebitError
from onebit.fileio import atomic_write, make_folder
from onebit.schedules import read_ranking

__all__ = [
    "COMPARE_COLUMNS",
    "find_runs",
    "finished_summary",
    "format_table",
    "human_bytes",
    "human_seconds",
    "make_plots",
    "markdown_table",
    "mean_std",
    "mixed_methods",
    "read_run",
    "results_doc",
    "results_markdown",
    "summarize",
    "write_results",
]

log = logging.getLogger(__name__)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = statistics.fmean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return m, s


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


HEADERS = {
    "record": "record",
    "method": "method",
    "seeds": "seeds",
    "test_best_val": "test acc % (best val)",
    "test_last": "test acc % (last)",
    "epochs": "epochs",
    "s_per_epoch": "s/epoch",
    "binary_params": "binary params",
    "float_params": "float params",
    "size": "size",
    "gap": "gap to fp (pts)",
    "wall": "wall time/run",
    "relaxed": "relaxed model acc % (last)",
    "off_pm1": "weights off ±1 (last)",
    "paper": "paper",
    "bpc": "test bits/char (best val)",
}

# columns shown only when some method reports them (GWT, ProxQuant and the ProxConnect family)
OPTIONAL_COLUMNS = ("relaxed", "off_pm1")


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table (also readable as plain text) of ``rows``."""
    if not rows:
        return ""
    cols = list(columns or rows[0].keys())
    head = [HEADERS.get(c, c) for c in cols]
    body = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(b) for b in body)])


# --- run folders -> numeric rows -------------------------------------------------------------

COMPARE_COLUMNS = [
    "method",
    "seeds",
    "test_best_val",
    "test_last",
    "gap",
    "epochs",
    "wall",
    "s_per_epoch",
    "binary_params",
    "size",
]


def _is_run_dir(p: Path) -> bool:
    # a folder being made (or left by a killed process) has a temporary, dotted name
    return not p.name.startswith(".") and (p / "config.json").is_file()


def finished_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The ``summary.json`` of a finished run, or None: a run counts as finished only once
    ``onebit.experiments.runs`` wrote its whole summary (method, seed, accuracies and size),
    so a folder of a run that failed, was killed or is still training is never a seed of a
    table."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keys = ("method", "seed", "test_acc_best_val", "test_acc_last", "epochs", "size_bytes")
    if not isinstance(doc, dict) or not all(k in doc for k in keys):
        return None
    return doc


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders among ``paths``: each is a run folder or a folder of run folders.

    Raises:
        OnebitError: a path does not exist or holds no run folder.
    """
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        if not p.is_dir():
            raise OnebitError(f"{p} is not a folder; pass run folders or a comparison folder.")
        if _is_run_dir(p):
            found.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and _is_run_dir(d))
        if not subs:
            raise OnebitError(
                f"{p} is neither a onebit run folder nor a folder of them (no config.json)."
            )
        found.extend(subs)
    unique: dict[Path, Path] = {}
    for d in found:
        unique.setdefault(d.resolve(), d)
    return list(unique.values())


def read_json(path: Path) -> Any:
    """A JSON file, or one clear OnebitError when it is unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OnebitError(f"{path} is not readable JSON ({type(e).__name__}).") from None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The epochs of ``metrics.jsonl`` (an empty list when absent; a torn last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def read_run(run_dir: str | Path) -> dict[str, Any] | None:
    """One finished run's row: ``run`` (folder name), method, seed, name, and its summary.

    Returns None for a run that has not finished (no complete ``summary.json`` yet, see
    :func:`finished_summary`).
    """
    d = Path(run_dir)
    summary = finished_summary(d)
    if summary is None:
        return None
    cfg = read_json(d / "config.json") if (d / "config.json").is_file() else {}
    method = summary.get("method", cfg.get("method", {}).get("name", "?"))
    seed = summary.get("seed", cfg.get("train", {}).get("seed", 0))
    return {"run": d.name, "name": cfg.get("name", ""), **summary, "method": method, "seed": seed}


def mixed_methods(run_dirs: Sequence[Path]) -> list[str]:
    """Methods whose runs among ``run_dirs`` differ in more than seed and ``out``: a table row
    would average over different budgets (the report says so, and still makes the table)."""
    seen: dict[str, Any] = {}
    mixed: list[str] = []
    for d in run_dirs:
        if not (Path(d) / "config.json").is_file():
            continue
        cfg = read_json(Path(d) / "config.json")
        cfg = {**cfg, "out": None, "train": {**cfg.get("train", {}), "seed": None}}
        name = cfg.get("method", {}).get("name", "?")
        if seen.setdefault(name, cfg) != cfg and name not in mixed:
            mixed.append(name)
    return mixed


def _method_rank(name: str) -> tuple[int, str]:
    from onebit.methods import METHODS

    order = list(METHODS)
    if name == "fp":
        return (0, name)
    if name in order:
        return (1 + order.index(name), name)
    return (1 + len(order), name)


def sort_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in the fixed table order: ``fp`` first, then registry order, then by seed."""
    return sorted(rows, key=lambda r: (*_method_rank(r["method"]), r["seed"], r.get("run", "")))


def _r(x: float) -> float:
    return round(x, 6)


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One numeric row per method, mean and sample std over its seeds.

    Accuracies are of the hard-binarized model, in percent; ``gap_best_val`` and ``gap_last`` are
    the method's mean minus the ``fp`` row's mean, in points (None without an ``fp`` row, and for
    the ``fp`` row itself). Sizes come from the first seed (the seeds share the model).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sort_rows(rows):
        groups.setdefault(r["method"], []).append(r)
    out = []
    for method, rs in groups.items():
        best = mean_std([100 * r["test_acc_best_val"] for r in rs])
        last = mean_std([100 * r["test_acc_last"] for r in rs])
        secs = statistics.fmean(r["seconds"] for r in rs)
        epochs = rs[0]["epochs"]
        out.append(
            {
                "method": method,
                "seeds": len(rs),
                "seed_list": [r["seed"] for r in rs],
                "test_best_val_mean": _r(best[0]),
                "test_best_val_std": _r(best[1]),
                "test_last_mean": _r(last[0]),
                "test_last_std": _r(last[1]),
                "gap_best_val": None,
                "gap_last": None,
                "epochs": epochs,
                "seconds_mean": _r(secs),
                "s_per_epoch": _r(secs / max(epochs, 1)),
                **{
                    k: rs[0].get(k)
                    for k in ("binary_params", "float_params", "size_bytes", "float_size_bytes")
                },
                **_optional_means(rs),
            }
        )
    fp = next((r for r in out if r["method"] == "fp"), None)
    if fp is not None:
        for r in out:
            if r is not fp:
                r["gap_best_val"] = _r(r["test_best_val_mean"] - fp["test_best_val_mean"])
                r["gap_last"] = _r(r["test_last_mean"] - fp["test_last_mean"])
    return out


def _optional_means(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std of the relaxed model's accuracy, of the fraction of weights off ±1 and of a
    language model's test bits per character, where every seed reports them (None otherwise)."""
    out: dict[str, Any] = {"relaxed_mean": None, "relaxed_std": None, "off_pm1_mean": None}
    out["bpc_mean"] = out["bpc_std"] = None
    if all(r.get("test_bpc_best_val") is not None for r in rs):
        m, sd = mean_std([r["test_bpc_best_val"] for r in rs])
        out["bpc_mean"], out["bpc_std"] = _r(m), _r(sd)
    if all(r.get("relaxed_test_acc") is not None for r in rs):
        m, sd = mean_std([100 * r["relaxed_test_acc"] for r in rs])
        out["relaxed_mean"], out["relaxed_std"] = _r(m), _r(sd)
    if all(r.get("off_binary") is not None for r in rs):
        out["off_pm1_mean"] = statistics.fmean(r["off_binary"] for r in rs)
    return out


def human_seconds(s: float) -> str:
    """``75 -> '1.2 min'``."""
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _pm(m: float, s: float, n: int) -> str:
    return f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"


def format_table(summary: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The rows of :func:`summarize` as display strings (the keys of ``COMPARE_COLUMNS``)."""
    out = []
    for r in summary:
        n = r["seeds"]
        gap = r["gap_best_val"]
        out.append(
            {
                "method": r["method"],
                "seeds": str(n),
                "test_best_val": _pm(r["test_best_val_mean"], r["test_best_val_std"], n),
                "test_last": _pm(r["test_last_mean"], r["test_last_std"], n),
                "gap": "—" if gap is None else f"{gap:+.2f}",
                "epochs": str(r["epochs"]),
                "wall": human_seconds(r["seconds_mean"]),
                "s_per_epoch": f"{r['s_per_epoch']:.1f}",
                "binary_params": "" if r["binary_params"] is None else f"{r['binary_params']:,}",
                "float_params": "" if r["float_params"] is None else f"{r['float_params']:,}",
                "size": "" if r["size_bytes"] is None else human_bytes(r["size_bytes"]),
                "relaxed": "—"
                if r.get("relaxed_mean") is None
                else _pm(r["relaxed_mean"], r["relaxed_std"], n),
                "off_pm1": "—"
                if r.get("off_pm1_mean") is None
                else f"{100 * r['off_pm1_mean']:.2f}%",
                "bpc": "—"
                if r.get("bpc_mean") is None
                else f"{r['bpc_mean']:.3f} ± {r['bpc_std']:.3f}"
                if n > 1
                else f"{r['bpc_mean']:.3f}",
            }
        )
    return out


def table_columns(summary: Sequence[dict[str, Any]]) -> list[str]:
    """``COMPARE_COLUMNS``, without the gap column when there is no ``fp`` row to measure from, plus
    the optional columns some row reports."""
    has_fp = any(r["method"] == "fp" for r in summary)
    cols = [c for c in COMPARE_COLUMNS if c != "gap" or has_fp]
    if any(r.get("bpc_mean") is not None for r in summary):  # language models lead with bits/char
        cols.insert(cols.index("test_best_val"), "bpc")
    return cols + [
        c for c in OPTIONAL_COLUMNS if any(r.get(f"{c}_mean") is not None for r in summary)
    ]


def results_doc(rows: Sequence[dict[str, Any]], name: str = "") -> dict[str, Any]:
    """What ``results.json`` holds: the name, the per-method table and the per-run rows.

    Nothing in it depends on where the folders are or when the report was made, so a report
    rebuilt from the same run folders is identical.
    """
    runs = sort_rows(rows)
    return {"name": name, "table": summarize(runs), "runs": runs}


def results_markdown(doc: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """``results.md``: title, the table, and the plots (paths relative to the Markdown file)."""
    table = doc["table"]
    seeds = sorted({n for r in table for n in [r["seeds"]]})
    seeds_text = "/".join(str(s) for s in seeds)
    lines = [
        f"# {doc['name'] or 'results'}",
        "",
        "Test accuracy (%) of the hard-binarized model (the weights a user deploys): mean ± std "
        f"over {seeds_text} seed(s), at the epoch of best validation accuracy and at the last "
        "epoch; the gap is to the full-precision twin (`fp`), in points; wall time is per run.",
        "",
        *(
            [
                "Language models: test cross-entropy in bits per character (nats / ln 2, lower is "
                "better) at the epoch of lowest validation bits per character; accuracy is per "
                "character (next-character prediction).",
                "",
            ]
            if any(r.get("bpc_mean") is not None for r in table)
            else []
        ),
        markdown_table(format_table(table), table_columns(table)),
        "",
    ]
    for p in plots:
        lines += [f"![{Path(p).stem}]({p})", ""]
    return "\n".join(lines)


def results_csv(doc: dict[str, Any]) -> str:
    """The numeric table of ``doc`` as CSV (one row per method)."""
    table = doc["table"]
    if not table:
        return ""
    buf = io.StringIO()
    cols = [c for c in table[0] if c != "seed_list"]
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in cols})
    return buf.getvalue()


def write_results(
    out_dir: str | Path,
    rows: Sequence[dict[str, Any]],
    name: str = "",
    run_dirs: Sequence[Path] = (),
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``results.md``, ``results.csv``, ``results.json`` and ``plots/*.png`` into ``out_dir``.

    Args:
        out_dir: the comparison folder.
        rows: per-run rows (:func:`read_run`).
        name: the comparison's name (the config name).
        run_dirs: the run folders the plots are drawn from (none: no plots).
        plots: draw the PNG plots (needs matplotlib; skipped with a warning without it).

    Returns:
        The ``results.json`` document, with ``plots`` (relative paths of the PNG files) added.
    """
    out = make_folder(out_dir, "the report folder")
    doc = results_doc(rows, name)
    made: list[Path] = []
    if plots and run_dirs:
        made = make_plots(run_dirs, out / "plots")
    rel = [p.relative_to(out).as_posix() for p in made]
    atomic_write(out / "results.json", json.dumps(doc, indent=2) + "\n")
    atomic_write(out / "results.csv", results_csv(doc))
    atomic_write(out / "results.md", results_markdown(doc, rel))
    return {**doc, "plots": rel}


# --- run folders -> plots --------------------------------------------------------------------


def _series(run_dirs: Sequence[Path], key: str) -> dict[str, list[list[float]]]:
    """Per method (table order), one list per run of ``metrics.jsonl[key]`` over epochs."""
    runs = []
    for d in run_dirs:
        row = read_run(d) or _unfinished_row(d)
        if row is None:
            continue
        values = [r[key] for r in read_metrics(d) if r.get(key) is not None]
        if values:
            runs.append({**row, "values": values})
    out: dict[str, list[list[float]]] = {}
    for r in sort_rows(runs):
        out.setdefault(r["method"], []).append(r["values"])
    return out


def _unfinished_row(d: Path) -> dict[str, Any] | None:
    if not (d / "config.json").is_file():
        return None
    cfg = read_json(d / "config.json")
    return {"run": d.name, "method": cfg["method"]["name"], "seed": cfg["train"]["seed"]}


def _latent_weights(run_dirs: Sequence[Path], per_run: int = 200_000) -> dict[str, dict[str, Any]]:
    """Per method, per binary layer: the latent weights at the end (``last.pt``), seeds pooled."""
    import numpy as np

    from onebit.experiments.runs import load_run
    from onebit.layers import is_binary_layer

    out: dict[str, dict[str, list[Any]]] = {}
    rows = [r for r in (read_run(d) or _unfinished_row(d) for d in run_dirs) if r is not None]
    dirs = {d.name: d for d in run_dirs}
    for row in sort_rows(rows):
        d = dirs[row["run"]]
        if not (d / "last.pt").is_file():
            continue
        try:
            _cfg, model, _method, _state = load_run(d, "last")
        except OnebitError as e:
            log.warning("no weight histogram for %s: %s", d, e)
            continue
        rng = np.random.default_rng(0)
        for name, m in model.named_modules():
            if is_binary_layer(m) and getattr(m, "binary", True):
                w = m.weight.detach().float().flatten().numpy()
                if w.size > per_run:
                    w = rng.choice(w, per_run, replace=False)
                label = f"{name} ({'×'.join(str(n) for n in m.weight.shape)})"
                out.setdefault(row["method"], {}).setdefault(label, []).append(w)
    return {m: {n: np.concatenate(ws) for n, ws in layers.items()} for m, layers in out.items()}


def _sensitivity(run_dirs: Sequence[Path]) -> dict[str, list[tuple[str, list[float]]]]:
    """Per method: per layer (file order), the validation accuracies over the seeds' files."""
    out: dict[str, dict[str, list[float]]] = {}
    rows = [r for r in (read_run(d) or _unfinished_row(d) for d in run_dirs) if r is not None]
    dirs = {d.name: d for d in run_dirs}
    for row in sort_rows(rows):
        path = dirs[row["run"]] / "sensitivity.json"
        if not path.is_file():
            continue
        try:
            pairs = read_ranking(path).layers
        except OnebitError as e:
            log.warning("%s; skipped", e)
            continue
        for name, acc in pairs:
            out.setdefault(row["method"], {}).setdefault(name, []).append(acc)
    return {m: list(layers.items()) for m, layers in out.items()}


def make_plots(run_dirs: Sequence[Path], out_dir: str | Path) -> list[Path]:
    """Draw every plot the run folders have data for into ``out_dir``; returns the PNG paths.

    - ``accuracy.png``: test accuracy against epoch per method, mean over seeds with a min–max band;
    - ``weights.png``: latent-weight histograms per binary layer at the end (needs ``last.pt``);
    - ``flips.png``: the fraction of binary weights whose sign flipped per epoch (and of latent
      weights near zero), where ``metrics.jsonl`` logs them;
    - ``sensitivity.png``: per-layer sensitivity, for runs with a ``sensitivity.json``.

    Without matplotlib this logs a warning and returns no plots.
    """
    from onebit.experiments import plots

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("matplotlib is not installed; no plots (pip install 'onebit[plots]')")
        return []
    out = make_folder(out_dir, "the plots folder")
    rows = [r for r in (read_run(d) or _unfinished_row(d) for d in run_dirs) if r is not None]
    colors = plots.method_colors(list(dict.fromkeys(r["method"] for r in sort_rows(rows))))
    made: list[Path | None] = [
        plots.plot_curves(
            _series(run_dirs, "test_acc"),
            out / "accuracy.png",
            ylabel="test accuracy (hard-binarized)",
            title="test accuracy per epoch (mean, min–max over seeds)",
            colors=colors,
        ),
        plots.plot_weight_histograms(_latent_weights(run_dirs), out / "weights.png", colors=colors),
        plots.plot_flips(
            _series(run_dirs, "flip_rate"),
            _series(run_dirs, "near_zero"),
            out / "flips.png",
            colors=colors,
        ),
        plots.plot_sensitivity(_sensitivity(run_dirs), out / "sensitivity.png", colors=colors),
    ]
    return [p for p in made if p is not None]
