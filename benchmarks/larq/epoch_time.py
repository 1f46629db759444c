"""Seconds per epoch of the Fashion-MNIST MLP recipe: onebit beside Larq 0.14, same machine, same
run of this script, 2 threads each (the foundation issue's setting).

For each method (fp, bc, bnn) it trains onebit and Larq (``benchmarks/larq/fmnist_mlp.py``) one
after the other, so that drift of a shared host hits both alike, each for ``--epochs`` epochs, and
keeps the last epoch (the first one carries TensorFlow's graph tracing). ``--repeats`` passes
alternate which library goes first; the table gives the median over passes.

``--libs onebit,onebit_torch_gemm,larq`` also times onebit with torch's matrix products
(``train.gemm = torch``) beside its default (``auto``: the native kernel, onebit.gemm).

Compared figures, per epoch: training plus validation (Keras ``fit`` time for Larq,
``train_seconds`` plus the validation pass for onebit) and the same plus the test pass.

    ONEBIT_DATA=... .venv/bin/python benchmarks/larq/epoch_time.py --out records/x/epoch_time.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LARQ_PY = ROOT / "benchmarks/larq/.venv/bin/python"
CONFIG = ROOT / "configs/fmnist_mlp_larq.toml"


def onebit_epoch(method: str, epochs: int, threads: int, tmp: Path, gemm: str = "auto") -> dict:
    out = tmp / f"{method}-{gemm}"
    cmd = [sys.executable, "-m", "onebit.cli", "train", str(CONFIG), "--no-progress",
           "--set", f"method.name={method}", "--set", f"train.epochs={epochs}",
           "--set", f"train.threads={threads}", "--set", f"train.gemm={gemm}",
           "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    (metrics,) = out.glob("*/*/metrics.jsonl")
    last = [json.loads(line) for line in metrics.read_text().splitlines()][-1]
    # seconds = train + validation + test; the two evaluations take about equal time (10k each)
    eval_s = last["seconds"] - last["train_seconds"]
    return {
        "train_val_s": last["train_seconds"] + eval_s / 2,
        "total_s": last["seconds"],
        "train_s": last["train_seconds"],
        "gemm": last.get("gemm", "torch"),
    }


def larq_epoch(method: str, epochs: int, threads: int, tmp: Path) -> dict:
    out = tmp / f"larq-{method}.json"
    cmd = [str(LARQ_PY), "benchmarks/larq/fmnist_mlp.py", "--method", method,
           "--epochs", str(epochs), "--threads", str(threads), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    last = json.loads(out.read_text())["epochs"][-1]
    return {"train_val_s": last["fit_s"], "total_s": last["fit_s"] + last["test_s"]}


EPOCH = {
    "onebit": onebit_epoch,  # train.gemm = auto: the native kernel where it exists
    "onebit_torch_gemm": functools.partial(onebit_epoch, gemm="torch"),
    "larq": larq_epoch,
}


def median_table(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per method, the median over passes of each library's training + validation seconds."""
    out: dict[str, dict[str, float]] = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        libs = [lib for lib in EPOCH if lib in mine[0]]
        out[m] = {lib: statistics.median(r[lib]["train_val_s"] for r in mine) for lib in libs}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="fp,bc,bnn")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="passes, alternating the order")
    ap.add_argument("--libs", default="onebit,larq", help=f"what to time, from {','.join(EPOCH)}")
    ap.add_argument("--out", help="write the JSON record here")
    args = ap.parse_args()
    if not LARQ_PY.exists():
        raise SystemExit("no Larq environment: run bash benchmarks/larq/setup.sh first.")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for rep in range(args.repeats):
            for m in args.methods.split(","):
                tmp = Path(d) / f"{rep}"
                row: dict = {"method": m, "pass": rep}
                libs = args.libs.split(",")
                order = libs if rep % 2 == 0 else libs[::-1]
                for lib in order:
                    row[lib] = EPOCH[lib](m, args.epochs, args.threads, tmp)
                rows.append(row)
                print(json.dumps(row), flush=True)
    sys.path.insert(0, str(ROOT))
    from onebit.experiments.runs import environment

    result = {
        "benchmark": "seconds per epoch (last of the run), Fashion-MNIST MLP recipe, batch 100",
        "threads": args.threads,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "rows": rows,
        "env": environment(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    table = median_table(rows)
    result["median"] = table
    libs = list(next(iter(table.values())))
    print("| method | " + " | ".join(f"{lib} s" for lib in libs) + " |")
    print("|---" * (len(libs) + 1) + "|")
    for m, r in table.items():
        print(f"| {m} | " + " | ".join(f"{r[lib]:.1f}" for lib in libs) + " |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
