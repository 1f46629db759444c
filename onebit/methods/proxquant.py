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
        if self.freeze_epoch is not None and self.freeze_epoch < 0:
            raise OnebitError("method.freeze_epoch must be >= 0 (or none).")

    relaxed_eval = True

    def freeze_at(self, epochs: int) -> int:
        """The freeze epoch of a run of ``epochs``: the option, or the last epoch of a run of two
        or more (a one-epoch run never freezes)."""
        if self.freeze_epoch is not None:
            return self.freeze_epoch
        return epochs - 1 if epochs > 1 else epochs

    def lambda_at(self, epoch: int, epochs: int) -> float:
        """``lambda_e = lam * min(e + 1, freeze) / freeze`` before the freeze epoch, 0 from it on."""
        freeze = self.freeze_at(epochs)
        if epoch >= freeze:
            return 0.0
        return self.lam * min(epoch + 1, freeze) / max(1, freeze)

    def weight_quantizer(self) -> WeightQuantizer:
        return Identity()

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """At the freeze epoch and after: binarize the binary layers' weights and freeze them."""
        if epoch < self.freeze_at(epochs):
            return
        for m in model.modules():
            if is_binary_layer(m) and m.binary:
                with torch.no_grad():
                    m.weight.copy_(sign(m.weight))
                m.weight.requires_grad_(False)
                m.weight.grad = None

    def after_step(
        self,
        model: nn.Module,
        lr: float = 0.0,
        *,
        epoch: int = 0,
        epochs: int = 1,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Prox step with strength ``lr * lambda_e``, then clip."""
        lam = self.lambda_at(epoch, epochs)
        with torch.no_grad():
            for m in model.modules():
                if lam > 0 and is_binary_layer(m) and m.binary and m.weight.requires_grad:
                    m.weight.copy_(prox_binary(m.weight, lr * lam))
        super().after_step(model, lr, epoch=epoch, epochs=epochs, optimizer=optimizer)
