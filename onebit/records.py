"""Records: the light, committed copy of runs a README quotes, with the command that remakes them.

``records/<date>_<name>/`` holds, per run, ``config.json``, ``env.json``, ``metrics.jsonl`` and
``summary.json`` (no checkpoints), plus ``results.json`` (one row per run), ``README.md`` (the
table, mean ± std over seeds) and ``command.sh``.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onebit.report import aggregate, markdown_table

__all__ = ["TABLE_COLUMNS", "write_record"]

LIGHT_FILES = ("config.json", "env.json", "metrics.jsonl", "summary.json")
TABLE_COLUMNS = [
    "method",
    "seeds",
    "test_best_val",
    "test_last",
    "epochs",
    "s_per_epoch",
    "binary_params",
    "float_params",
    "size",
]


def write_record(
    path: str | Path,
    rows: list[dict[str, Any]],
    run_dirs: Sequence[Path],
    argv: Sequence[str],
    title: str = "",
) -> Path:
    """Copy the light files of ``run_dirs`` into ``path`` and write the table and the command."""
    out = Path(path)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for d in run_dirs:
        dest = out / "runs" / Path(d).name
        dest.mkdir(exist_ok=True)
        for name in LIGHT_FILES:
            if (Path(d) / name).exists():
                shutil.copy2(Path(d) / name, dest / name)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    command = "onebit " + shlex.join(argv)
    (out / "command.sh").write_text(f"#!/bin/sh\n# remakes this record\n{command}\n")
    env = json.loads((Path(run_dirs[0]) / "env.json").read_text()) if run_dirs else {}
    lines = [
        f"# {title or out.name}",
        "",
        "Test accuracy of the hard-binarized model (sign(w) times the scale), mean ± std over seeds.",
        "",
        markdown_table(aggregate(rows), TABLE_COLUMNS),
        "",
        f"Made with `{command}`",
        "",
        "Environment of the first run: "
        + ", ".join(
            f"{k} {env[k]}" for k in ("commit", "torch", "machine", "threads", "date") if k in env
        ),
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))
    return out
