"""ProxQuant (Bai, Wang, Liberty; ICLR 2019, arXiv 1810.00861)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from onebit.errors import OnebitError
from onebit.layers import WeightQuantizer, is_binary_layer
from onebit.methods.base import Method
from onebit.quantizers import Identity, sign

__all__ = ["ProxQuant", "prox_binary"]


def prox_binary(w: Tensor, strength: float) -> Tensor:
    """Prox of ``strength * R`` with the W-shaped ``R(w) = sum min(|w - 1|, |w + 1|)``.

    Each entry moves toward its nearest binary point ``s = sign(w)`` by ``strength`` without
    passing it: ``prox(w) = s + sign(w - s) * max(|w - s| - strength, 0)`` (soft thresholding of
    ``w - s``). ``strength = 0`` is the identity; ``strength = inf`` is ``sign``.
    """
    s = sign(w)
    d = w - s
    return s + torch.sign(d) * (d.abs() - strength).clamp_min(0)


@dataclass(frozen=True)
class ProxQuant(Method):
    """ProxQuant: train the real weights, pull them to ±1 with a growing proximal step.

    Forward (training): ``wb = w`` (the gradient is taken at the latent point). After each optimizer
    step with rate ``lr``: ``w <- clip(prox_binary(w, lr * lambda_e), -1, 1)`` with
    ``lambda_e = lam * (e + 1) / freeze`` growing linearly with the epoch ``e``. At epoch
    ``freeze`` (default: the last epoch) the binary layers' weights become ``sign(w)`` and are
    frozen; the remaining epochs train BatchNorm and float layers (a one-epoch run never freezes).
    Evaluation uses ``sign(w)``.

    Attributes:
        lam: regularization strength reached at the epoch before freezing.
        freeze_epoch: epoch (0-based) at which weights are hard-binarized and frozen (None: the
            last epoch of a run of two or more).
    """

    name = "proxquant"
    title = "ProxQuant"
    paper = "Bai et al. 2019, arXiv 1810.00861"

    clip: float | None = 1.0
    lam: float = 1.0
    freeze_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise OnebitError("method.lam must be >= 0.")

    relaxed_eval = True

    def weight_quantizer(self) -> WeightQuantizer:
        return Identity()

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Set this epoch's ``lambda``; at the freeze epoch and after, binarize and freeze."""
        freeze = self.freeze_epoch
        if freeze is None:  # the last epoch, when there is more than one
            freeze = epochs - 1 if epochs > 1 else epochs
        lam = self.lam * min(epoch + 1, freeze) / max(1, freeze)
        frozen = epoch >= freeze
        for m in model.modules():
            if is_binary_layer(m) and m.binary:
                m.__dict__["_prox_lambda"] = 0.0 if frozen else lam
                if frozen:
                    with torch.no_grad():
                        m.weight.copy_(sign(m.weight))
                    m.weight.requires_grad_(False)
                    m.weight.grad = None

    def after_step(self, model: nn.Module, lr: float = 0.0) -> None:
        """Prox step with strength ``lr * lambda_e``, then clip."""
        with torch.no_grad():
            for m in model.modules():
                if not (is_binary_layer(m) and m.binary and m.weight.requires_grad):
                    continue
                lam = m.__dict__.get("_prox_lambda", 0.0)
                if lam > 0:
                    m.weight.copy_(prox_binary(m.weight, lr * lam))
        super().after_step(model, lr)
