"""Sign functions with their backward rules, and scale rules.

Notation (see PAPERS.md): ``w`` is the latent real weight the optimizer updates, ``wb`` the weight
the forward pass uses, ``g = dL/dwb``. ``sign(0) = +1`` everywhere in onebit.

A *weight quantizer* is a small frozen dataclass with two methods:

- ``__call__(w)``: the training-time forward weight, carrying the method's backward rule;
- ``hard(w)``: the deployed weight, always ``sign(w)`` (values in {-1, +1}).

Scale rules turn a latent weight into ``alpha`` (a scalar or one value per output channel); the
binarized layer uses ``alpha * quantizer(w)``. ``alpha`` is detached: no gradient flows through it
(the convention of BWN/XNOR-Net implementations and of LAB, PAPERS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from onebit.errors import OnebitError

__all__ = [
    "SCALES",
    "ActSign",
    "SignHtanh",
    "SignIdentity",
    "SignMaskedSTE",
    "SignSTE",
    "StochasticSign",
    "StochasticSignSTE",
    "scale",
    "sign",
]


def sign(x: Tensor) -> Tensor:
    """``sign(x)`` with ``sign(0) = +1``: values in {-1, +1}, same dtype as ``x``.

    ``copysign(1, x + 0.0)`` is one fast elementwise pass (``torch.where`` with scalars is ~10x
    slower on CPU); adding ``+0.0`` turns ``-0.0`` into ``+0.0`` so that both zeros give ``+1``.
    """
    return torch.copysign(torch.ones((), dtype=x.dtype, device=x.device), x + 0.0)


def sign_into(x: Tensor, out: Tensor) -> Tensor:
    """``sign(x)`` written into the preallocated ``out`` (no allocation on the training hot path)."""
    torch.add(x, 0.0, out=out)
    return torch.copysign(torch.ones((), dtype=x.dtype, device=x.device), out, out=out)


class SignSTE(torch.autograd.Function):
    """Forward ``sign(w)``; backward passes ``g`` unchanged (identity straight-through estimator).

    BinaryConnect, Courbariaux et al. 2015: ``dL/dw = g``. ``buf`` is an optional one-element
    list holding a tensor shaped like ``w`` to write the result into: allocating a fresh weight-sized
    tensor every step costs more than the sign itself on CPU. Autograd's version counter still
    guards it: reusing the buffer before the previous graph's backward raises instead of corrupting.
    """

    @staticmethod
    def forward(ctx, w: Tensor, buf: list[Tensor] | None = None) -> Tensor:
        if buf is None:
            return sign(w)
        return sign_into(w, buf[0])

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        return g, None


class SignMaskedSTE(torch.autograd.Function):
    """Forward ``sign(x)``; backward ``g * 1{|x| <= 1}`` (the hardtanh straight-through estimator).

    BNN, Hubara et al. 2016 (for activations); XNOR-Net, Rastegari et al. 2016 (for weights).
    ``buf`` as in ``SignSTE``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, buf: list[Tensor] | None = None) -> Tensor:
        ctx.save_for_backward(x)
        if buf is None:
            return sign(x)
        return sign_into(x, buf[0])

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype), None


class StochasticSignSTE(torch.autograd.Function):
    """Forward ``+1`` with probability ``p = clip((w + 1) / 2, 0, 1)``, else ``-1``; backward identity.

    Stochastic BinaryConnect, Courbariaux et al. 2015. Uses the global torch RNG (saved with
    checkpoints, so a resumed run draws the same numbers).
    """

    @staticmethod
    def forward(ctx, w: Tensor) -> Tensor:
        p = ((w + 1) / 2).clamp_(0, 1)
        return torch.where(torch.rand_like(w) < p, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return g


@dataclass(frozen=True)
class SignIdentity:
    """``wb = sign(w)``, ``dL/dw = g`` (BinaryConnect deterministic)."""

    def __call__(self, w: Tensor, buf: list[Tensor] | None = None) -> Tensor:
        """Training forward weight (written into ``buf[0]`` when given)."""
        return SignSTE.apply(w, buf)

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)``."""
        return sign(w)


@dataclass(frozen=True)
class SignHtanh:
    """``wb = sign(w)``, ``dL/dw = g * 1{|w| <= 1}`` (hardtanh STE; BWN/XNOR-Net weights)."""

    def __call__(self, w: Tensor, buf: list[Tensor] | None = None) -> Tensor:
        """Training forward weight (written into ``buf[0]`` when given)."""
        return SignMaskedSTE.apply(w, buf)

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)``."""
        return sign(w)


@dataclass(frozen=True)
class StochasticSign:
    """``wb = ±1`` with ``P(+1) = clip((w+1)/2, 0, 1)``, ``dL/dw = g``; deployed as ``sign(w)``."""

    def __call__(self, w: Tensor, buf: list[Tensor] | None = None) -> Tensor:
        """Training forward weight (a fresh draw every call; ``buf`` unused)."""
        return StochasticSignSTE.apply(w)

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)`` (we report the binary model, PAPERS.md)."""
        return sign(w)


@dataclass(frozen=True)
class ActSign:
    """Activation binarizer: ``a_b = sign(a)``, backward ``g * 1{|a| <= 1}`` (BNN, Hubara et al. 2016).

    The same rule holds in training and evaluation.
    """

    def __call__(self, a: Tensor) -> Tensor:
        """Binarize activations (same rule in training and evaluation)."""
        return SignMaskedSTE.apply(a)


def _scale_none(w: Tensor) -> Tensor:
    return torch.ones((), dtype=w.dtype, device=w.device)


def _scale_layer(w: Tensor) -> Tensor:
    return w.detach().abs().mean()


def _scale_channel(w: Tensor) -> Tensor:
    # (out, ...) -> (out, 1, ..., 1): one alpha per output channel, broadcast over the rest.
    wd = w.detach()
    return wd.abs().flatten(1).mean(1).view(-1, *([1] * (w.dim() - 1)))


SCALES = {"none": _scale_none, "layer": _scale_layer, "channel": _scale_channel}


def scale(w: Tensor, rule: str) -> Tensor:
    """The scale ``alpha`` of latent weight ``w`` under ``rule``.

    - ``none``: ``alpha = 1``;
    - ``layer``: ``alpha = mean(|w|)`` over the whole tensor (BWN per layer);
    - ``channel``: ``alpha_o = mean(|w_o|)`` per output channel ``o`` (BWN/XNOR-Net).

    ``alpha`` is computed from ``w.detach()``: no gradient flows through it.
    """
    try:
        fn = SCALES[rule]
    except KeyError:
        raise OnebitError(f"unknown scale rule {rule!r}; accepted: {', '.join(SCALES)}.") from None
    return fn(w)
