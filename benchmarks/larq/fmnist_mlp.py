"""The Fashion-MNIST MLP of configs/fmnist_mlp.toml, trained with Larq (TensorFlow), for a
side-by-side comparison with onebit at equal seeds.

Runs in its own environment (``bash benchmarks/larq/setup.sh``: TensorFlow 2.15 CPU, Larq 0.14,
numpy < 2); it never imports onebit or torch.  The recipe is the one the foundation issue quotes
for its Larq reference run and the one configs/fmnist_mlp.toml states:

* MLP 784-2048-2048-2048-10, no biases, BatchNorm after every layer (the logits included);
* fp and bc: ReLU after each hidden BatchNorm; bc binarizes every kernel with ``ste_sign`` and
  clips the latent weights to [-1, 1] (``weight_clip``), as Larq's BinaryConnect examples do;
* bnn: every kernel ``ste_sign``; the inputs of every layer but the first ``ste_sign`` (whose
  gradient is the straight-through estimator cancelled where ``|x| > 1``, i.e. onebit's
  hardtanh + sign); latent weights clipped;
* batch 100, Adam 1e-3 decaying geometrically (per step) to 1e-4 over 10 epochs, cross-entropy;
* the last 10,000 training images are the validation split, as in onebit;
* inputs ``(x / 255 - mean) / std`` with the mean and std of the training split, as in onebit.

Keras' own defaults are kept where a Larq user would keep them: Glorot-uniform kernels and
BatchNorm momentum 0.99, epsilon 1e-3 (``--bn onebit`` uses onebit's 0.9 and 1e-4 instead).

Reported per run: test accuracy of the binarized model after every epoch (Larq evaluates with
the quantizers on, i.e. the hard-binarized model), so both the last epoch and the epoch of best
validation accuracy can be quoted; seconds per epoch (training + validation, as Keras ``fit``
times it) and for the test pass.

Usage:

    benchmarks/larq/.venv/bin/python benchmarks/larq/fmnist_mlp.py --method bc --seed 0 \\
        --threads 1 --out runs/larq/bc_0.json
    benchmarks/larq/.venv/bin/python benchmarks/larq/fmnist_mlp.py --summarize runs/larq/*.json
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import platform
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise SystemExit(f"{path} is not an unsigned-byte IDX file.")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise SystemExit(f"{stem}(.gz) not found in {root}; set ONEBIT_DATA or pass --data.")


def load(root: Path, val_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    x = read_idx(find(root, "train-images-idx3-ubyte")).reshape(-1, 784)
    y = read_idx(find(root, "train-labels-idx1-ubyte"))
    xt = read_idx(find(root, "t10k-images-idx3-ubyte")).reshape(-1, 784)
    yt = read_idx(find(root, "t10k-labels-idx1-ubyte"))
    cut = len(x) - val_size
    train = x[:cut].astype(np.float32) / 255
    mean, std = float(train.mean()), float(train.std())

    def norm(a: np.ndarray) -> np.ndarray:
        return ((a.astype(np.float32) / 255 - mean) / std).astype(np.float32)

    return {
        "train": (norm(x[:cut]), y[:cut].astype(np.int64)),
        "val": (norm(x[cut:]), y[cut:].astype(np.int64)),
        "test": (norm(xt), yt.astype(np.int64)),
    }


def build(method: str, bn: str):
    import larq as lq
    import tensorflow as tf

    bn_kw = {"momentum": 0.9, "epsilon": 1e-4} if bn == "onebit" else {}
    widths = [2048, 2048, 2048, 10]
    layers: list = [tf.keras.Input(shape=(784,))]
    for i, w in enumerate(widths):
        if method == "fp":
            layers.append(tf.keras.layers.Dense(w, use_bias=False))
        else:
            layers.append(
                lq.layers.QuantDense(
                    w,
                    use_bias=False,
                    input_quantizer="ste_sign" if method == "bnn" and i > 0 else None,
                    kernel_quantizer="ste_sign",
                    kernel_constraint="weight_clip",
                )
            )
        layers.append(tf.keras.layers.BatchNormalization(**bn_kw))
        if i < len(widths) - 1 and method != "bnn":
            layers.append(tf.keras.layers.Activation("relu"))
    layers.append(tf.keras.layers.Activation("softmax"))
    return tf.keras.Sequential(layers)


def train(args: argparse.Namespace) -> dict:
    import larq
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(args.seed)
    data = load(Path(args.data), args.val_size)
    x, y = data["train"]
    steps = args.epochs * (len(x) // args.batch_size)
    lr = tf.keras.optimizers.schedules.ExponentialDecay(
        args.lr, decay_steps=steps, decay_rate=args.lr_final / args.lr
    )
    model = build(args.method, args.bn)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    epochs: list[dict] = []

    class Record(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            fit_s = time.perf_counter() - self.t0
            t1 = time.perf_counter()
            _, test_acc = self.model.evaluate(*data["test"], batch_size=1000, verbose=0)
            epochs.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": float(logs["loss"]),
                    "train_acc": 100 * float(logs["accuracy"]),
                    "val_acc": 100 * float(logs["val_accuracy"]),
                    "test_acc": 100 * float(test_acc),
                    "fit_s": fit_s,
                    "test_s": time.perf_counter() - t1,
                }
            )
            print(json.dumps(epochs[-1]), flush=True)

    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        validation_data=data["val"],
        validation_batch_size=1000,
        callbacks=[Record()],
        verbose=0,
    )
    best = max(epochs, key=lambda e: (e["val_acc"], e["epoch"]))
    return {
        "library": f"larq {larq.__version__}, tensorflow {tf.__version__}",
        "method": args.method,
        "seed": args.seed,
        "threads": args.threads,
        "bn": args.bn,
        "recipe": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "lr_final": args.lr_final,
            "val_size": args.val_size,
        },
        "test_acc_last": epochs[-1]["test_acc"],
        "test_acc_best_val": best["test_acc"],
        "best_epoch": best["epoch"],
        "fit_s_per_epoch": statistics.median(e["fit_s"] for e in epochs),
        "epochs": epochs,
        "machine": {"cpu": platform.processor(), "cpus": os.cpu_count(), "python": sys.version},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def summarize(paths: list[str]) -> str:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r)

    def ms(v: list[float]) -> str:
        return (
            f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"
        )

    lines = [
        "| method | seeds | test acc % (best val) | test acc % (last) | s/epoch (fit) | threads |",
        "|---|---|---|---|---|---|",
    ]
    for m in ("fp", "bc", "bnn"):
        rs = sorted(by.get(m, []), key=lambda r: r["seed"])
        if not rs:
            continue
        lines.append(
            f"| {m} | {len(rs)} | {ms([r['test_acc_best_val'] for r in rs])} | "
            f"{ms([r['test_acc_last'] for r in rs])} | "
            f"{statistics.mean(r['fit_s_per_epoch'] for r in rs):.1f} | {rs[0]['threads']} |"
        )
    return "\n".join(lines)


def permutation_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact permutation p-value of the difference of means of ``a`` and ``b``: the
    share of all relabellings of the pooled runs into groups of len(a) and len(b) whose
    |mean difference| is at least the observed one.  Needs no normality assumption, which
    three to eight seeds cannot check."""
    pooled = a + b
    total = sum(pooled)
    observed = abs(statistics.mean(a) - statistics.mean(b))
    hits = count = 0
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        sa = sum(pooled[i] for i in idx)
        diff = abs(sa / len(a) - (total - sa) / len(b))
        hits += diff >= observed - 1e-9
        count += 1
    return hits / count


