"""The shape every method shares: a frozen dataclass saying how a network is binarized and trained.

A method names its weight quantizer (forward + backward rule), scale rule, activation binarizer,
first/last-layer policy and latent-weight clipping; methods that need more (their own optimizer, a
schedule that changes with training progress, a pre-trained start, a teacher) override the
matching hook. Every hook a runner (``onebit.training``, ``onebit.experiments``) reads is declared
on :class:`Method` with its default; nothing reads a method's attributes by name otherwise.
Options are dataclass fields, so a method round-trips through a config file as
``{"name": ..., **fields}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from onebit.layers import WeightQuantizer, is_binary_layer
from onebit.quantizers import NoScale, ScaleRule

__all__ = ["Method", "clip_latent_", "epochs_at"]


def clip_latent_(layers: Iterable[nn.Module], c: float) -> None:
    """Clip the latent weight of every binarized layer to ``[-c, c]`` in place.

    BinaryConnect: without the clip, latent weights drift far from 0 and stop flipping sign.
    """
    with torch.no_grad():
        for m in layers:
            if is_binary_layer(m) and m.binary:
                m.weight.clamp_(-c, c)


def epochs_at(step: int, steps: int, epochs: int) -> float:
    """Training progress in epochs after ``step`` of the run's ``steps`` optimizer steps (the
    fraction of an epoch done counts): ``step * epochs / steps``, an integer ``e`` exactly at the
    first step of epoch ``e``. Per-step schedules are functions of it."""
    return step * epochs / steps


@dataclass(frozen=True)
class Method:
    """Full precision unless a subclass says otherwise; see the subclasses for the math.

    Attributes:
        keep_first: keep the first Conv/Linear layer in float.
        keep_last: keep the last Conv/Linear layer in float.
        clip: clip latent weights of binary layers to ``[-clip, clip]`` after each step (None: off).
    """

    name: ClassVar[str] = ""
    # what users see: the paper's name, "(reconstruction)" where docs/methods.md says so
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    reconstruction: ClassVar[bool] = False
    # evaluate the relaxed model (training forward weights) too, when it differs from sign(w)
    relaxed_eval: ClassVar[bool] = False
    # the option a pre-training run's best.pt fills when ``pretrain`` names a method
    pretrain_option: ClassVar[str] = "init"

    keep_first: bool = False
    keep_last: bool = False
    clip: float | None = None

    @property
    def binary_weights(self) -> bool:
        """Whether the method binarizes any weight."""
        return self.weight_quantizer() is not None

    @property
    def binary_activations(self) -> bool:
        """Whether the method binarizes activations."""
        return self.activation_quantizer() is not None

    def weight_scale(self) -> ScaleRule:
        """Scale rule of the binary weights (:class:`onebit.quantizers.ScaleRule`)."""
        return NoScale()

    def weight_quantizer(self) -> WeightQuantizer | None:
        """The weight quantizer, or None for no weight binarization."""
        return None

    def activation_quantizer(self) -> Callable[[Tensor], Tensor] | None:
        """The activation binarizer of binary layers' inputs (not the network input), or None."""
        return None

    def hidden_activation(self) -> str:
        """The nonlinearity a model should use under this method (see ``onebit.models``)."""
        return "hardtanh" if self.binary_activations else "relu"

    def make_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer | None:
        """An optimizer the method carries (LAB, ProxQuant...), or None for the config's."""
        return None

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Parameter groups for the config's optimizer; a group's ``lr_scale`` multiplies its rate."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def init_latent_(self, layer: nn.Module) -> None:
        """Re-initialize a freshly binarized layer's latent weight (default: keep torch's init)."""

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Hook before each epoch (0-based ``epoch`` of ``epochs``): methods whose quantizers or
        schedules change with progress update them here, as a pure function of the epoch."""

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
        """Hook after each optimizer step: ``lr`` is the step's base rate, ``epoch`` of ``epochs``
        where training is, ``optimizer`` the one that stepped, ``step`` the 0-based index of this
        step in the whole run and ``steps`` the steps the run plans (``epochs`` times the steps of
        an epoch; 0: not known, and per-step schedules then keep their per-epoch values). Default:
        clip latent weights when the method asks for it, then let every layer's weight
        parametrization take its step (:meth:`onebit.layers.WeightParametrization.step_`)."""
        if self.clip is not None:
            clip_latent_(model.modules(), self.clip)
        for m in model.modules():
            if is_binary_layer(m) and m.parametrization is not None:
                m.parametrization.step_(m.weight, optimizer)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Method-specific numbers for the epoch's metrics line (default: none)."""
        return {}

    def training_loss(
        self, logits: Tensor, y: Tensor, loss: Tensor, teacher_logits: Tensor | None = None
    ) -> Tensor:
        """The loss a training step minimizes, given the recipe's ``loss`` of ``logits`` and ``y``
        and, when :attr:`distill_from` names a teacher, the teacher's logits (default: ``loss``
        itself; BiTAT adds a distillation term here)."""
        return loss

    @property
    def pretrain(self) -> str | None:
        """What this run starts from, made first by ``onebit compare``: a method name (its run of
        the same config and seed; its ``best.pt`` fills :attr:`pretrain_option`) or a stage name
        (``sensitivity``); None for nothing."""
        return None

    @property
    def init_checkpoint(self) -> str | None:
        """A checkpoint whose weights the run starts from (loaded before training; a resumed run
        keeps its own). Default: None."""
        return None

    @property
    def distill_from(self) -> str | None:
        """A run or checkpoint whose model is the distillation teacher: its logits reach
        :meth:`training_loss`. Default: None."""
        return None

    def run_files(self) -> dict[str, str]:
        """Files a run folder keeps a copy of, ``name -> source path`` (the output of a
        pre-training stage the method read, e.g. a sensitivity ranking); default none."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **options}``: what a config file holds."""
        return {"name": self.name, **dataclasses.asdict(self)}
