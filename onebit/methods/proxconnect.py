"""ProxConnect++ and BNN++ (Lu, Yu, Li, Partovi Nia; NeurIPS 2023, arXiv 2402.17710).

A binarization method is a pair of quantizers: a forward ``F`` giving ``wb = F(w)`` and a backward
``B`` whose derivative replaces ``dF/dw``: ``dL/dw = B'(w) * g``. The family's members differ only
in the pair (docs/methods.md#proxconnect-family):

======  ============================  =====================================
name    forward F                     backward B
======  ============================  =====================================
bc      sign                          identity
pc      ramp ``clip(mu w, -1, 1)``    identity
bnn     sign                          hardtanh (``B' = 1{|w| <= 1}``)
bnn+    sign                          SignSwish ``SS_mu``
bnn++   ``SS_mu``                     ``SS_mu`` (exact gradient)
======  ============================  =====================================

``bc`` and ``bnn`` are the registered baselines; this module adds ``pc``, ``bnn+`` and ``bnn++``.
The steepness ``mu`` follows a schedule over training progress (``steepness``), updated after
every optimizer step, so that ``F`` and ``B`` approach ``sign``; the deployed and evaluated model
is always ``alpha * sign(w)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from onebit.errors import OnebitError
from onebit.layers import WeightQuantizer, is_binary_layer
from onebit.methods.base import Method, epochs_at
from onebit.quantizers import ActSign, ProxRamp, ScaleRule, SignSwish, SignSwishSTE, scale_rule

__all__ = ["STEEPNESS", "BNNPlus", "BNNPlusPlus", "ProxConnect", "steepness"]

STEEPNESS = ("constant", "linear", "exp")


def steepness(epoch: float, epochs: int, start: float, end: float, kind: str = "linear") -> float:
    """Steepness ``mu`` at ``epoch`` (0-based; fractional between epochs for per-step schedules,
    see :func:`onebit.methods.base.epochs_at`): ``start`` at the first epoch, ``end`` from the
    start of the last epoch on (from the end of a one-epoch run).

    - ``constant``: ``mu = end``;
    - ``linear``: ``mu = start + (end - start) * t``, ``t = min(1, epoch / max(1, epochs - 1))``;
    - ``exp``: ``mu = start * (end / start) ** t`` (geometric).

    At whole epochs the values are those of the per-epoch schedule that earlier records ran
    (``mu`` fixed within each epoch); between them ``mu`` moves on, so a short run sharpens too.
    """
    if kind not in STEEPNESS:
        raise OnebitError(f"unknown steepness schedule {kind!r}; accepted: {', '.join(STEEPNESS)}.")
    if kind == "constant":
        return end
    t = min(1.0, max(0.0, epoch / max(1, epochs - 1)))
    if kind == "linear":
        return start + (end - start) * t
    return start * math.exp(math.log(end / start) * t)


@dataclass(frozen=True)
class _ProxFamily(Method):
    """Shared options of the ProxConnect++ family.

    Attributes:
        mu_start, mu_end: steepness at the first step and from the last epoch on (in units of
            the layer's mean ``|w|``; see ``onebit.quantizers.ProxRamp``).
        mu_schedule: ``constant``, ``linear`` or ``exp`` (see ``steepness``), set after every
            step from the progress in epochs.
        scale: scale rule of the deployed weight (``none``, ``layer`` or ``channel``).
        binary_acts: also binarize activations (``sign``, backward ``1{|a| <= 1}``).
    """

    mu_start: float = 1.0
    mu_end: float = 10.0
    mu_schedule: str = "linear"
    scale: str = "none"
    binary_acts: bool = False

    def __post_init__(self) -> None:
        if self.mu_start <= 0 or self.mu_end <= 0:
            raise OnebitError("method.mu_start and method.mu_end must be positive.")
        if self.mu_schedule not in STEEPNESS:
            raise OnebitError(
                f"unknown method.mu_schedule {self.mu_schedule!r}; accepted: {', '.join(STEEPNESS)}."
            )
        scale_rule(self.scale)

    relaxed_eval = True

    def weight_scale(self) -> ScaleRule:
        return scale_rule(self.scale)

    def _quantizer(self, mu: float) -> WeightQuantizer:
        raise NotImplementedError

    def weight_quantizer(self) -> WeightQuantizer:
        return self._quantizer(self.mu_start)

    def activation_quantizer(self) -> Callable[[Tensor], Tensor] | None:
        return ActSign() if self.binary_acts else None

    def _set_steepness_(self, model: nn.Module, epoch: float, epochs: int) -> None:
        mu = steepness(epoch, epochs, self.mu_start, self.mu_end, self.mu_schedule)
        for m in model.modules():
            if is_binary_layer(m):
                m.quantizer = self._quantizer(mu)

    def on_epoch_start(self, model: nn.Module, epoch: int, epochs: int) -> None:
        """Set every binary layer's quantizer to the steepness at this epoch's start."""
        self._set_steepness_(model, epoch, epochs)

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
        """The base hook (clip), then the steepness of the next step, ``step + 1`` of ``steps``
        (kept as it is when ``steps`` is 0: a loop that passes no steps gets per-epoch values)."""
        super().after_step(
            model, lr, epoch=epoch, epochs=epochs, optimizer=optimizer, step=step, steps=steps
        )
        if steps > 0:
            self._set_steepness_(model, epochs_at(step + 1, steps, epochs), epochs)


@dataclass(frozen=True)
class ProxConnect(_ProxFamily):
    """ProxConnect: forward ramp ``wb = clip(mu * w / s, -1, 1)``, backward identity (``dL/dw = g``).

    ``s = mean|w|`` of the layer (detached); ``mu`` grows on the steepness schedule so the ramp
    tends to ``sign``. Latent weights are clipped to ``[-1, 1]`` as in BinaryConnect (without a
    clip an identity backward lets them drift until they never flip). The ramp's exact shape is our
    reconstruction (docs/methods.md#proxconnect-family). Deployed: ``sign(w)``.
    """

    name = "pc"
    title = "ProxConnect (ramp shape: reconstruction)"
    paper = "Lu et al. 2023, arXiv 2402.17710"
    reconstruction = True

    clip: float | None = 1.0

    def _quantizer(self, mu: float) -> WeightQuantizer:
        return ProxRamp(mu)


@dataclass(frozen=True)
class BNNPlus(_ProxFamily):
    """BNN+: forward ``wb = sign(w)``, backward ``dL/dw = SS_mu'(w / s) / s * g`` (SignSwish).

    ``SS_b'(x) = b (2 - bx tanh(bx / 2)) / (1 + cosh(bx))``; ``s = mean|w|`` of the layer. The
    derivative vanishes far from 0, so latent weights need no clip.
    """

    name = "bnn+"
    title = "BNN+"
    paper = "Darabi et al. 2018 (arXiv 1812.11800); Lu et al. 2023, arXiv 2402.17710"

    def _quantizer(self, mu: float) -> WeightQuantizer:
        return SignSwishSTE(mu)


@dataclass(frozen=True)
class BNNPlusPlus(_ProxFamily):
    """BNN++: forward ``wb = SS_mu(w / s)``, backward its exact derivative (``F = B = SS_mu``).

    ``SS_b(x) = 2 sigmoid(bx) (1 + bx (1 - sigmoid(bx))) - 1`` overshoots to about 1.2 near
    ``x = 2.4 / b`` during training (expected). Evaluation and deployment use ``sign(w)``.
    """

    name = "bnn++"
    title = "BNN++"
    paper = "Lu et al. 2023, arXiv 2402.17710"

    def _quantizer(self, mu: float) -> WeightQuantizer:
        return SignSwish(mu)
