"""Binary-Weight Networks (Rastegari, Ordonez, Redmon, Farhadi; ECCV 2016, arXiv 1603.05279)."""

from __future__ import annotations

from dataclasses import dataclass

from onebit.layers import WeightQuantizer
from onebit.methods.base import Method
from onebit.quantizers import ScaleRule, SignHtanh, scale_rule


@dataclass(frozen=True)
class BWN(Method):
    """BWN: scaled binary weights ``wb = alpha * sign(w)``, float activations.

    ``alpha = mean(|w|)`` per output channel (``scale="channel"``, the paper's choice) or over
    the whole layer (``scale="layer"``); alpha is the closed-form minimizer of ``||w - alpha b||``.
    Backward ``dL/dw = g * 1{|w| <= 1}`` (no gradient through alpha). First and last layers stay
    float; latent weights are not clipped.
    """

    name = "bwn"
    title = "BWN (XNOR-Net paper)"
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
