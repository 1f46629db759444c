"""Time one training step of the MLP 784-2048-2048-2048-10 at batch 100: binarized (bc) vs float,
each with torch's matrix products and with onebit's native kernel (``train.gemm``, onebit.gemm).

All four are measured in the same run, interleaved, on the same thread count; the figures that
matter are the ratios. Usage:

    python benchmarks/bench_train_step.py [--threads 2] [--steps 50] [--out records/x.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as F

import onebit
from onebit.experiments.runs import environment
from onebit.gemm import gemm_backend
from onebit.training import TrainConfig, make_optimizer


def make(method_name: str, compile_: bool) -> tuple[torch.nn.Module, object, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = onebit.models.build("mlp", (1, 28, 28), 10, hidden=(2048, 2048, 2048))
    method = onebit.methods.METHODS[method_name]()
    onebit.binarize_(model, method)
    opt = make_optimizer(model, TrainConfig())
    net = torch.compile(model) if compile_ else model
    return net, method, opt, model


def step_time(net, method, opt, model, x, y, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(model)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--out", help="write the JSON record here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(100, 1, 28, 28)
    y = torch.randint(0, 10, (100,))
    runs = {name: make(name, args.compile) for name in ("fp", "bc")}
    kernels = ("torch",) if args.compile else ("torch", "onebit")
    for r in runs.values():
        for kernel in kernels:
            with gemm_backend(kernel, r[3]):
                step_time(*r, x, y, 5)  # warm-up (and compilation)
    samples = {(name, k): [] for name in runs for k in kernels}
    for _ in range(args.rounds):  # interleave so drift on a shared machine hits all alike
        for (name, kernel), s in samples.items():
            with gemm_backend(kernel, runs[name][3]):
                s += step_time(*runs[name], x, y, args.steps // args.rounds)
    med = {f"{name}/{k}": statistics.median(s) for (name, k), s in samples.items()}
    result = {
        "benchmark": "train step, MLP 784-2048x3-10, batch 100, Adam",
        "threads": args.threads,
        "compile": args.compile,
        "median_step_ms": {k: round(1000 * v, 2) for k, v in med.items()},
        "ratio_bc_over_fp": {k: round(med[f"bc/{k}"] / med[f"fp/{k}"], 3) for k in kernels},
        "speedup_onebit_over_torch": {
            m: round(med[f"{m}/torch"] / med[f"{m}/onebit"], 3) for m in runs if "onebit" in kernels
        },
        "env": environment(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
