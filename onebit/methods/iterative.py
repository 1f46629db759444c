"""Iterative training with layer binarization (Lan 2021, arXiv 2111.07046), and its baselines."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from onebit.errors import OnebitError
from onebit.layers import WeightQuantizer
from onebit.methods.base import Method
from onebit.quantizers import SignIdentity
from onebit.schedules import (
    ORDERS,
    apply_progressive,
    auto_epochs_per_layer,
    resolve_order,
    schedulable_layers,
)

__all__ = ["SENSITIVITY_ORDERS", "IterativeBinarization"]

log = logging.getLogger(__name__)

SENSITIVITY_ORDERS = ("sensitivity-ascending", "sensitivity-descending")


@dataclass(frozen=True)
class IterativeBinarization(Method):
    """Iterative training: layers become binary one at a time and stay binary (docs/methods.md#iterative).

    Weights ``wb = sign(w)`` (no scale, no clip); backward ``dL/dw = g`` (identity STE, no mask);
    activations stay real. Every Conv/Linear is binarizable, the first and the last included, and
    the models it trains carry BatchNorm after every layer, the logits included (``bn_logits``).
    Before epoch ``e`` layer ``order[floor(e / E)]`` switches to binary (``E = epochs_per_layer``),
    so the first layer of the order is binary from the first epoch and the last ``E`` epochs
    train the fully binary net (``onebit.schedules``). Epochs in which some layer is still float
    are never selected as the best-validation epoch: the reported accuracy is the binary net's.

    The registry's presets (``onebit.methods.METHODS``) name its orders: ``iterative`` (forward),
    ``iterative-reverse``, ``iterative-random``, ``iterative-sens-asc``, ``iterative-sens-desc``,
    and the paper's baseline ``iterative-all`` (``epochs_per_layer = 0``: every layer binary from
    the start, no clip: BinaryConnect's deterministic rule without the clip).

    Attributes:
        order: ``forward``, ``reverse``, ``random``, ``sensitivity-ascending``,
            ``sensitivity-descending``, or a list of layer names (unlisted layers stay float).
        epochs_per_layer: ``E`` (None: ``train.epochs // layers``, or fractional when there are
            more layers than epochs; 0: every layer binary from the start).
        seed: seed of the ``random`` order.
        ranking: the sensitivity ranking file of the sensitivity orders (``onebit sensitivity``
            writes it; ``onebit compare`` makes it and fills this in when it is not set).
    """

    name = "iterative"
    title = "Iterative training, forward order"
    paper = "Lan 2021, arXiv 2111.07046"

    order: str | list[str] = "forward"
    epochs_per_layer: float | None = None
    seed: int = 0
    ranking: str | None = None

    pretrain_option = "ranking"

    def __post_init__(self) -> None:
        if isinstance(self.order, str):
            if self.order not in ORDERS:
                raise OnebitError(
                    f"method.order = {self.order!r} is not accepted; choose one of "
                    f"{', '.join(ORDERS)}, or give a list of layer names."
                )
        else:  # a tuple keeps the frozen method hashable
            object.__setattr__(self, "order", tuple(self.order))
        if self.epochs_per_layer is not None and self.epochs_per_layer < 0:
            raise OnebitError(f"method.epochs_per_layer must be >= 0, got {self.epochs_per_layer}.")

    @property
    def pretrain(self) -> str | None:
        """``sensitivity`` when a sensitivity order has no ranking yet (``onebit compare`` then
        runs the sensitivity pre-training first and sets ``ranking``)."""
        return "sensitivity" if self.order in SENSITIVITY_ORDERS and self.ranking is None else None

    def weight_quantizer(self) -> WeightQuantizer:
        return SignIdentity()

    def layer_order(self, model: nn.Module) -> list[str]:
        """The order of this method on ``model``'s binarized layers."""
        return resolve_order(
            self.order, schedulable_layers(model), seed=self.seed, ranking=self.ranking
        )

    def schedule_epochs(self, n_layers: int, epochs: int) -> float:
        """``E``: the option, or :func:`onebit.schedules.auto_epochs_per_layer`."""
        if self.epochs_per_layer is not None:
            return self.epochs_per_layer
        return auto_epochs_per_layer(n_layers, epochs)

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        names = schedulable_layers(model)
        order = self.layer_order(model)
        epl = self.schedule_epochs(len(order), epochs)
        on = apply_progressive(model, names, order, epoch, epochs, epl, self.name)
        log.debug("epoch %d: binary layers %s", epoch + 1, ", ".join(on) or "none")

    def run_files(self) -> dict[str, str]:
        """The ranking file, kept in the run folder as ``sensitivity.json`` (plotted by reports)."""
        return {"sensitivity.json": self.ranking} if self.ranking else {}
