"""The library's XNOR GEMM (B laid out once, at load, in panels) against its limit, in one run.

The limit (``benchmarks/limit/xnor_limit.c``, compiled here with ``-march=native``; benchmark
code, not library code) is the AVX-512 VPOPCNTDQ micro-kernel alone: no dispatch, checks,
padding, allocation or thread pool (two threads = the caller and one spinning pthread). Both are
timed per call in C, in blocks of 20 calls that alternate between library and limit and between
1 and 2 threads, so the host's drift hits all alike; figures are medians. Also timed: the
library's previous entry (``xnor_gemm``: B re-laid out on every call).

    python benchmarks/bench_xnor_limit.py [--out records/.../xnor_limit.json] [--blocks 30]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np

import onebit.kernels as K

HERE = Path(__file__).resolve().parent
MS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SHAPES = ((4096, 4096), (2048, 2048), (1024, 1024))


def build_limit(folder: str) -> ctypes.CDLL:
    so = Path(folder) / "xnor_limit.so"
    subprocess.run(
        [
            "cc",
            "-O3",
            "-march=native",
            "-shared",
            "-fPIC",
            "-pthread",
            str(HERE / "limit" / "xnor_limit.c"),
            "-o",
            str(so),
        ],
        check=True,
    )
    lib = ctypes.CDLL(str(so))
    lib.xnor_limit.restype = ctypes.c_int
    p = ctypes.c_void_p
    i64 = ctypes.c_int64
    lib.xnor_limit.argtypes = [
        p,
        p,
        p,
        i64,
        i64,
        i64,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_double),
    ]
    return lib


def aligned(a: np.ndarray) -> np.ndarray:
    """A 64-byte aligned copy (the limit uses aligned loads)."""
    buf = np.empty(a.nbytes + 64, np.uint8)
    off = (-buf.ctypes.data) % 64
    out = buf[off : off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def time_shape(lib, a, b, panels, m: int, n: int, k: int, blocks: int) -> dict:
    """Median seconds per call of library, limit and per-call re-layout, 1 and 2 threads."""
    out = np.empty((m, n), np.int32)
    lim_out = np.empty((m, n), np.int32)
    t20 = (ctypes.c_double * 20)()

    def limit(th: int) -> list[float]:
        lib.xnor_limit(a.ctypes.data, panels.ctypes.data, lim_out.ctypes.data, m, n, k, th, 20, t20)
        return list(t20)

    fns = (
        {
            ("library", th): (
                lambda th=th: K._native.time_xnor_gemm_panels(a, panels, out, m, n, k, th, 20)
            )
            for th in (1, 2)
        }
        | {("limit", th): (lambda th=th: limit(th)) for th in (1, 2)}
        | {
            ("per_call_relayout", th): (
                lambda th=th: K._native.time_xnor_gemm(a, b, out, m, n, k, th, 20)
            )
            for th in (1, 2)
        }
    )
    times: dict = {key: [] for key in fns}
    for fn in fns.values():
        fn()
    for _ in range(blocks):
        for key, fn in fns.items():
            times[key] += fn()
    np.testing.assert_array_equal(out, lim_out)
    return {key: statistics.median(v) for key, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--out")
    args = ap.parse_args()
    if "avx512" not in K.available_isas():
        raise SystemExit("the limit kernel needs AVX-512 VPOPCNTDQ")
    tmp = tempfile.TemporaryDirectory()
    lib = build_limit(tmp.name)
    g = np.random.default_rng(0)
    rows = []
    for k, n in SHAPES:
        b = K.pack_bits(g.standard_normal((n, k), dtype=np.float32))
        panels = aligned(K.xnor_panels(b, k))
        for m in MS:
            a = aligned(K.pack_bits(g.standard_normal((m, k), dtype=np.float32)))
            med = time_shape(lib, a, b, panels, m, n, k, args.blocks)
            row = {
                "M": m,
                "K": k,
                "N": n,
                "us": {f"{w}_{th}t": round(1e6 * v, 2) for (w, th), v in med.items()},
                "library_over_limit_1t": round(med[("library", 1)] / med[("limit", 1)], 3),
                "library_over_limit_2t": round(med[("library", 2)] / med[("limit", 2)], 3),
                "library_2t_speedup": round(med[("library", 1)] / med[("library", 2)], 2),
                "limit_2t_speedup": round(med[("limit", 1)] / med[("limit", 2)], 2),
                "relayout_over_library_1t": round(
                    med[("per_call_relayout", 1)] / med[("library", 1)], 2
                ),
                "tera_binary_macs_per_s_1t": round(m * n * k / med[("library", 1)] / 1e12, 3),
            }
            rows.append(row)
            print(
                f"M={m:3d} K={k} N={n}: library {row['us']['library_1t']:8.1f} us "
                f"(limit {row['us']['limit_1t']:8.1f}, x{row['library_over_limit_1t']:.2f}), "
                f"2t {row['us']['library_2t']:8.1f} us (x{row['library_2t_speedup']:.2f}, "
                f"limit x{row['limit_2t_speedup']:.2f}), per-call re-layout "
                f"x{row['relayout_over_library_1t']:.2f}",
                flush=True,
            )
    worst = max(max(r["library_over_limit_1t"], r["library_over_limit_2t"]) for r in rows)
    scale16 = min(r["library_2t_speedup"] for r in rows if r["M"] >= 16)
    scale1 = min(r["library_2t_speedup"] for r in rows if r["M"] == 1 and r["K"] >= 2048)
    targets = {
        "within_10pct_of_limit": {"value": worst, "met": worst <= 1.10},
        "2t_ge_1.8x_for_M_ge_16": {"value": scale16, "met": scale16 >= 1.8},
        "2t_ge_1.5x_at_M1_K_N_ge_2048": {"value": scale1, "met": scale1 >= 1.5},
    }
    print(json.dumps(targets))
    if args.out:
        doc = {
            "benchmark": "XNOR GEMM (panels laid out at load) vs its limit kernel",
            "isa": K.get_isa(),
            "targets": targets,
            "results": rows,
        }
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
