"""Seconds per epoch of the Fashion-MNIST MLP recipe: onebit beside Larq 0.14, same machine, same
run of this script, 2 threads each (the foundation issue's setting).

For each method (fp, bc, bnn) it trains onebit (its defaults, ``train.gemm = "auto"``) and then
Larq (``benchmarks/larq/fmnist_mlp.py``), one after the other so that drift of a shared host hits
both alike, each for ``--epochs`` epochs, and keeps the last epoch (the first one carries
TensorFlow's graph tracing).

Compared figures, per epoch: training plus validation (Keras ``fit`` time for Larq,
``train_seconds`` plus the validation pass for onebit) and the same plus the test pass.

    ONEBIT_DATA=... .venv/bin/python benchmarks/larq/epoch_time.py --out records/x/epoch_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LARQ_PY = ROOT / "benchmarks/larq/.venv/bin/python"
CONFIG = ROOT / "configs/fmnist_mlp_larq.toml"


def onebit_epoch(method: str, epochs: int, threads: int, tmp: Path) -> dict:
    out = tmp / method
    cmd = [sys.executable, "-m", "onebit.cli", "train", str(CONFIG), "--no-progress",
           "--set", f"method.name={method}", "--set", f"train.epochs={epochs}",
           "--set", f"train.threads={threads}",
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
    }


def larq_epoch(method: str, epochs: int, threads: int, tmp: Path) -> dict:
    out = tmp / f"larq-{method}.json"
    cmd = [str(LARQ_PY), "benchmarks/larq/fmnist_mlp.py", "--method", method,
           "--epochs", str(epochs), "--threads", str(threads), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    last = json.loads(out.read_text())["epochs"][-1]
    return {"train_val_s": last["fit_s"], "total_s": last["fit_s"] + last["test_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="fp,bc,bnn")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the JSON record here")
    args = ap.parse_args()
    if not LARQ_PY.exists():
        raise SystemExit("no Larq environment: run bash benchmarks/larq/setup.sh first.")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for m in args.methods.split(","):
            row = {"method": m}
            row["onebit"] = onebit_epoch(m, args.epochs, args.threads, tmp)
            row["larq"] = larq_epoch(m, args.epochs, args.threads, tmp)
            rows.append(row)
            print(json.dumps(row), flush=True)
    sys.path.insert(0, str(ROOT))
    from onebit.gemm import resolve
    from onebit.runs import environment

    result = {
        "benchmark": "seconds per epoch (last of the run), Fashion-MNIST MLP recipe, batch 100",
        "threads": args.threads,
        "epochs": args.epochs,
        "gemm_auto": resolve("auto", args.threads),
        "rows": rows,
        "env": environment(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print("| method | onebit s | Larq 0.14 s | onebit faster by |")
    print("|---|---|---|---|")
    for r in rows:
        ob, lq = r["onebit"]["train_val_s"], r["larq"]["train_val_s"]
        print(f"| {r['method']} | {ob:.1f} | {lq:.1f} | {lq / ob:.2f}x |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
