"""Whole packed models against the same architecture in torch fp32 and bf16 and in onnxruntime
fp32 and int8 (dynamic quantization of the same graph), and their sizes.

Speed does not depend on the weights' values, so the models are freshly initialized (with
trained-like BatchNorm statistics); that packed models compute what the torch models compute is
the job of tests/test_pack.py. Each figure is a ratio measured in the same run.

    python benchmarks/bench_models.py [--out records/.../models.json] [--repeats 20]
        [--batches 1 16 64] [--threads 1 2] [--cases mlp resnet20 ...]

The int8 rows (binary-weight models) run the opt-in 8-bit activations; their agreement with the
exact path on the timed batch is stored beside them (``int8_agreement``).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

import onebit
from onebit import kernels
from onebit.experiments.bench import bench, cpu_flags
from onebit.experiments.runs import environment
from onebit.methods import BNN, BinaryConnect, XNORNet
from onebit.packer import pack

CASES = [
    # name, model, in_shape, options, method (binary activations or weight-only)
    (
        "BNN MLP 784-2048x3-10",
        "mlp",
        (1, 28, 28),
        {"hidden": [2048, 2048, 2048], "bn_logits": True},
        BNN(),
    ),
    (
        "BinaryConnect MLP 784-2048x3-10",
        "mlp",
        (1, 28, 28),
        {"hidden": [2048, 2048, 2048]},
        BinaryConnect(),
    ),
    ("XNOR ResNet-18 (CIFAR)", "resnet18", (3, 32, 32), {}, XNORNet()),
    ("BNN ResNet-20 (CIFAR)", "resnet20", (3, 32, 32), {}, BNN()),
    ("BinaryConnect ResNet-20 (CIFAR)", "resnet20", (3, 32, 32), {}, BinaryConnect()),
    ("BinaryConnect MobileNet-small (CIFAR)", "mobilenet_small", (3, 32, 32), {}, BinaryConnect()),
    ("BinaryConnect ViT (CIFAR, 4x128)", "vit", (3, 32, 32), {}, BinaryConnect()),
]


def trained_like_bn_(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def sizes(model: nn.Module, packed) -> dict[str, int]:
    """Bytes of the binary layers (float state dict vs packed), and of the whole model."""
    sd = model.state_dict()
    binary_names = {n for n, m in model.named_modules() if onebit.layers.is_binary_layer(m)}
    float_binary = sum(sd[f"{n}.weight"].numel() * 4 for n in binary_names)
    packed_binary = sum(  # every binary layer's bits (captured graphs name no modules)
        packed.tensors[k].nbytes for op in packed.ops for r, k in op.tensors.items() if r == "bits"
    )
    return {
        "binary_layers_float_bytes": float_binary,
        "binary_layers_packed_bytes": packed_binary,
        "model_float_bytes": sum(v.numel() * v.element_size() for v in sd.values()),
        "model_packed_bytes": packed.nbytes(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--cases", nargs="+", help="substrings of the case titles to run")
    ap.add_argument("--out")
    args = ap.parse_args()
    results = []
    for title, name, shape, opts, method in CASES:
        if args.cases and not any(c.lower() in title.lower() for c in args.cases):
            continue
        torch.manual_seed(0)
        model = onebit.models.build(name, shape, 10, act=method.hidden_activation(), **opts)
        onebit.binarize_(model, method)
        trained_like_bn_(model)
        model.eval()
        source = {
            "config": {"model": {"name": name, "act": method.hidden_activation(), **opts}},
            "input_shape": list(shape),
            "num_classes": 10,
        }
        packed = pack(model, shape, source=source)
        res = bench(packed, args.threads, args.batches, args.repeats)
        entry = {"case": title, "method": method.name, **sizes(model, packed), **res}
        results.append(entry)
        for r in res["results"]:
            vs = "  ".join(f"{k} {v:.2f}x" for k, v in r["vs"].items())
            i8 = ""
            if "packed_int8_ms" in r:
                vi = "  ".join(f"{k} {v:.2f}x" for k, v in r["vs_int8"].items())
                i8 = f" | int8 {r['packed_int8_ms']:.3f} ms: {vi}"
            print(
                f"{title:38s} t{r['threads']} b{r['batch']:3d}: packed {r['packed_ms']:8.3f} ms: "
                f"{vs}{i8}",
                flush=True,
            )
    env = environment() | {
        "cpu_flags": cpu_flags(),
        "kernels_isa": kernels.get_isa(),
        "kernels_isas": kernels.available_isas(),
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    doc = {
        "benchmark": "packed models vs torch fp32/bf16 and onnxruntime fp32/int8",
        "results": results,
        "env": env,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
