"""The shape every method shares: a frozen dataclass saying how a network is binarized and trained.

A method names its weight quantizer (forward + backward rule), scale rule, activation binarizer,
first/last-layer policy and latent-weight clipping; methods that need more (their own optimizer, a
schedule that changes with training progress) override the matching hook. Options are dataclass
fields, so a method round-trips through a config file as ``{"name": ..., **fields}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from onebit import gemm
from onebit.layers import WeightQuantizer, is_binary_layer

__all__ = ["Method", "clip_latent_"]


def clip_latent_(layers: Iterable[nn.Module], c: float) -> None:
    """Clip the latent weight of every binarized layer to ``[-c, c]`` in place.

    BinaryConnect: without the clip, latent weights drift far from 0 and stop flipping sign.
    """
    with torch.no_grad():
        for m in layers:
            if is_binary_layer(m) and m.binary and not gemm.clamp_(m.weight, -c, c):
                m.weight.clamp_(-c, c)


@dataclass(frozen=True)
class Method:
    """Full precision unless a subclass says otherwise; see the subclasses for the math.

    Attributes:
        keep_first: keep the first Conv/Linear layer in float.
        keep_last: keep the last Conv/Linear layer in float.
        clip: clip latent weights of binary layers to ``[-clip, clip]`` after each step (None: off).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = (
        ""  # what users see: paper name, "(reconstruction)" where PAPERS.md says so
    )
    paper: ClassVar[str] = ""
    reconstruction: ClassVar[bool] = False
    # evaluate the relaxed model (training forward weights) too, when it differs from sign(w)
    relaxed_eval: ClassVar[bool] = False

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

    @property
    def scale_rule(self) -> str:
        """Scale rule of the binary weights (see ``onebit.quantizers.scale``)."""
        return "none"

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
        """Hook before each epoch: methods whose quantizers change with progress update them."""

    def after_step(self, model: nn.Module, lr: float = 0.0) -> None:
        """Hook after each optimizer step (``lr``: the step's base rate): clip latent weights when
        the method asks for it."""
        if self.clip is not None:
            clip_latent_(model.modules(), self.clip)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """Method-specific numbers for the epoch's metrics line (default: none)."""
        return {}

    def training_loss(
        self, model: nn.Module, x: Tensor, logits: Tensor, y: Tensor, loss: Tensor
    ) -> Tensor:
        """The loss a training step minimizes, given the recipe's ``loss`` of ``logits`` and ``y``
        (default: ``loss`` itself; BiTAT adds a distillation term here)."""
        return loss

    def run_files(self) -> dict[str, str]:
        """Files a run folder keeps a copy of, ``name -> source path`` (the output of a
        pre-training stage the method read, e.g. a sensitivity ranking); default none."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **options}``: what a config file holds."""
        return {"name": self.name, **dataclasses.asdict(self)}
