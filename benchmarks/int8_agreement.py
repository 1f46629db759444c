"""How much the opt-in 8-bit activations change a trained packed model, on real test data.

The speed record's agreement columns are measured on freshly initialized networks, where a
transformer's near-uniform logits (and its saturated attention) make any perturbation flip the
argmax; only a trained model says what the int8 path costs. This runs a ``.onebit`` file on a
dataset's test split with exact (float) and 8-bit activations and writes: the fraction of
predictions that agree, the test accuracy of each path, and for language models the bits per
token of each.

    python benchmarks/int8_agreement.py RUN/model.onebit --data linux-kernel --seq-len 128 \\
        --limit 512 --out records/<date>_int8_agreement/gpt2_lab.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

import onebit
from onebit.data import load_dataset
from onebit.experiments.runs import environment
from onebit.runtime.ops import set_activations


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _inputs(packed: onebit.PackedModel, x: np.ndarray) -> np.ndarray:
    """Test inputs as the packed model takes them (token ids as they are; pixels normalized)."""
    if packed.input.get("dtype") == "int64":
        return x.astype(np.int64)
    return packed.normalize(x)


def measure(packed: onebit.PackedModel, x: np.ndarray, y: np.ndarray, batch: int) -> dict:
    """Agreement and test metrics of the exact and the int8 path on ``(x, y)``."""
    out: dict[str, list[np.ndarray]] = {"float": [], "int8": []}
    for mode in out:
        set_activations(packed, mode)
        for i in range(0, len(x), batch):
            out[mode].append(packed(_inputs(packed, x[i : i + batch])))
    set_activations(packed, "float")
    exact, approx = np.concatenate(out["float"]), np.concatenate(out["int8"])
    res = {
        "examples": len(x),
        "predictions": int(y.size),
        "argmax_agreement": float((exact.argmax(-1) == approx.argmax(-1)).mean()),
        "max_abs_diff_rel": float(np.abs(exact - approx).max() / (np.abs(exact).max() or 1.0)),
        "rms_diff_rel": float(
            np.sqrt(((exact - approx) ** 2).mean() / max((exact**2).mean(), 1e-30))
        ),
    }
    for name, z in (("float", exact), ("int8", approx)):
        res[f"accuracy_{name}"] = float((z.argmax(-1) == y).mean())
        if z.ndim == 3:  # a language model: bits per token
            lp = np.take_along_axis(_log_softmax(z), y[..., None], -1)
            res[f"bits_per_token_{name}"] = float(-lp.mean() / math.log(2))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a .onebit file")
    ap.add_argument("--data", required=True, help="dataset name (onebit data list)")
    ap.add_argument("--seq-len", type=int, default=100, help="for text data")
    ap.add_argument("--limit", type=int, default=None, help="first N test examples")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out")
    args = ap.parse_args()
    packed = onebit.load(args.model)
    ds = load_dataset(args.data, seq_len=args.seq_len)
    x, y = ds.test.x.numpy(), ds.test.y.numpy()
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    res = {"model": args.model, "data": args.data, **measure(packed, x, y, args.batch)}
    res["source"] = packed.source
    res["env"] = environment()
    print(json.dumps({k: v for k, v in res.items() if k not in ("source", "env")}, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
