"""Binarized Neural Networks (Hubara, Courbariaux, Soudry, El-Yaniv, Bengio; NeurIPS 2016)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from onebit.layers import WeightQuantizer
from onebit.methods.base import Method
from onebit.quantizers import ActSign, SignIdentity


@dataclass(frozen=True)
class BNN(Method):
    """BNN: binary weights and binary activations (arXiv 1602.02830).

    Weights as BinaryConnect: ``wb = sign(w)``, ``dL/dw = g``, clip ``w`` to [-1, 1] after each
    step. Activations entering every binary layer but the first (the network input stays real):
    ``ab = sign(a)``, backward ``dL/da = g * 1{|a| <= 1}``. The logits stay real.
    """

    name = "bnn"
    title = "BNN"
    paper = "Hubara et al. 2016, arXiv 1602.02830"

    clip: float | None = 1.0

    def weight_quantizer(self) -> WeightQuantizer:
        return SignIdentity()

    def activation_quantizer(self) -> Callable[[Tensor], Tensor]:
        return ActSign()
