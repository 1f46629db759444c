"""Loss-aware binarization, LAB and LAB2 (Hou, Yao, Kwok; ICLR 2017, arXiv 1611.01600).

LAB is a proximal Newton step on the loss with the weights constrained to ``alpha * {-1, +1}``,
with the diagonal Hessian taken from Adam's second moments. Its closed form gives ``wb = alpha *
sign(w)`` with a curvature-weighted ``alpha``, so the method lives in its optimizer: ``lab_scale``
and ``lab_accumulate`` are the pure math, ``LABOptimizer`` the thin stateful shell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from onebit.layers import WeightQuantizer, is_binary_layer
from onebit.methods.base import Method
from onebit.quantizers import ActSign, SignIdentity

__all__ = ["LAB", "LAB2", "LABOptimizer", "lab_accumulate", "lab_scale"]

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
            m for m in model.modules() if is_binary_layer(m) and m.scale_rule == "stored"
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
    """

    name = "lab"
    title = "LAB (loss-aware binarization)"
    paper = "Hou, Yao, Kwok 2017, arXiv 1611.01600"

    clip: float | None = 1.0

    @property
    def scale_rule(self) -> str:
        return "stored"

    def weight_quantizer(self) -> WeightQuantizer:
        return SignIdentity()

    def init_latent_(self, layer: nn.Module) -> None:
        """Give the layer its ``alpha_stored`` buffer, starting at BWN's ``mean(|w|)``."""
        w = layer.weight.detach()
        layer.register_buffer("alpha_stored", w.abs().mean().clone())

    def make_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        """LAB's Adam; the config's ``lr`` and ``weight_decay`` apply (``optimizer`` is ignored)."""
        return LABOptimizer(
            model, lr=cfg.lr, weight_decay=cfg.weight_decay, clip=self.clip or float("inf")
        )


@dataclass(frozen=True)
class LAB2(LAB):
    """LAB2: LAB's weights, plus binary activations ``sign(a)`` with backward ``g * 1{|a| <= 1}``."""

    name = "lab2"
    title = "LAB2 (loss-aware, binary activations)"

    def activation_quantizer(self) -> Callable[[Tensor], Tensor]:
        return ActSign()
