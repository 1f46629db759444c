"""XNOR-Net (Rastegari, Ordonez, Redmon, Farhadi; ECCV 2016, arXiv 1603.05279)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from onebit.layers import WeightQuantizer
from onebit.methods.base import Method
from onebit.quantizers import ActSign, ScaleRule, SignHtanh, scale_rule


@dataclass(frozen=True)
class XNORNet(Method):
    """XNOR-Net: BWN weights ``wb = alpha * sign(w)`` and binary activations ``sign(a)``.

    ``alpha`` = mean ``|w|`` per output channel; backward ``g * 1{|w| <= 1}`` for weights and
    ``g * 1{|a| <= 1}`` for activations. First and last layers stay float. onebit does not apply
    the paper's per-position activation scale ``K`` (it costs a float convolution per layer and
    most reimplementations drop it); the BatchNorm after each layer absorbs a global scale.
    """

    name = "xnor"
    title = "XNOR-Net"
    paper = "Rastegari et al. 2016, arXiv 1603.05279"

    keep_first: bool = True
    keep_last: bool = True
    scale: str = "channel"

    def __post_init__(self) -> None:
        scale_rule(self.scale)  # an unknown rule is one sentence naming the accepted ones

    def weight_scale(self) -> ScaleRule:
        return scale_rule(self.scale)

    def weight_quantizer(self) -> WeightQuantizer:
        return SignHtanh()

    def activation_quantizer(self) -> Callable[[Tensor], Tensor]:
        return ActSign()
