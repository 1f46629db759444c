"""onebit's binary conv vs Larq Compute Engine (LCE) vs torch fp32 conv2d, one thread.

Runs in the project's venv; LCE runs in its own venv (``benchmarks/lce/setup.sh``) through
``lce_bconv.py`` as a subprocess::

    bash benchmarks/lce/setup.sh                          # once
    .venv/bin/python benchmarks/lce/compare_conv.py --out bench_lce.json

The layer (issue 5): 3x3 conv, 256 -> 256 channels, 14x14, batch 1, stride 1, padding 1 ("same"
zero padding), binary weights and binary activations.  Timed, all single-threaded:

* ``onebit``: ``kernels.binary_conv2d(x, w_bits, stride=1, padding=1)``, x float32 NHWC (the sign
  and bitpacking happen inside the call) -> int32 NHWC output.
* ``onebit_packed``: the same on x packed beforehand (``kernels.pack_bits``, uint64 words).
* ``lce`` / ``lce_packed``: LCE's ``LceQuantize -> LceBconv2d`` (float input) and ``LceBconv2d``
  (bitpacked int32 input) models, float32 output; the faster of LCE's two optimized kernels.
* ``torch``: ``torch.nn.functional.conv2d`` in fp32 (NCHW and channels_last; the faster is
  reported) as a dense reference point.

Measurements are interleaved: ``--runs`` outer runs, each one an LCE subprocess run followed by an
in-process round of the onebit/torch variants (each itself interleaved call by call), and the
statistic is the median over all timed calls.  Every implementation's output is checked against
a numpy +-1 convolution.  Prints (and with ``--out`` writes) one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from lce_bconv import conv_pm1, summarize, time_calls  # noqa: E402  (numpy-only helpers)


def default_lce_python() -> str:
    env = os.environ.get("LCE_PYTHON")
    if env:
        return env
    venv = os.environ.get("LCE_VENV", os.path.join(HERE, ".venv"))
    return os.path.join(venv, "bin", "python")


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    for line in sh(["lscpu"]).splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_lce(python: str, args: argparse.Namespace, first: bool) -> dict:
    cmd = [
        python,
        os.path.join(HERE, "lce_bconv.py"),
        "--raw",
        "--size",
        str(args.size),
        "--channels",
        str(args.channels),
        "--rounds",
        str(args.lce_rounds),
        "--number",
        str(args.number),
        "--warmup",
        str(args.warmup),
        "--seed",
        str(args.seed),
    ]
    if not first:
        cmd.append("--no-reference")  # the slow reference kernel: timed in the first run only
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"LCE run failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=14, help="H = W (default 14)")
    ap.add_argument("--channels", type=int, default=256, help="Cin = Cout (default 256)")
    ap.add_argument("--runs", type=int, default=5, help="outer interleaved runs (default 5)")
    ap.add_argument("--rounds", type=int, default=4, help="in-process rounds per run")
    ap.add_argument("--lce-rounds", type=int, default=4, help="LCE rounds per run")
    ap.add_argument("--number", type=int, default=20, help="timed calls per variant per round")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--isa", help="force onebit's dispatch path (avx512, avx2, generic)")
    ap.add_argument(
        "--lce-python",
        default=default_lce_python(),
        help="python of the LCE venv (default $LCE_PYTHON or benchmarks/lce/.venv)",
    )
    ap.add_argument("--no-lce", action="store_true", help="skip LCE (onebit and torch only)")
    ap.add_argument("--quick", action="store_true", help="few repetitions (smoke test)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.rounds, args.lce_rounds, args.number, args.warmup = 2, 1, 1, 5, 2

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import torch.nn.functional as F

    import onebit
    from onebit import kernels

    torch.set_num_threads(1)
    kernels.set_num_threads(1)
    if args.isa:
        kernels.set_isa(args.isa)
    if not kernels.native_available():
        print(
            "warning: onebit's native kernels are not built; timing the numpy fallback",
            file=sys.stderr,
        )

    use_lce = not args.no_lce
    if use_lce and not os.path.exists(args.lce_python):
        sys.exit(
            f"{args.lce_python} not found: run `bash benchmarks/lce/setup.sh` first "
            "(or pass --lce-python / --no-lce)."
        )

    h = w = args.size
    cin = cout = args.channels
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((1, h, w, cin)).astype(np.float32)  # NHWC
    w_oihw = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)  # torch layout
    w_bits = kernels.pack_conv_weight(w_oihw)
    x_bits = kernels.pack_bits(x.reshape(-1, cin)).reshape(1, h, w, -1)

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # NCHW
    wt = torch.from_numpy(w_oihw)
    xt_cl = xt.contiguous(memory_format=torch.channels_last)
    wt_cl = wt.contiguous(memory_format=torch.channels_last)

    # ---- correctness: each implementation against the numpy +-1 convolution
    ref = conv_pm1(x, np.ascontiguousarray(w_oihw.transpose(0, 2, 3, 1)), 0.0)
    checks = {}
    y = kernels.binary_conv2d(x, w_bits, stride=1, padding=1)
    checks["onebit"] = bool(y.shape == ref.shape and np.array_equal(y, ref))
    y = kernels.binary_conv2d(x_bits, w_bits, stride=1, padding=1, in_channels=cin)
    checks["onebit_packed"] = bool(y.shape == ref.shape and np.array_equal(y, ref))
    with torch.inference_mode():
        xs = torch.where(xt >= 0, 1.0, -1.0)
        ws = torch.where(wt >= 0, 1.0, -1.0)
        yt = F.conv2d(xs, ws, padding=1).permute(0, 2, 3, 1).numpy()  # exact: |y| <= 2304
    checks["torch"] = bool(yt.shape == ref.shape and np.array_equal(yt, ref))

    def torch_nchw():
        with torch.inference_mode():
            return F.conv2d(xt, wt, padding=1)

    def torch_cl():
        with torch.inference_mode():
            return F.conv2d(xt_cl, wt_cl, padding=1)

    fns = {
        "onebit": lambda: kernels.binary_conv2d(x, w_bits, stride=1, padding=1),
        "onebit_packed": lambda: kernels.binary_conv2d(
            x_bits, w_bits, stride=1, padding=1, in_channels=cin
        ),
        "torch_nchw": torch_nchw,
        "torch_channels_last": torch_cl,
    }

    # ---- interleaved runs
    load_before = loadavg()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    lce_samples: dict[str, list[float]] = {}
    lce_first = None
    t_start = time.time()
    for r in range(args.runs):
        if use_lce:
            res = run_lce(args.lce_python, args, first=(r == 0))
            if lce_first is None:
                lce_first = res
            for k, v in res["timings"].items():
                lce_samples.setdefault(k, []).extend(v["samples_ms"])
        t = time_calls(fns, args.rounds, args.number, args.warmup, raw=True)
        for k in fns:
            samples[k].extend(t[k]["samples_ms"])
    elapsed = time.time() - t_start
    load_after = loadavg()

    timings = {k: summarize(v) for k, v in samples.items()}
    med = {k: v["median_ms"] for k, v in timings.items()}
    torch_layout = min(("torch_nchw", "torch_channels_last"), key=med.get)
    result: dict = {
        "onebit_ms": med["onebit"],
        "onebit_packed_ms": med["onebit_packed"],
        "torch_fp32_ms": med[torch_layout],
        "torch_layout": torch_layout.removeprefix("torch_"),
    }

    if use_lce:
        assert lce_first is not None
        lce_t = {k: summarize(v) for k, v in lce_samples.items()}
        opt = ("bgemm", "indirect_bgemm")
        lce_kernel = min(opt, key=lambda kn: lce_t[f"float_in/{kn}"]["median_ms"])
        lce_packed_kernel = min(opt, key=lambda kn: lce_t[f"packed_in/{kn}"]["median_ms"])
        lce_ms = lce_t[f"float_in/{lce_kernel}"]["median_ms"]
        lce_packed_ms = lce_t[f"packed_in/{lce_packed_kernel}"]["median_ms"]
        checks["lce"] = bool(lce_first["correct"])
        result.update(
            {
                "lce_ms": lce_ms,
                "lce_kernel": lce_kernel,
                "lce_packed_ms": lce_packed_ms,
                "lce_packed_kernel": lce_packed_kernel,
                "ratios": {
                    # time ratios (onebit time / other time): the target is <= 0.1 vs LCE
                    "onebit_over_lce": med["onebit"] / lce_ms,
                    "onebit_packed_over_lce_packed": med["onebit_packed"] / lce_packed_ms,
                    "onebit_over_torch": med["onebit"] / med[torch_layout],
                    "onebit_packed_over_torch": med["onebit_packed"] / med[torch_layout],
                    # speedups (other time / onebit time): the target is >= 10 vs LCE
                    "speedup_vs_lce": lce_ms / med["onebit"],
                    "speedup_packed_vs_lce_packed": lce_packed_ms / med["onebit_packed"],
                    "speedup_vs_torch": med[torch_layout] / med["onebit"],
                    "lce_speedup_vs_torch": med[torch_layout] / lce_ms,
                },
            }
        )
    else:
        result["ratios"] = {
            "onebit_over_torch": med["onebit"] / med[torch_layout],
            "onebit_packed_over_torch": med["onebit_packed"] / med[torch_layout],
            "speedup_vs_torch": med[torch_layout] / med["onebit"],
        }

    result.update(
        {
            "correct": all(checks.values()),
            "checks": checks,
            "shape": {
                "batch": 1,
                "height": h,
                "width": w,
                "in_channels": cin,
                "out_channels": cout,
                "kernel": [3, 3],
                "stride": 1,
                "padding": 1,
                "layout": "NHWC (torch: NCHW/NHWC)",
            },
            "timings": {"in_process": timings} | ({"lce": lce_t} if use_lce else {}),
            "timing": {
                "statistic": "median of per-call wall times, all calls of all runs",
                "runs": args.runs,
                "rounds_per_run": args.rounds,
                "lce_rounds_per_run": args.lce_rounds,
                "number": args.number,
                "warmup": args.warmup,
                "threads": 1,
                "elapsed_s": round(elapsed, 1),
            },
            "machine": {
                "cpu": cpu_model(),
                "nproc": os.cpu_count(),
                "arch": platform.machine(),
                "loadavg_before": load_before,
                "loadavg_after": load_after,
            },
            "versions": {
                "onebit": getattr(onebit, "__version__", None),
                "onebit_isa": kernels.get_isa(),
                "onebit_git": sh(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
                + ("-dirty" if sh(["git", "-C", REPO, "status", "--porcelain", "onebit"]) else ""),
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
        }
    )
    if use_lce:
        assert lce_first is not None
        result["versions"].update(
            {
                "lce": lce_first["lce_version"],
                "lce_numpy": lce_first["numpy_version"],
                "lce_python": lce_first["python"],
            }
        )
        result["lce_quantize_only_ms"] = lce_t["quantize_only"]["median_ms"]
        result["lce_checks"] = lce_first["checks"]

    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if not result["correct"]:
        sys.exit("some implementation disagrees with the numpy reference (see checks)")


if __name__ == "__main__":
    main()
