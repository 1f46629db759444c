"""Time onebit's native float32 GEMM (``onebit.kernels.matmul``) against torch's ``mm`` on the
three products of a linear layer's training step, MLP 784-2048x3-10 at batch 100:

    forward x W^T (100 x 2048 by 2048 x 2048, W read transposed), input gradient g W, weight
    gradient g^T x (2048 x 100 by 100 x 2048, g read transposed), and the first layer's 784-wide
    forward and weight gradient.

Both run on the same operands and thread count, interleaved round by round; each figure is the
median over rounds of the median call within a round. Usage:

    python benchmarks/bench_gemm.py [--threads 1,2] [--rounds 7] [--out records/x/gemm.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

import onebit.kernels as K
from onebit.experiments.runs import environment


def median_call(fn: Callable[[], object], calls: int) -> float:
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cases(batch: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x, x1 = torch.randn(batch, 2048, generator=g), torch.randn(batch, 784, generator=g)
    w, w1 = torch.randn(2048, 2048, generator=g), torch.randn(2048, 784, generator=g)
    dy = torch.randn(batch, 2048, generator=g)
    return {
        "forward x W^T (2048 -> 2048)": (x, w.t()),
        "input gradient g W (2048 -> 2048)": (dy, w),
        "weight gradient g^T x (2048 x 2048)": (dy.t(), x),
        "forward x W^T (784 -> 2048)": (x1, w1.t()),
        "weight gradient g^T x (2048 x 784)": (dy.t(), x1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out")
    args = ap.parse_args()
    if not K.matmul_available():
        raise SystemExit("the native matmul needs the built extension on an AVX-512 CPU")
    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name, (a, b) in cases(args.batch).items():
            an, bn = a.numpy(), b.numpy()
            out = np.empty((a.shape[0], b.shape[1]), np.float32)
            fns = {
                "torch": lambda a=a, b=b: torch.mm(a, b),
                "onebit": lambda an=an, bn=bn, out=out, t=threads: K.matmul(an, bn, out, threads=t),
            }
            for fn in fns.values():  # warm-up
                median_call(fn, 3)
            rounds: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(args.rounds):
                for k, fn in fns.items():
                    rounds[k].append(median_call(fn, args.calls))
            sec = {k: statistics.median(v) for k, v in rounds.items()}
            flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
            row = {
                "product": name,
                "shape_mkn": [a.shape[0], a.shape[1], b.shape[1]],
                "threads": threads,
                "ms": {k: round(1e3 * v, 3) for k, v in sec.items()},
                "gflops": {k: round(flops / v / 1e9, 1) for k, v in sec.items()},
                "speedup": round(sec["torch"] / sec["onebit"], 2),
            }
            results.append(row)
            print(
                f"{threads}t {name:38s} torch {row['gflops']['torch']:6.1f}  onebit "
                f"{row['gflops']['onebit']:6.1f} GFLOP/s  {row['speedup']:.2f}x"
            )
    if args.out:
        record = {
            "benchmark": "float32 GEMM, onebit.kernels.matmul vs torch.mm",
            "isa": K.get_isa(),
        }
        record |= {"results": results, "env": environment()}
        with open(args.out, "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
