"""Time one training step of ResNet-20 on CIFAR-sized batches (batch 128) in fp32 and bf16, with
channels_last on and off and torch.compile off and on, all in one run; print the ratios.

Each step is the training loop's own (:class:`onebit.training.TrainStep`: autocast, the fast
recipe's SGD with Nesterov momentum, label smoothing, the method's hooks) on a batch drawn by
:func:`onebit.data.batches` from uint8 images in memory with random crop and flip, so the time
includes the data pipeline. The variants are measured interleaved, round after round, so drift
on a shared machine hits all alike; the figures that matter are the ratios. The epoch time is
extrapolated from the median step (352 steps: 45,000 training images, CIFAR-10 less a 5,000
validation split) and leaves evaluation out. A compiled variant's first step (its compilation)
is reported apart and not counted.

    python benchmarks/bench_epoch_time.py --threads 1 --steps 4 --rounds 2
    python benchmarks/bench_epoch_time.py --compile off --out records/x/epoch_time.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from dataclasses import dataclass, field

import torch

import onebit
from onebit.data import Split, batches
from onebit.devices import Precision, resolve_device, resolve_precision
from onebit.errors import OnebitError
from onebit.experiments.runs import environment
from onebit.training import TrainConfig, TrainStep, make_optimizer

BATCH = 128
TRAIN_IMAGES = 45_000
STEPS_PER_EPOCH = math.ceil(TRAIN_IMAGES / BATCH)
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
RECIPE = TrainConfig(
    batch_size=BATCH, optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True,
    weight_decay=5e-4, label_smoothing=0.1,
)  # fmt: skip


@dataclass
class Variant:
    """One configuration under test, with its model, step and timings."""

    precision: str
    channels_last: bool
    compile: bool
    step: TrainStep
    via: str
    times: list[float] = field(default_factory=list)
    first_step: float = 0.0

    @property
    def key(self) -> str:
        cl = "cl" if self.channels_last else "nchw"
        return f"{self.precision}/{cl}/{'compile' if self.compile else 'eager'}"


def _precision(name: str, device: torch.device) -> tuple[Precision, str]:
    """The run's precision; bf16 on a CPU without native bf16 is measured anyway (emulated)."""
    try:
        p = resolve_precision(name, device)
        return p, p.via
    except OnebitError:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[name]
        return Precision(name, device.type, dtype, "emulated"), "emulated (no native bf16)"


def make_variant(
    precision: str, channels_last: bool, compile_: bool, method: str, device: torch.device
) -> Variant:
    torch.manual_seed(0)
    model = onebit.models.build("resnet20", (3, 32, 32), 10)
    m = onebit.methods.METHODS[method](keep_first=True, keep_last=True)
    onebit.binarize_(model, m)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = m.make_optimizer(model, RECIPE) or make_optimizer(model, RECIPE, m.param_groups(model))
    net = torch.compile(model) if compile_ else model
    p, via = _precision(precision, device)
    step = TrainStep(model, m, opt, RECIPE, net=net, precision=p)
    return Variant(precision, channels_last, compile_, step, via)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(v: Variant, split: Split, steps: int, seed: int, device: torch.device) -> list[float]:
    """``steps`` timed steps, each from drawing its batch to the end of the optimizer step."""
    gen = torch.Generator().manual_seed(seed)
    it = batches(split, BATCH, mean=MEAN, std=STD, shuffle=True, generator=gen, augment=True,
                 channels_last=v.channels_last)  # fmt: skip
    v.step.model.train()
    out = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        x, y = next(it)
        v.step(x, y, RECIPE.lr)
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def _choices(text: str, allowed: dict[str, object]) -> list:
    return [allowed[t.strip()] for t in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--channels-last", default="off,on")
    ap.add_argument("--compile", default="off,on")
    ap.add_argument("--method", default="fp", help="a registry name (fp, bc, ...)")
    ap.add_argument("--device", default="cpu", help="train.device spelling (cpu, cuda, auto)")
    ap.add_argument("--out", help="write the JSON record here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    onoff = {"on": True, "off": False}
    grid = itertools.product(
        [p.strip() for p in args.precisions.split(",")],
        _choices(args.channels_last, onoff),
        _choices(args.compile, onoff),
    )
    variants = [make_variant(p, cl, c, args.method, device) for p, cl, c in grid]
    n = BATCH * max(args.steps, args.warmup, 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    split = Split(x, torch.randint(0, 10, (n,), generator=g).to(device))
    for v in variants:  # warm-up, compilation included (the first step, reported apart)
        first = run_steps(v, split, max(args.warmup, 1), seed=1, device=device)
        v.first_step = first[0]
        print(f"warmed up {v.key:22s} first step {first[0]:.2f} s", flush=True)
    for r in range(args.rounds):  # interleaved: drift on a shared machine hits all alike
        for v in variants:
            v.times += run_steps(v, split, args.steps, seed=100 + r, device=device)
    report(variants, args, device)


def report(variants: list[Variant], args: argparse.Namespace, device: torch.device) -> None:
    base = variants[0]
    med = {v.key: statistics.median(v.times) for v in variants}
    print(f"\nResNet-20, batch {BATCH}, {args.method}, {device}, threads {args.threads}, "
          f"{args.rounds} x {args.steps} timed steps per variant; ratios to {base.key}")  # fmt: skip
    print(f"{'variant':22s} {'step ms':>8s} {'epoch s':>8s} {'ratio':>6s}  first step s  via")
    for v in variants:
        s = med[v.key]
        print(f"{v.key:22s} {1000 * s:8.1f} {s * STEPS_PER_EPOCH:8.1f} {s / med[base.key]:6.3f}"
              f"  {v.first_step:12.2f}  {v.via}")  # fmt: skip
    pairs = {}
    for v in variants:  # bf16 against fp32 at the same memory format and compile setting
        twin = v.key.replace(v.precision, "fp32", 1)
        if v.precision != "fp32" and twin in med:
            pairs[f"{v.key} / {twin}"] = round(med[v.key] / med[twin], 3)
    for k, r in pairs.items():
        print(f"  {k}: {r}")
    result = {
        "benchmark": f"train step, ResNet-20, batch {BATCH}, CIFAR-sized uint8 batches with "
        "crop+flip, SGD nesterov, label smoothing 0.1",
        "method": args.method,
        "device": str(device),
        "threads": args.threads,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "median_step_ms": {k: round(1000 * s, 2) for k, s in med.items()},
        "epoch_train_s_extrapolated": {k: round(s * STEPS_PER_EPOCH, 1) for k, s in med.items()},
        "ratio_to_" + base.key: {k: round(s / med[base.key], 3) for k, s in med.items()},
        "ratio_lowp_over_fp32": pairs,
        "first_step_s": {v.key: round(v.first_step, 2) for v in variants},
        "precision_via": {v.key: v.via for v in variants},
        "env": environment(),
    }
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
