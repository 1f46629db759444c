"""Time a packed model against the same architecture in PyTorch float, in one run.

Latency at batch 1 and throughput at batch 64, at each thread count, with a per-op breakdown of the
packed runtime. Figures are medians over repeats after warm-up; the ratio is what matters, since
both sides are measured on the same machine in the same process, interleaved.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from onebit import kernels
from onebit.errors import OnebitError
from onebit.models import build
from onebit.runtime import PackedModel

__all__ = ["bench", "float_twin"]


def float_twin(packed: PackedModel) -> torch.nn.Module:
    """The packed model's architecture as a plain float torch model (weights random: timing only)."""
    src = packed.source
    try:
        model_cfg = dict(src["config"]["model"])
        name = model_cfg.pop("name")
        shape, classes = src["input_shape"], src["num_classes"]
    except (KeyError, TypeError):
        raise OnebitError(
            "the model file does not record its architecture (pack it with `onebit pack RUN`)."
        ) from None
    return build(name, shape, classes, **model_cfg).eval()


def _median_time(fn: Callable[[], Any], repeats: int, min_seconds: float = 0.2) -> float:
    fn()  # warm-up
    times: list[float] = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < repeats or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50 * repeats:
            break
    return statistics.median(times)


def bench(
    packed: PackedModel,
    threads: Sequence[int] = (1, 2),
    batches: Sequence[int] = (1, 64),
    repeats: int = 20,
) -> dict[str, Any]:
    """Seconds per batch of the packed model and of its float torch twin; ratios; per-op times."""
    twin = float_twin(packed)
    shape = tuple(packed.input["shape"])
    conv = any(isinstance(m, torch.nn.Conv2d) for m in twin.modules())
    if conv:
        twin = twin.to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    rows = []
    old_torch = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            kernels.set_num_threads(t)
            for b in batches:
                x = rng.standard_normal((b, *shape), dtype=np.float32)
                xt = torch.from_numpy(x)
                if conv:
                    xt = xt.contiguous(memory_format=torch.channels_last)

                def run_torch(xt: torch.Tensor = xt) -> None:
                    with torch.inference_mode():
                        twin(xt)

                def run_packed(x: np.ndarray = x) -> None:
                    packed(x)

                # interleave the two measurements so drift on a shared machine hits both alike
                tp, tt = [], []
                for _ in range(3):
                    tp.append(_median_time(run_packed, max(3, repeats // 3)))
                    tt.append(_median_time(run_torch, max(3, repeats // 3)))
                sp, st = min(tp), min(tt)
                rows.append(
                    {
                        "threads": t,
                        "batch": b,
                        "packed_ms": 1000 * sp,
                        "torch_fp32_ms": 1000 * st,
                        "speedup": st / sp,
                        "packed_per_s": b / sp,
                        "torch_per_s": b / st,
                    }
                )
        torch.set_num_threads(threads[0])
        kernels.set_num_threads(threads[0])
        profile: dict[str, float] = {}
        x1 = rng.standard_normal((1, *shape), dtype=np.float32)
        n = 50
        for _ in range(n):
            packed(x1, profile=profile)
        ops = {op.name: op for op in packed.ops}
        layers = [
            {
                "op": name,
                "kind": ops[name].op
                + (f"/{ops[name].attrs['mode']}" if "mode" in ops[name].attrs else ""),
                "us": 1e6 * sec / n,
            }
            for name, sec in profile.items()
        ]
    finally:
        torch.set_num_threads(old_torch)
        kernels.set_num_threads(0)
    return {"isa": kernels.get_isa(), "results": rows, "layers_batch1": layers}
