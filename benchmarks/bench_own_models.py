"""Models written outside onebit, packed, against their own torch float forward, in one run.

pytorchcv's ``resnet20_cifar10`` and a Hugging Face model (BERT for sequence classification,
from a small config: no weights can be downloaded here) are binarized with BinaryConnect (first
and last layer as the method's policy says), packed with ``onebit.pack`` and timed at each batch
size and thread count against:

- ``torch_float``: the user's original float32 model (before ``binarize_``), what they would run
  without onebit;
- the float twin of the packed graph in torch fp32/bf16 and onnxruntime fp32/int8
  (:func:`onebit.experiments.bench.bench`).

Speed does not depend on the weights' values; the models are freshly initialized with
BatchNorm statistics of random batches. Ratios are ``baseline seconds / packed seconds``.

    python benchmarks/bench_own_models.py --out records/<date>_own_models_speed/speed.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import numpy as np
import torch
from torch import nn

import onebit
from onebit import kernels
from onebit.experiments.bench import bench, cpu_flags
from onebit.experiments.runs import environment
from onebit.methods import BinaryConnect
from onebit.probe import first_tensor

SMALL_BERT = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
              "intermediate_size": 1024, "vocab_size": 1000, "max_position_embeddings": 128}  # fmt: skip


def _resnet20() -> tuple[nn.Module, torch.Tensor]:
    from pytorchcv.models.resnet_cifar import resnet20_cifar10

    return resnet20_cifar10(), torch.randn(2, 3, 32, 32)


def _bert() -> tuple[nn.Module, torch.Tensor]:
    from onebit.models import build

    model = build("hf", (64,), 10, arch="bert", task="sequence-classification", config=SMALL_BERT)
    return model, torch.randint(0, SMALL_BERT["vocab_size"], (2, 64))


CASES = {"pytorchcv resnet20_cifar10": _resnet20, "HF BERT 4x256 (seq 64)": _bert}


def _bn_stats_(model: nn.Module, x: torch.Tensor) -> None:
    """BatchNorm statistics of a few random batches (trained-like scales)."""
    for b in model.modules():
        if isinstance(b, nn.modules.batchnorm._BatchNorm):
            b.reset_running_stats()
            b.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x.repeat(8, *([1] * (x.dim() - 1))))
    model.eval()


def _seconds(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(name: str, threads: list[int], batches: list[int], repeats: int) -> dict:
    torch.manual_seed(0)
    float_model, example = CASES[name]()
    _bn_stats_(float_model, example)
    model = copy.deepcopy(float_model)
    report = onebit.binarize_(model, BinaryConnect(), example_inputs=(example,))
    _bn_stats_(model, example)
    packed = onebit.pack(model, (example,))
    res = bench(packed, threads, batches, repeats)
    rng = np.random.default_rng(0)
    own = []
    for t in threads:
        torch.set_num_threads(t)
        kernels.set_num_threads(t)
        for b in batches:
            if example.is_floating_point():
                x = torch.from_numpy(rng.standard_normal((b, *example.shape[1:]), np.float32))
            else:
                x = torch.from_numpy(rng.integers(0, SMALL_BERT["vocab_size"], (b, 64)))
            xn = x.numpy()

            def run_float(x: torch.Tensor = x) -> None:
                with torch.inference_mode():
                    first_tensor(float_model(x))

            def run_packed(xn: np.ndarray = xn) -> None:
                packed(xn)

            # interleaved rounds; the best round of each (a shared machine drifts)
            sec = {"torch_float": [], "packed": []}
            for _ in range(3):
                sec["torch_float"].append(_seconds(run_float, repeats))
                sec["packed"].append(_seconds(run_packed, repeats))
            tf, tp = min(sec["torch_float"]), min(sec["packed"])
            own.append({"threads": t, "batch": b, "torch_float_ms": 1e3 * tf,
                        "packed_ms": 1e3 * tp, "vs_torch_float": tf / tp})  # fmt: skip
    float_bytes = sum(p.numel() * 4 for p in float_model.state_dict().values()
                      if p.is_floating_point())  # fmt: skip
    packed_bytes = sum(v.nbytes for v in packed.tensors.values())
    return {
        "case": name,
        "binarized": f"{len(report.binary)} of {len(report.layers)} layers",
        "float_bytes": float_bytes,
        "packed_tensor_bytes": packed_bytes,
        "own_float_forward": own,
        "twin_baselines": res["results"],
        "isa": res["isa"],
    }


def readme(doc: dict) -> str:
    """The record's README: one row per model and batch, ratios from this run."""
    env = doc["env"]
    lines = [
        "# Models written outside onebit, packed, against their own torch float forward", "",
        f"Commit {env['commit'][:12]}, torch {env['torch']}, {env['machine']}, {env['date']}; "
        f"kernels `{doc['cases'][0]['isa']}`. Command: `command.sh` "
        "(`benchmarks/bench_own_models.py`).",
        "BinaryConnect (every layer binary except BERT's three embedding tables), freshly "
        "initialized with BatchNorm statistics of random batches (speed does not depend on the "
        "values). Every ratio is `baseline seconds / packed seconds` from interleaved rounds in "
        "this run (> 1: packed is faster); `own torch float` is the user's float32 model before "
        "`binarize_`, the other baselines run the packed graph's float twin.", "",
        "| model | threads | batch | packed ms | vs own torch float | vs torch fp32 twin | "
        "vs torch bf16 | vs ORT fp32 | vs ORT int8 | packed int8-act ms | int8 argmax agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for c in doc["cases"]:
        for o in c["own_float_forward"]:
            tw = next(t for t in c["twin_baselines"]
                      if t["batch"] == o["batch"] and t["threads"] == o["threads"])  # fmt: skip
            v = tw["vs"]
            i8 = f"{tw['ms']['packed_int8']:.2f}" if "packed_int8" in tw["ms"] else "-"
            ag = (f"{100 * tw['int8_agreement']['argmax']:.0f}%"
                  if "int8_agreement" in tw else "-")  # fmt: skip
            cells = [c["case"], o["threads"], o["batch"], f"{o['packed_ms']:.2f}",
                     f"{o['vs_torch_float']:.2f}x"] + [
                f"{v[k]:.2f}x" if k in v else "-"
                for k in ("torch_fp32", "torch_bf16", "ort_fp32", "ort_int8")] + [i8, ag]  # fmt: skip
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "Sizes (tensor bytes): " + "; ".join(
        f"{c['case']}: float {c['float_bytes'] / 1e6:.2f} MB, packed "
        f"{c['packed_tensor_bytes'] / 1e6:.2f} MB" for c in doc["cases"]) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = [run_case(c, args.threads, args.batches, args.repeats) for c in args.cases]
    for r in rows:
        print(f"\n{r['case']}: {r['binarized']} binary; float {r['float_bytes'] / 1e6:.2f} MB, "
              f"packed {r['packed_tensor_bytes'] / 1e6:.2f} MB")  # fmt: skip
        for o in r["own_float_forward"]:
            tw = next(t for t in r["twin_baselines"]
                      if t["threads"] == o["threads"] and t["batch"] == o["batch"])  # fmt: skip
            vs = "  ".join(f"vs {k} {v:.2f}x" for k, v in tw["vs"].items())
            print(f"  threads {o['threads']} batch {o['batch']:3d}: packed {o['packed_ms']:.3f} ms,"
                  f" vs own torch float {o['vs_torch_float']:.2f}x  {vs}")  # fmt: skip
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        doc = {"cases": rows, "env": environment(), "cpu_flags": cpu_flags(),
               "command": "python benchmarks/bench_own_models.py " + " ".join(
                   f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                   for k, v in vars(args).items() if v is not None)}  # fmt: skip
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
        (Path(args.out).parent / "README.md").write_text(readme(doc))


if __name__ == "__main__":
    main()
