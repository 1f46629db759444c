"""Nanoseconds per value of the runtime's GELU kernel on every instruction set this CPU has
(one thread, 65,536 values drawn from N(0, 3^2); best of 50 calls).

    python benchmarks/bench_gelu.py
"""

from __future__ import annotations

import time

import numpy as np

from onebit import kernels


def main() -> None:
    kernels.set_num_threads(1)
    x = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32) * 3
    try:
        for isa in kernels.available_isas():
            kernels.set_isa(isa)
            kernels.gelu(x)
            best = float("inf")
            for _ in range(50):
                t0 = time.perf_counter()
                kernels.gelu(x)
                best = min(best, time.perf_counter() - t0)
            print(f"{isa:12s} {best / x.size * 1e9:.3f} ns per value")
    finally:
        kernels.set_isa(None)


if __name__ == "__main__":
    main()
