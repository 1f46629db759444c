"""Loss-aware binarization, LAB and LAB2 (Hou, Yao, Kwok; ICLR 2017, arXiv 1611.01600).

LAB is a proximal Newton step on the loss with the weights constrained to ``alpha * {-1, +1}``,
with the diagonal Hessian taken from Adam's second moments. Its closed form gives ``wb = alpha *
sign(w)`` with a curvature-weighted ``alpha``, so the method lives in its optimizer: ``lab_scale``
and ``lab_accumulate`` are the pure math, ``LABOptimizer`` the thin stateful shell, and
``LABScale`` the scale rule that keeps the layer's ``alpha`` in a buffer (docs/methods.md#lab).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from onebit.layers import WeightQuantizer, is_binary_layer
from onebit.methods.base import Method
from onebit.quantizers import ActSign, ScaleRule, SignIdentity

__all__ = ["LAB", "LABOptimizer", "LABScale", "lab_accumulate", "lab_scale"]

EPS = 1e-8


def lab_scale(w: Tensor, v: Tensor, eps: float = EPS) -> Tensor:
    """``alpha = sum(|d * w|) / sum(d)`` with ``d = sqrt(v) + eps``: a curvature-weighted mean |w|.

    With ``v = 0`` every ``d`` is equal and ``alpha = mean(|w|)``: LAB's first step is BWN's.
    """
    d = v.sqrt().add_(eps)
    return (d * w.abs()).sum() / d.sum()


def lab_accumulate(v: Tensor, g: Tensor, beta: float = 0.999) -> Tensor:
    """The layer's second-moment accumulator after gradient ``g``: ``beta v + (1 - beta) g^2``.

    Starts at 0, no bias correction (the authors' code).
    """
    return v * beta + (1 - beta) * g * g


@dataclass(frozen=True)
class LABScale(ScaleRule):
    """LAB's per-layer ``alpha``, kept in the layer's ``alpha_stored`` buffer: it cannot be computed
    from ``w`` alone (it weights ``|w|`` by the curvature ``d``), so :class:`LABOptimizer` writes
    it after every step. It starts at BWN's ``mean(|w|)`` (``v = 0``)."""

    name: ClassVar[str] = "lab"

    def attach_(self, layer: Any) -> None:
        """Register ``alpha_stored`` (saved with the model), starting at ``mean(|w|)``."""
        layer.register_buffer("alpha_stored", layer.weight.detach().abs().mean().clone())

    def __call__(self, layer: Any) -> Tensor:
        return layer.alpha_stored


class LABOptimizer(torch.optim.Adam):
    """Adam on every parameter; for each binary layer's latent ``w`` then: clip to ``[-1, 1]``,
    update its accumulator ``v`` with the step's gradient, and write ``lab_scale(w, v)`` into the
    layer's ``alpha_stored`` buffer (the scale the next forward pass uses).

    ``v`` lives in the optimizer state (key ``lab_v``), so it saves and resumes with the
    optimizer's ``state_dict``; ``alpha`` is a model buffer and saves with the model.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        clip: float = 1.0,
    ) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        super().__init__(
            params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused
        )
        # python-side links, not in param_groups: load_state_dict replaces group values
        self._lab_layers = [
            m for m in model.modules() if is_binary_layer(m) and isinstance(m.scale_rule, LABScale)
        ]
        self._beta = betas[1]
        self._clip = clip

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One Adam step, then LAB's clip, accumulator and scale update per binary layer."""
        loss = super().step(closure)
        for m in self._lab_layers:
            w = m.weight
            if w.grad is None:
                continue
            w.clamp_(-self._clip, self._clip)
            st = self.state[w]
            v = st.get("lab_v")
            v = torch.zeros_like(w) if v is None else v
            st["lab_v"] = lab_accumulate(v, w.grad, self._beta)
            m.alpha_stored.copy_(lab_scale(w, st["lab_v"]))
        return loss


@dataclass(frozen=True)
class LAB(Method):
    """LAB: ``wb = alpha * sign(w)``, ``alpha = sum(|d w|) / sum(d)``, ``d = sqrt(v) + 1e-8``.

    One scalar ``alpha`` and one accumulator ``v = 0.999 v + 0.001 g^2`` per binarized layer
    (``g = dL/dwb``; ``v`` starts at 0, so the first step is BWN). Backward: ``g`` reaches ``w``
    unchanged (no mask, no gradient through ``alpha``). Update: Adam on ``w``, clip to [-1, 1],
    update ``v``, recompute ``alpha``. Every layer is binary (the first and last included), as in
    the authors' code; the recipe adds BN after the logits and the squared hinge loss.

    LAB2 (the registry's ``lab2``) also binarizes activations: ``sign(a)``, backward
    ``g * 1{|a| <= 1}``.

    Attributes:
        binary_acts: binarize the inputs of binary layers (LAB2).
    """

    name = "lab"
    title = "LAB (loss-aware binarization)"
    paper = "Hou, Yao, Kwok 2017, arXiv 1611.01600"

    clip: float | None = 1.0
    binary_acts: bool = False

    def weight_scale(self) -> ScaleRule:
        return LABScale()

    def weight_quantizer(self) -> WeightQuantizer:
        return SignIdentity()

    def activation_quantizer(self) -> Callable[[Tensor], Tensor] | None:
        return ActSign() if self.binary_acts else None

    def make_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        """LAB's Adam; the config's ``lr`` and ``weight_decay`` apply (``optimizer`` is ignored)."""
        return LABOptimizer(
            model, lr=cfg.lr, weight_decay=cfg.weight_decay, clip=self.clip or float("inf")
        )
