"""Tables from run results: mean ± std over seeds, as Markdown or plain text."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["aggregate", "human_bytes", "markdown_table", "mean_std"]


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


def _pct(m: float, s: float, n: int) -> str:
    return f"{100 * m:.2f} ± {100 * s:.2f}" if n > 1 else f"{100 * m:.2f}"


def aggregate(rows: list[dict[str, Any]], by: str = "method") -> list[dict[str, Any]]:
    """One row per value of ``by`` (in first-seen order), mean ± std over the rows (seeds) in it."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[by], []).append(r)
    out = []
    for key, rs in groups.items():
        n = len(rs)
        best = mean_std([r["test_acc_best_val"] for r in rs])
        last = mean_std([r["test_acc_last"] for r in rs])
        secs = statistics.fmean(r["seconds"] / max(r["epochs"], 1) for r in rs)
        out.append(
            {
                by: key,
                "seeds": n,
                "test_best_val": _pct(*best, n),
                "test_last": _pct(*last, n),
                "epochs": rs[0]["epochs"],
                "s_per_epoch": f"{secs:.1f}",
                "binary_params": f"{rs[0]['binary_params']:,}",
                "float_params": f"{rs[0]['float_params']:,}",
                "size": human_bytes(rs[0]["size_bytes"]),
            }
        )
    return out


HEADERS = {
    "method": "method",
    "seeds": "seeds",
    "test_best_val": "test acc % (best val)",
    "test_last": "test acc % (last)",
    "epochs": "epochs",
    "s_per_epoch": "s/epoch",
    "binary_params": "binary params",
    "float_params": "float params",
    "size": "size",
}


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
