"""BiTAT (Park et al. 2022, arXiv 2207.01394): OUR RECONSTRUCTION (docs/methods.md#bitat)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn import functional as F

from onebit.errors import OnebitError
from onebit.layers import WeightQuantizer
from onebit.methods.base import Method
from onebit.quantizers import ActSign, ScaleRule, SignHtanh, scale_rule
from onebit.schedules import apply, apply_progressive, auto_epochs_per_layer, schedulable_layers
from onebit.transforms import attach_

__all__ = ["BiTAT", "distillation"]

log = logging.getLogger(__name__)


def distillation(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(z / T))``, batch mean (Hinton et al. 2015)."""
    kd = F.kl_div(
        F.log_softmax(logits / temperature, 1),
        F.log_softmax(teacher_logits / temperature, 1),
        reduction="batchmean",
        log_target=True,
    )
    return temperature * temperature * kd


@dataclass(frozen=True)
class BiTAT(Method):
    """BiTAT (reconstruction): 1-bit weights and activations on compact backbones, with an
    input-correlation eigenbasis and a learned importance vector reparametrizing each layer's latent
    weights, binarized bottom-up from a trained full-precision net.

    Per binarized layer (:class:`onebit.transforms.BitatTransform`): ``W = (V * s) U^T`` with ``U``
    the eigenbasis of the input correlation ``C = E[x x^T]`` (refreshed every ``refresh_every``
    steps, ``W`` unchanged by a refresh), ``s`` initialized to ``sqrt(lambda / mean(lambda))``.
    Forward ``wb = alpha * sign(W)`` with ``alpha = mean|W_o|`` per output channel; backward
    ``g * 1{|W| <= 1}`` into ``W``, then autograd into ``V`` and ``s``. Inputs of binarized layers:
    ``sign(a)``, backward ``g * 1{|a| <= 1}``. First and last layers stay float. Layers switch to
    binary bottom-up, one every ``E`` epochs (``onebit.schedules``); weights start from ``init`` (a
    full-precision run's checkpoint; ``onebit compare`` trains ``fp`` first and fills it in), with
    an optional distillation term ``distill * T^2 * KL(softmax(t / T) || softmax(z / T))`` from
    that net's logits ``t``. The deployed net is an ordinary binary net (``weight`` holds ``W``).
    Not reconstructed: the paper's importance-ordered quantization of the weights *within* a layer
    (here all weights of a layer turn binary together) and its cross-layer aggregation.

    The registry's baselines are presets of this class: ``bitat-progressive`` (the bottom-up order
    alone, ``transform = false``) and ``xnor-ft`` (XNOR-Net from the same start, every layer at
    once: ``transform = false``, ``progressive = false``).

    Attributes:
        scale: ``channel`` or ``layer`` scale of the binary weights.
        init: checkpoint (``best.pt``) to start from; None: torch's initialization.
        transform: reparametrize by the eigenbasis and importance (False: plain latent weights).
        progressive: binarize bottom-up one layer at a time (False: all from the start).
        epochs_per_layer: ``E`` (None: as ``onebit.schedules.auto_epochs_per_layer``).
        refresh_every: optimizer steps between basis refreshes.
        stats_batches: batches whose inputs estimate ``C`` before each refresh.
        max_rows: input vectors per batch and layer used for ``C``.
        distill: weight of the distillation term (0: off; needs ``init``).
        temperature: distillation temperature ``T``.
    """

    name = "bitat"
    title = "BiTAT (reconstruction)"
    paper = "Park et al. 2022, arXiv 2207.01394"
    reconstruction = True

    keep_first: bool = True
    keep_last: bool = True
    scale: str = "channel"
    init: str | None = None
    transform: bool = True
    progressive: bool = True
    epochs_per_layer: float | None = None
    refresh_every: int = 200
    stats_batches: int = 10
    max_rows: int = 2048
    distill: float = 0.0
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if self.refresh_every < 1 or self.stats_batches < 1 or self.max_rows < 1:
            raise OnebitError("method.refresh_every, stats_batches and max_rows must be >= 1.")
        if self.distill < 0 or self.temperature <= 0:
            raise OnebitError("method.distill must be >= 0 and method.temperature > 0.")
        if self.distill > 0 and self.init is None:
            raise OnebitError("method.distill needs method.init (the teacher's checkpoint).")
        scale_rule(self.scale)

    @property
    def pretrain(self) -> str | None:
        """``fp``: the full-precision run of the same config and seed (its best.pt is ``init``)."""
        return "fp"

    @property
    def init_checkpoint(self) -> str | None:
        return self.init

    @property
    def distill_from(self) -> str | None:
        return self.init if self.distill > 0 else None

    def weight_scale(self) -> ScaleRule:
        return scale_rule(self.scale)

    def weight_quantizer(self) -> WeightQuantizer:
        return SignHtanh()

    def activation_quantizer(self) -> Callable[[Tensor], Tensor]:
        return ActSign()

    def init_latent_(self, layer: nn.Module) -> None:
        if self.transform:
            attach_(layer, self.refresh_every, self.stats_batches, self.max_rows)

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        if epoch == 0 and self.init is None:
            log.warning(
                "%s starts from torch's initialization; it expects a trained full-precision "
                "start (method.init; onebit compare trains fp first and sets it)",
                self.title,
            )
        names = schedulable_layers(model)
        if not self.progressive:
            apply(model, dict.fromkeys(names, True))
            return
        epl = (
            self.epochs_per_layer
            if self.epochs_per_layer is not None
            else auto_epochs_per_layer(len(names), epochs)
        )
        on = apply_progressive(model, names, names, epoch, epochs, epl, self.name)
        log.debug("epoch %d: binary layers %s", epoch + 1, ", ".join(on) or "none")

    def training_loss(
        self, logits: Tensor, y: Tensor, loss: Tensor, teacher_logits: Tensor | None = None
    ) -> Tensor:
        if self.distill <= 0 or teacher_logits is None:
            return loss
        return loss + self.distill * distillation(logits, teacher_logits, self.temperature)
