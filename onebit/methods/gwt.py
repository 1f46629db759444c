"""Group weight transformations with exact backpropagation (Shulman 2021, arXiv 2107.01400).

OUR RECONSTRUCTION (docs/methods.md#gwt): the paper's abstract fixes the constraints (a
deterministic, differentiable map from groups of real parameters to near-binary weights, exact
gradients, no STE, no auxiliary loss, the full-precision recipe); the transformation below is ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from onebit.errors import OnebitError
from onebit.layers import WeightQuantizer, is_binary_layer
from onebit.methods.base import Method
from onebit.methods.proxconnect import STEEPNESS, steepness
from onebit.quantizers import GroupClip, group_clip

__all__ = ["GWT", "off_binary_fraction"]


def off_binary_fraction(model: nn.Module, k: float) -> float:
    """Fraction of binary layers' relaxed weights ``group_clip(w, k)`` strictly inside (-1, 1)."""
    off = total = 0
    with torch.no_grad():
        for m in model.modules():
            if is_binary_layer(m) and m.binary:
                wb = group_clip(m.latent(), k)
                off += int((wb.abs() < 1).sum())
                total += wb.numel()
    return off / total if total else 0.0


@dataclass(frozen=True)
class GWT(Method):
    """GWT (reconstruction): ``wb_G = clip(k * w_G / rms(w_G), -1, 1)`` per output row/filter ``G``.

    Forward: the transformation above (most entries land exactly on ±1; the rms couples a group's
    weights). Backward: autograd's exact gradient of it, through the clip and the rms (no
    straight-through estimator). The stretch ``k`` grows from ``k_start`` to ``k_end`` over
    training (``steepness`` schedule), pushing more entries onto ±1. Train with the full-precision
    recipe (momentum SGD, large rate, weight decay). Deployed: ``sign(w)`` with scale 1 (the
    relaxed weights' own magnitude); ``off_binary`` in the metrics is the fraction of relaxed
    weights not at ±1, and the relaxed model's accuracy is reported beside the deployed one.
    """

    name = "gwt"
    title = "GWT (reconstruction)"
    paper = "Shulman 2021, arXiv 2107.01400 (transformation reconstructed)"
    reconstruction = True
    relaxed_eval = True

    k_start: float = 2.0
    k_end: float = 8.0
    k_schedule: str = "linear"

    def __post_init__(self) -> None:
        if self.k_start <= 0 or self.k_end <= 0:
            raise OnebitError("method.k_start and method.k_end must be positive.")
        if self.k_schedule not in STEEPNESS:
            raise OnebitError(
                f"unknown method.k_schedule {self.k_schedule!r}; accepted: {', '.join(STEEPNESS)}."
            )

    def weight_quantizer(self) -> WeightQuantizer:
        return GroupClip(self.k_start)

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Set every binary layer's stretch ``k`` for this epoch."""
        k = steepness(epoch, epochs, self.k_start, self.k_end, self.k_schedule)
        for m in model.modules():
            if is_binary_layer(m):
                m.quantizer = GroupClip(k)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """``off_binary``: fraction of relaxed weights not at ±1 under the current stretch."""
        ks = [m.quantizer.k for m in model.modules() if is_binary_layer(m) and m.binary]
        return {"off_binary": off_binary_fraction(model, ks[0])} if ks else {}
