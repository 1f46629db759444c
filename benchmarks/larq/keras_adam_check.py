"""Check one suspect for the fp gap to Larq: Keras' Adam, which adds epsilon to sqrt(v) *before*
the bias correction, so its effective epsilon is ``1e-7 / sqrt(1 - beta2**t)`` (3e-6 at the
first step) where torch's is a plain 1e-8 added after it.

Trains configs/fmnist_mlp_larq.toml (one thread) with torch's Adam swapped for the Keras update

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
    w <- w - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),   eps = 1e-7,

and writes an ordinary run folder. The swap patches ``onebit.training.make_optimizer`` in this
process only; it is an experiment, not a onebit option, because it changed nothing measurable
(records/2026-11-22_fmnist_mlp_larq/README.md).

    ONEBIT_DATA=... .venv/bin/python benchmarks/larq/keras_adam_check.py fp 0 runs/keras_adam/fp-s0
"""

from __future__ import annotations

import math
import sys

import torch

import onebit.training
from onebit.experiments.config import load_config
from onebit.experiments.runs import run


class KerasAdam(torch.optim.Optimizer):
    """Adam as Keras 2.15 ``tf.keras.optimizers.Adam`` computes it (see the module docstring)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-7):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["step"] += 1
                st["m"].lerp_(p.grad, 1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                t = st["step"]
                alpha = group["lr"] * math.sqrt(1 - b2**t) / (1 - b1**t)
                p.addcdiv_(st["m"], st["v"].sqrt().add_(group["eps"]), value=-alpha)


def _keras_adam(model, cfg, groups=None):
    params = groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    return KerasAdam(params, lr=cfg.lr)


def main() -> None:
    method, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    onebit.training.make_optimizer = _keras_adam
    cfg = load_config("configs/fmnist_mlp_larq.toml", [f"method.name={method}", "train.threads=1"])
    print(run(cfg, seed, run_dir=out).row())


if __name__ == "__main__":
    main()
