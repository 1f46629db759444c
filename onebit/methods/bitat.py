"""BiTAT (Park et al. 2022, arXiv 2207.01394): OUR RECONSTRUCTION, and its baselines."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from onebit.bitat import attach_, transforms
from onebit.errors import OnebitError
from onebit.layers import WeightQuantizer
from onebit.methods.base import Method
from onebit.quantizers import ActSign, SignHtanh
from onebit.schedules import (
    apply,
    apply_progressive,
    auto_epochs_per_layer,
    schedulable_layers,
)

__all__ = ["BiTAT", "BiTATProgressive", "XNORFromFP", "load_init_"]

log = logging.getLogger(__name__)

TEACHER = "_bitat_teacher"  # where the distillation teacher lives on the model (not a submodule)


def load_init_(model: nn.Module, path: str) -> None:
    """Load a (full-precision) checkpoint's weights into ``model``; BiTAT transforms then restart
    from them (``V = W U / s``). Only the transforms' own entries may be missing from the file."""
    from onebit.training import load_checkpoint

    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    extra = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and ".reparam." not in f".{k}"]
    if extra or missing:
        raise OnebitError(
            f"{path} holds weights of a different model than the one configured "
            f"({(extra or missing)[0]!r}); method.init must be a run of the same model."
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise OnebitError(f"{path} does not fit the configured model ({e}).") from None
    for layer, t in transforms(model):
        t.reset_(layer.weight)


@dataclass(frozen=True)
class BiTAT(Method):
    """BiTAT (reconstruction): 1-bit weights and activations on compact backbones, with an
    input-correlation eigenbasis and a learned importance vector reparametrizing each layer's latent
    weights, binarized bottom-up from a trained full-precision net (PAPERS.md section 5 [recon]).

    Per binarized layer (``onebit.bitat``): ``W = (V * s) U^T`` with ``U`` the eigenbasis of the
    input correlation ``C = E[x x^T]`` (refreshed every ``refresh_every`` steps, ``W`` unchanged by
    a refresh), ``s`` initialized to ``sqrt(lambda / mean(lambda))``. Forward ``wb = alpha *
    sign(W)`` with ``alpha = mean|W_o|`` per output channel; backward ``g * 1{|W| <= 1}`` into
    ``W``, then autograd into ``V`` and ``s``. Inputs of binarized layers: ``sign(a)``, backward
    ``g * 1{|a| <= 1}``. First and last layers stay float. Layers switch to binary bottom-up, one
    every ``E`` epochs (``onebit.schedules``); weights start from ``init`` (a full-precision run's
    checkpoint; ``onebit compare`` trains ``fp`` first and fills it in), with an optional
    distillation term ``distill * T^2 * KL(softmax(t / T) || softmax(z / T))`` from that net's
    logits ``t``. The deployed net is an ordinary binary net (``weight`` holds ``W``). Not
    reconstructed: the paper's importance-ordered quantization of the weights *within* a layer
    (here all weights of a layer turn binary together) and its cross-layer aggregation.

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
    pretrain: ClassVar[str] = "fp"

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

    @property
    def scale_rule(self) -> str:
        return self.scale

    def weight_quantizer(self) -> WeightQuantizer:
        return SignHtanh()

    def activation_quantizer(self) -> Callable[[Tensor], Tensor]:
        return ActSign()

    def init_latent_(self, layer: nn.Module) -> None:
        if self.transform:
            attach_(layer, self.refresh_every, self.stats_batches, self.max_rows)

    def make_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        """The recipe's optimizer; each transform keeps a weak reference to drop ``V``'s moments
        at a refresh (they are coordinates of the old basis)."""
        from onebit.training import make_optimizer

        opt = make_optimizer(model, cfg, self.param_groups(model))
        for _, t in transforms(model):
            t.optimizer = weakref.ref(opt)
        return opt

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        if epoch == 0 and self.init is not None:  # a resumed run starts later: its own weights
            load_init_(model, self.init)
            log.info("starting from %s", self.init)
        elif epoch == 0:
            log.warning(
                "%s starts from torch's initialization; it expects a trained full-precision "
                "start (method.init; onebit compare trains fp first and sets it)",
                self.name,
            )
        if self.distill > 0 and TEACHER not in model.__dict__:
            if self.init is None:
                raise OnebitError("method.distill needs method.init (the teacher's checkpoint).")
            from onebit.runs import load_run

            teacher = load_run(self.init)[1].eval()
            teacher.requires_grad_(False)
            model.__dict__[TEACHER] = teacher  # not a submodule: neither trained nor saved
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

    def after_step(self, model: nn.Module, lr: float = 0.0) -> None:
        super().after_step(model, lr=lr)
        for layer, t in transforms(model):
            t.step_(layer.weight)

    def training_loss(
        self, model: nn.Module, x: Tensor, logits: Tensor, y: Tensor, loss: Tensor
    ) -> Tensor:
        teacher = model.__dict__.get(TEACHER)
        if self.distill <= 0 or teacher is None:
            return loss
        with torch.no_grad():
            t = teacher(x)
        temp = self.temperature
        kd = F.kl_div(
            F.log_softmax(logits / temp, 1), F.log_softmax(t / temp, 1), reduction="batchmean",
            log_target=True,
        )  # fmt: skip
        return loss + self.distill * temp * temp * kd


@dataclass(frozen=True)
class BiTATProgressive(BiTAT):
    """BiTAT's bottom-up progressive binarization from the full-precision start, without the
    eigenbasis/importance transformation (reconstruction baseline): what the order alone gives."""

    name = "bitat-progressive"
    title = "BiTAT progressive order alone, no transformation (reconstruction)"

    transform: bool = False


@dataclass(frozen=True)
class XNORFromFP(BiTAT):
    """XNOR-Net (``alpha * sign(w)`` per output channel, ``sign(a)``, first/last layers float)
    fine-tuned from the same full-precision start as BiTAT, every layer binary from the first
    step: BiTAT's baseline, neither the transformation nor the progressive order."""

    name = "xnor-ft"
    title = "XNOR-Net from the full-precision start (BiTAT baseline)"
    reconstruction = False

    transform: bool = False
    progressive: bool = False
