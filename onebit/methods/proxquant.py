"""ProxQuant (Bai, Wang, Liberty; ICLR 2019, arXiv 1810.00861)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from onebit.errors import OnebitError
from onebit.layers import WeightQuantizer, is_binary_layer
from onebit.methods.base import Method, epochs_at
from onebit.methods.bnstats import input_cache, recalibrate_bn_
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


def _binary_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if is_binary_layer(m) and m.binary]


@dataclass(frozen=True)
class ProxQuant(Method):
    """ProxQuant: train the real weights, pull them to ±1 with a growing proximal step, then
    hard-quantize, freeze, and train the rest (docs/methods.md#proxquant).

    Forward (training): ``wb = w`` (the gradient is taken at the latent point). After each optimizer
    step with rate ``lr``: ``w <- clip(prox_binary(w, lr * lambda_t), -1, 1)``, ``lambda_t =
    reg_rate * t`` with ``t`` the training progress in epochs [code: the authors' ``reg_rate *
    epoch``, constant within an epoch; onebit grows it per step, equal at each epoch's start].
    Once a fraction ``freeze`` of the run's steps is done the binary layers' weights become
    ``sign(w)`` and stop training; the rest of the run trains BatchNorm and the float layers with
    them [code: ``--freeze_epoch 200`` of 300]. Evaluation and deployment use ``sign(w)``; before
    each evaluation (the end of each epoch) BatchNorm's running statistics are re-estimated for
    that model on the epoch's last ``bn_batches`` training batches (onebit choice: statistics
    gathered with the relaxed ``w`` do not fit ``sign(w)``; the authors evaluate them as they are
    and report the frozen model, whose statistics the last third re-learns).

    Attributes:
        reg_rate: growth of ``lambda`` per epoch of training (the authors' ``--reg_rate``).
        freeze: fraction of the run's steps after which weights are hard-binarized and frozen
            (1: after the last step).
        bn_batches: training batches the BatchNorm re-estimate uses (0: keep the running
            statistics training gathered).
    """

    name = "proxquant"
    title = "ProxQuant"
    paper = "Bai et al. 2019, arXiv 1810.00861"

    clip: float | None = 1.0
    reg_rate: float = 1e-4
    freeze: float = 2 / 3
    bn_batches: int = 10

    def __post_init__(self) -> None:
        if self.reg_rate < 0:
            raise OnebitError("method.reg_rate must be >= 0.")
        if not 0 < self.freeze <= 1:
            raise OnebitError("method.freeze is a fraction of the run: pass 0 < freeze <= 1.")
        if self.bn_batches < 0:
            raise OnebitError("method.bn_batches must be >= 0 (0: no re-estimate).")

    def lambda_at(self, step: int, steps: int, epoch: int = 0, epochs: int = 1) -> float:
        """``lambda_t = reg_rate * t`` for the prox after step ``step`` of ``steps``, ``t`` the
        progress in epochs (``reg_rate * epoch`` when ``steps`` is 0: not known)."""
        t = epochs_at(step, steps, epochs) if steps > 0 else epoch
        return self.reg_rate * t

    def freeze_step(self, steps: int) -> float:
        """Steps done when the weights are frozen (a run of ``steps``)."""
        return self.freeze * steps * (1 - 1e-12)  # a fraction like 2/3 of 3 epochs: exactly 2

    def weight_quantizer(self) -> WeightQuantizer:
        return Identity()

    def _freeze_(self, model: nn.Module) -> None:
        for m in _binary_layers(model):
            if m.weight.requires_grad:
                with torch.no_grad():
                    m.weight.copy_(sign(m.weight))
                m.weight.requires_grad_(False)
                m.weight.grad = None

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """From the freeze point on (a resumed run, or a loop that passes no steps): binarize and
        freeze the binary layers' weights."""
        if epoch >= self.freeze_step(epochs):
            self._freeze_(model)

    def after_step(
        self,
        model: nn.Module,
        lr: float = 0.0,
        *,
        epoch: int = 0,
        epochs: int = 1,
        optimizer: torch.optim.Optimizer | None = None,
        step: int = 0,
        steps: int = 0,
    ) -> None:
        """Prox step with strength ``lr * lambda_t`` and clip; freeze at the freeze step; at the
        end of an epoch, re-estimate BatchNorm statistics for the hard model."""
        cache = input_cache(model, self.bn_batches) if self.bn_batches > 0 and steps > 0 else None
        lam = self.lambda_at(step, steps, epoch, epochs)
        with torch.no_grad():
            for m in _binary_layers(model):
                if lam > 0 and m.weight.requires_grad:
                    m.weight.copy_(prox_binary(m.weight, lr * lam))
        super().after_step(
            model, lr, epoch=epoch, epochs=epochs, optimizer=optimizer, step=step, steps=steps
        )
        if steps > 0 and step + 1 >= self.freeze_step(steps):
            self._freeze_(model)
        if cache is not None and steps > 0 and (step + 1) * epochs % steps == 0:
            recalibrate_bn_(model, cache.inputs)