def side_by_side(paths: list[str], onebit_records: list[str]) -> str:
    """Test accuracy at the best-validation epoch, Larq beside onebit records of the same
    recipe (their results.json), mean ± std over seeds; 'n' is the number of seeds.  Each
    onebit cell also gives its difference from Larq and the permutation p-value of it."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    cols = ["Larq 0.14"] + [Path(r).name for r in onebit_records]
    records = [json.loads((Path(r) / "results.json").read_text())["runs"] for r in onebit_records]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in ("fp", "bc", "bnn"):
        acc = [r["test_acc_best_val"] for r in runs if r["method"] == m]
        if not acc:
            continue
        cells = [f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc):.2f} (n={len(acc)})"]
        for rec in records:
            ours = [100 * r["test_acc_best_val"] for r in rec if r["method"] == m]
            if len(ours) < 2:
                cells.append("—")
                continue
            diff = statistics.mean(ours) - statistics.mean(acc)
            cells.append(
                f"{statistics.mean(ours):.2f} ± {statistics.stdev(ours):.2f} (n={len(ours)}); "
                f"{diff:+.2f}, p={permutation_p(ours, acc):.2f}"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=("fp", "bc", "bnn"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-final", type=float, default=1e-4)
    ap.add_argument("--val-size", type=int, default=10000)
    ap.add_argument("--bn", choices=("keras", "onebit"), default="keras")
    ap.add_argument(
        "--data", default=os.path.join(os.environ.get("ONEBIT_DATA", "."), "fashion-mnist")
    )
    ap.add_argument("--out", help="write the run's JSON here")
    ap.add_argument("--summarize", nargs="+", metavar="RUN_JSON", help="table of finished runs")
    ap.add_argument(
        "--onebit", nargs="+", metavar="RECORD", help="with --summarize: onebit records beside Larq"
    )
    args = ap.parse_args()
    if args.summarize:
        print(
            side_by_side(args.summarize, args.onebit) if args.onebit else summarize(args.summarize)
        )
        return
    if args.method is None:
        ap.error("--method is required unless --summarize")
    result = train(args)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(
        json.dumps({k: result[k] for k in ("method", "seed", "test_acc_last", "test_acc_best_val")})
    )


if __name__ == "__main__":
    main()
