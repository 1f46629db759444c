"""BinaryConnect (Courbariaux, Bengio, David; NeurIPS 2015, arXiv 1511.00363)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from onebit.layers import WeightQuantizer, is_binary_layer
from onebit.methods.base import Method
from onebit.quantizers import SignIdentity, StochasticSign


def glorot_lr_scale(w: torch.Tensor) -> float:
    """``1 / sqrt(1.5 / (fan_in + fan_out))``: BinaryConnect's per-layer learning-rate scale."""
    fan_out, fan_in = w.shape[0], w[0].numel()
    rf = w[0, 0].numel() if w.dim() > 2 else 1  # receptive field, counted in both fans for convs
    return 1.0 / math.sqrt(1.5 / (fan_in + fan_out * rf))


@dataclass(frozen=True)
class BinaryConnect(Method):
    """BinaryConnect: binary weights, float activations, every layer binary, no scale.

    Deterministic forward ``wb = sign(w)``; stochastic forward ``wb = +1`` with probability
    ``clip((w + 1) / 2, 0, 1)``, else ``-1``. Backward ``dL/dw = g`` (identity straight-through).
    After each step ``w <- clip(w, -1, 1)``. Evaluation uses ``sign(w)`` in both variants (the
    original code evaluated stochastic nets with real weights; onebit reports the binary model).
    The paper's MNIST MLP 3x2048: test error 1.29% (det), 1.18% (stoch), squared hinge loss.

    The authors' code draws latent weights from ``U(-1, 1)`` and scales each binary layer's
    learning rate by ``1 / sqrt(1.5 / (fan_in + fan_out))`` (Glorot); the stochastic variant needs
    both (its sampling probability depends on ``|w|``, which torch's small default init leaves
    near 1/2), so ``glorot`` defaults to on for it and off for the deterministic one, whose
    forward pass is scale-free.

    Attributes:
        stochastic: sample the binary weights during training.
        glorot: U(-1, 1) init and Glorot learning-rate scale (None: on iff stochastic).
    """

    name = "bc"
    title = "BinaryConnect"
    paper = "Courbariaux et al. 2015, arXiv 1511.00363"

    clip: float | None = 1.0
    stochastic: bool = False
    glorot: bool | None = None

    @property
    def _glorot(self) -> bool:
        return self.stochastic if self.glorot is None else self.glorot

    def weight_quantizer(self) -> WeightQuantizer:
        return StochasticSign() if self.stochastic else SignIdentity()

    def init_latent_(self, layer: nn.Module) -> None:
        if self._glorot:
            with torch.no_grad():
                layer.weight.uniform_(-1.0, 1.0)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        if not self._glorot:
            return super().param_groups(model)
        binary = [m.weight for m in model.modules() if is_binary_layer(m)]
        ids = {id(p) for p in binary}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": [w], "lr_scale": glorot_lr_scale(w)} for w in binary]
        return [*groups, {"params": rest}]
