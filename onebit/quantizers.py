"""Sign functions with their backward rules, and scale rules.

Notation (docs/methods.md): ``w`` is the latent real weight the optimizer updates, ``wb`` the weight
the forward pass uses, ``g = dL/dwb``. ``sign(0) = +1`` everywhere in onebit.

A *weight quantizer* is a small frozen dataclass with two methods:

- ``__call__(w)``: the training-time forward weight, carrying the method's backward rule;
- ``hard(w)``: the deployed weight, always ``sign(w)`` (values in {-1, +1}).

A *scale rule* (:class:`ScaleRule`) turns a layer into ``alpha`` (a scalar or one value per output
channel); the binarized layer uses ``alpha * quantizer(w)``. ``alpha`` is detached: no gradient
flows through it (the convention of BWN/XNOR-Net implementations and of LAB, docs/methods.md). A
rule may own state on the layer (LAB's curvature-weighted scale keeps a buffer): it registers it in
:meth:`ScaleRule.attach_`.

:func:`sign_into` is an overridable torch function (``torch.overrides``): a ``TorchFunctionMode``
such as :class:`onebit.gemm.NativeCPU` may run it natively; nothing here knows about that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function

from onebit.errors import OnebitError

__all__ = [
    "SCALES",
    "ActSign",
    "ChannelScale",
    "GroupClip",
    "Identity",
    "LayerScale",
    "NoScale",
    "ProxRamp",
    "ScaleRule",
    "SignHtanh",
    "SignIdentity",
    "SignMaskedSTE",
    "SignSTE",
    "SignSwish",
    "SignSwishSTE",
    "StochasticSign",
    "StochasticSignSTE",
    "ThresholdSign",
    "WeightBuffer",
    "scale",
    "scale_rule",
    "sign",
    "sign_into",
    "signswish",
    "signswish_grad",
]


def sign(x: Tensor) -> Tensor:
    """``sign(x)`` with ``sign(0) = +1``: values in {-1, +1}, same dtype as ``x``.

    ``copysign(1, x + 0.0)`` is one fast elementwise pass (``torch.where`` with scalars is ~10x
    slower on CPU); adding ``+0.0`` turns ``-0.0`` into ``+0.0`` so that both zeros give ``+1``.
    """
    return torch.copysign(torch.ones((), dtype=x.dtype, device=x.device), x + 0.0)


def sign_into(x: Tensor, out: Tensor) -> Tensor:
    """``sign(x)`` written into the preallocated ``out`` (no allocation on the training hot path).

    Overridable (``torch.overrides.handle_torch_function``): an active ``TorchFunctionMode`` sees
    the call as ``func is sign_into`` and may compute it another way with the same result.
    """
    if has_torch_function((x, out)):
        return handle_torch_function(sign_into, (x, out), x, out)
    torch.add(x, 0.0, out=out)
    return torch.copysign(torch.ones((), dtype=x.dtype, device=x.device), out, out=out)


class WeightBuffer:
    """A reusable weight-shaped tensor that a training forward weight is written into.

    Allocating a fresh weight-sized tensor every step costs more than the sign itself on CPU, so
    each binarized layer keeps one. It is lent to one autograd graph at a time: :meth:`lend`
    returns it, or None while a graph that has not been backpropagated holds it (a layer called
    twice in one forward, e.g. a shared block; a forward with grad enabled that was never
    backpropagated), and the quantizer then allocates. The backward of the graph returns it.
    Never saved, copied or moved with the model (``BinaryLayer.__getstate__`` drops it).
    """

    __slots__ = ("busy", "tensor")

    def __init__(self) -> None:
        self.tensor: Tensor | None = None
        self.busy = False

    def lend(self, like: Tensor, graph: bool) -> Tensor | None:
        """The buffer shaped as ``like`` (re-made on a shape, dtype or device change), marked busy
        when a ``graph`` will hold it; None while it is busy."""
        if self.busy:
            return None
        t = self.tensor
        if t is None or t.shape != like.shape or t.dtype != like.dtype or t.device != like.device:
            t = torch.empty_like(like, requires_grad=False, memory_format=torch.preserve_format)
            self.tensor = t
        self.busy = graph
        return t

    def release(self) -> None:
        """The graph that held the buffer has been backpropagated."""
        self.busy = False


def _lend(buf: WeightBuffer | None, w: Tensor) -> tuple[Tensor | None, WeightBuffer | None]:
    """The buffer's tensor for ``w`` and the buffer to return it to (the backward releases it),
    or ``(None, None)``: no buffer, it is busy, or under ``torch.compile``, where the quantizer
    allocates: dynamo cannot trace ``out=`` into a reused buffer nor the release in a backward
    (a side effect outside the function), and broke the graph at every layer (BC ResNet-20 ran
    2.8x slower compiled than eager); inductor plans the compiled graph's memory itself."""
    if buf is None or torch.compiler.is_compiling():
        return None, None
    t = buf.lend(w, torch.is_grad_enabled() and w.requires_grad)
    return (t, buf) if t is not None else (None, None)


class SignSTE(torch.autograd.Function):
    """Forward ``sign(w)``; backward passes ``g`` unchanged (identity straight-through estimator).

    BinaryConnect, Courbariaux et al. 2015: ``dL/dw = g``. ``out`` is a weight-shaped tensor to
    write the result into (from a :class:`WeightBuffer`, returned to it by the backward), or None.
    """

    @staticmethod
    def forward(
        ctx, w: Tensor, out: Tensor | None = None, buf: WeightBuffer | None = None
    ) -> Tensor:
        ctx.buf = buf
        if out is None:
            return sign(w)
        return sign_into(w, out)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        if ctx.buf is not None:
            ctx.buf.release()
        return g, None, None


class SignMaskedSTE(torch.autograd.Function):
    """Forward ``sign(x)``; backward ``g * 1{|x| <= 1}`` (the hardtanh straight-through estimator).

    BNN, Hubara et al. 2016 (for activations); XNOR-Net, Rastegari et al. 2016 (for weights).
    ``out`` and ``buf`` as in ``SignSTE``.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, out: Tensor | None = None, buf: WeightBuffer | None = None
    ) -> Tensor:
        ctx.save_for_backward(x)
        ctx.buf = buf
        if out is None:
            return sign(x)
        return sign_into(x, out)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        if ctx.buf is not None:
            ctx.buf.release()
        return g * (x.abs() <= 1).to(g.dtype), None, None


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

    def __call__(self, w: Tensor, buf: WeightBuffer | None = None) -> Tensor:
        """Training forward weight (written into ``buf`` when it is free)."""
        return SignSTE.apply(w, *_lend(buf, w))

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)``."""
        return sign(w)


@dataclass(frozen=True)
class SignHtanh:
    """``wb = sign(w)``, ``dL/dw = g * 1{|w| <= 1}`` (hardtanh STE; BWN/XNOR-Net weights)."""

    def __call__(self, w: Tensor, buf: WeightBuffer | None = None) -> Tensor:
        """Training forward weight (written into ``buf`` when it is free)."""
        return SignMaskedSTE.apply(w, *_lend(buf, w))

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)``."""
        return sign(w)


@dataclass(frozen=True)
class StochasticSign:
    """``wb = ±1`` with ``P(+1) = clip((w+1)/2, 0, 1)``, ``dL/dw = g``; deployed as ``sign(w)``."""

    def __call__(self, w: Tensor, buf: WeightBuffer | None = None) -> Tensor:
        """Training forward weight (a fresh draw every call; ``buf`` unused)."""
        return StochasticSignSTE.apply(w)

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)`` (we report the binary model, docs/methods.md#bc)."""
        return sign(w)


@dataclass(frozen=True)
class ActSign:
    """Activation binarizer: ``a_b = sign(a)``, backward ``g * 1{|a| <= 1}`` (BNN, Hubara et al. 2016).

    The same rule holds in training and evaluation.
    """

    def __call__(self, a: Tensor) -> Tensor:
        """Binarize activations (same rule in training and evaluation)."""
        return SignMaskedSTE.apply(a)


class ThresholdSign(torch.nn.Module):
    """Activation binarizer with a learnable threshold per channel: ``a_b = sign(a - tau)``
    (ReActNet's RSign, Liu et al. 2020, arXiv 2003.03488).

    Backward: ``dL/da = g * 1{|a - tau| <= 1}`` and ``dL/dtau = -sum of the same`` (autograd
    through ``a - tau``). It serves inputs that a non-negative producer (ReLU, ReLU6, sigmoid,
    softmax) makes constant under a plain sign: :func:`onebit.convert.binarize_` sets ``tau`` to
    the per-channel mean of an example batch, so the signs split. Packed, the bit is ``a >= tau``.

    Args:
        tau: the thresholds, one per channel.
        dim: the channel dimension of the inputs (1 for convolutions, -1 for linear layers).
    """

    def __init__(self, tau: Tensor, dim: int = -1) -> None:
        super().__init__()
        self.tau = torch.nn.Parameter(tau.detach().clone().float())
        self.dim = dim

    def shift(self, a: Tensor) -> Tensor:
        """``tau`` shaped to broadcast against inputs like ``a``."""
        shape = [1] * a.dim()
        shape[self.dim] = -1
        return self.tau.view(shape)

    def forward(self, a: Tensor) -> Tensor:
        return SignMaskedSTE.apply(a - self.shift(a))

    def extra_repr(self) -> str:
        return f"channels={self.tau.numel()}, dim={self.dim}"


def signswish(x: Tensor, b: float) -> Tensor:
    """SignSwish ``SS_b(x) = 2 sigmoid(bx) (1 + bx (1 - sigmoid(bx))) - 1`` (Darabi et al. 2018).

    A smooth sign that tends to ``sign(x)`` as ``b`` grows; it overshoots to about 1.2 near
    ``x = 2.4 / b`` (so a forward pass with it is not in [-1, 1]). BNN+/BNN++, docs/methods.md#proxconnect-family.
    """
    bx = b * x
    s = torch.sigmoid(bx)
    return 2 * s * (1 + bx * (1 - s)) - 1


def signswish_grad(x: Tensor, b: float) -> Tensor:
    """``d SS_b / dx = b (2 - bx tanh(bx / 2)) / (1 + cosh(bx))``; equals ``b`` at 0, even in ``x``."""
    bx = b * x
    return b * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))


def _layer_unit(w: Tensor) -> Tensor:
    # mean |w| of the layer, detached: the unit in which steepness is measured (see ProxRamp)
    return w.detach().abs().mean().clamp_min(1e-12)


class _RampSTE(torch.autograd.Function):
    """Forward ``clip(mu * w / s, -1, 1)``; backward ``g`` unchanged (B = identity)."""

    @staticmethod
    def forward(ctx, w: Tensor, mu: float, s: Tensor) -> Tensor:
        return (w * (mu / s)).clamp_(-1, 1)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        return g, None, None


class _SignSwishBackward(torch.autograd.Function):
    """Forward ``sign(w)``; backward ``g * SS_mu'(w / s) / s`` (BNN+: B = SignSwish)."""

    @staticmethod
    def forward(ctx, w: Tensor, mu: float, s: Tensor) -> Tensor:
        ctx.save_for_backward(w, s)
        ctx.mu = mu
        return sign(w)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        w, s = ctx.saved_tensors
        return g * signswish_grad(w / s, ctx.mu) / s, None, None


class _SignSwishExact(torch.autograd.Function):
    """Forward ``SS_mu(w / s)``; backward its exact derivative ``g * SS_mu'(w / s) / s`` (BNN++)."""

    @staticmethod
    def forward(ctx, w: Tensor, mu: float, s: Tensor) -> Tensor:
        ctx.save_for_backward(w, s)
        ctx.mu = mu
        return signswish(w / s, mu)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None, None]:
        w, s = ctx.saved_tensors
        return g * signswish_grad(w / s, ctx.mu) / s, None, None


@dataclass(frozen=True)
class ProxRamp:
    """ProxConnect's forward ``F = P_mu``: ``wb = clip(mu * w / s, -1, 1)``, backward identity.

    ``s = mean|w|`` of the layer (detached) measures ``w`` in units of its own magnitude, so one
    steepness schedule fits layers of any fan-in and any initialization (our choice; docs/methods.md
    gives the ramp ``clip(mu * w, -1, 1)`` for weights of unit scale). As ``mu`` grows the ramp
    tends to ``sign``. Deployed: ``sign(w)``.
    """

    mu: float = 1.0

    def __call__(self, w: Tensor, buf: WeightBuffer | None = None) -> Tensor:
        """Training forward weight."""
        return _RampSTE.apply(w, self.mu, _layer_unit(w))

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)``."""
        return sign(w)


@dataclass(frozen=True)
class SignSwishSTE:
    """BNN+: forward ``sign(w)``, backward ``dL/dw = SS_mu'(w / s) / s * g`` (``s`` as ProxRamp)."""

    mu: float = 1.0

    def __call__(self, w: Tensor, buf: WeightBuffer | None = None) -> Tensor:
        """Training forward weight ``sign(w)`` with the SignSwish backward."""
        return _SignSwishBackward.apply(w, self.mu, _layer_unit(w))

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)``."""
        return sign(w)


@dataclass(frozen=True)
class SignSwish:
    """BNN++: forward ``wb = SS_mu(w / s)`` and its exact gradient (``s`` as ProxRamp).

    The training forward overshoots to about ±1.2; deployment and evaluation use ``sign(w)``.
    """

    mu: float = 1.0

    def __call__(self, w: Tensor, buf: WeightBuffer | None = None) -> Tensor:
        """Training forward weight ``SS_mu(w / s)``."""
        return _SignSwishExact.apply(w, self.mu, _layer_unit(w))

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)``."""
        return sign(w)


@dataclass(frozen=True)
class Identity:
    """Training forward ``wb = w`` (gradient at the latent point, ProxQuant); deployed ``sign(w)``."""

    def __call__(self, w: Tensor, buf: WeightBuffer | None = None) -> Tensor:
        """Training forward weight: the latent weight itself."""
        return w

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)``."""
        return sign(w)


def group_clip(w: Tensor, k: float) -> Tensor:
    """``clip(k * w_G / rms(w_G), -1, 1)`` per group ``G`` = output row/filter (GWT, [recon]).

    Differentiable almost everywhere; autograd differentiates through ``rms`` too, so the weights of
    a group are coupled and the gradient is exact (no straight-through estimator).
    """
    rms = w.flatten(1).square().mean(1).add(1e-12).sqrt()
    return (k * w / rms.view(-1, *([1] * (w.dim() - 1)))).clamp(-1, 1)


@dataclass(frozen=True)
class GroupClip:
    """Group weight transformation (Shulman 2021, our reconstruction): ``wb = group_clip(w, k)``.

    Backward: exact autograd of the transformation. Deployed: ``sign(w)``.
    """

    k: float = 2.0

    def __call__(self, w: Tensor, buf: WeightBuffer | None = None) -> Tensor:
        """Training forward weight (relaxed, mostly at ±1)."""
        return group_clip(w, self.k)

    def hard(self, w: Tensor) -> Tensor:
        """Deployed weight ``sign(w)``."""
        return sign(w)


class ScaleRule:
    """How a binarized layer's ``alpha`` is found; ``alpha`` is always detached.

    ``rule(layer)`` is the scale the layer's forward pass multiplies ``q(w)`` by. A rule that is a
    function of the latent weight alone implements :meth:`of`; a rule with state of its own
    (LAB's) registers it on the layer in :meth:`attach_` and reads it in ``__call__``.
    """

    name: ClassVar[str] = ""
    trivial: ClassVar[bool] = False  # alpha = 1: the layer skips the multiply

    def attach_(self, layer: Any) -> None:
        """Give a freshly binarized layer the state this rule keeps (default: none)."""

    def of(self, w: Tensor) -> Tensor:
        """``alpha`` as a function of the latent weight ``w``."""
        raise NotImplementedError(f"scale rule {self.name!r} is not a function of w alone")

    def __call__(self, layer: Any) -> Tensor:
        return self.of(layer.latent())  # output channels first


@dataclass(frozen=True)
class NoScale(ScaleRule):
    """``alpha = 1`` (BinaryConnect, BNN, iterative training)."""

    name: ClassVar[str] = "none"
    trivial: ClassVar[bool] = True

    def of(self, w: Tensor) -> Tensor:
        return torch.ones((), dtype=w.dtype, device=w.device)


@dataclass(frozen=True)
class LayerScale(ScaleRule):
    """``alpha = mean(|w|)`` over the whole tensor (BWN per layer)."""

    name: ClassVar[str] = "layer"

    def of(self, w: Tensor) -> Tensor:
        return w.detach().abs().mean()


@dataclass(frozen=True)
class ChannelScale(ScaleRule):
    """``alpha_o = mean(|w_o|)`` per output channel ``o`` (BWN/XNOR-Net)."""

    name: ClassVar[str] = "channel"

    def of(self, w: Tensor) -> Tensor:
        # (out, ...) -> (out, 1, ..., 1): one alpha per output channel, broadcast over the rest.
        wd = w.detach()
        return wd.abs().flatten(1).mean(1).view(-1, *([1] * (w.dim() - 1)))


SCALES: dict[str, ScaleRule] = {r.name: r for r in (NoScale(), LayerScale(), ChannelScale())}
"""The scale rules a config can name (``method.scale``)."""


def scale_rule(rule: str | ScaleRule) -> ScaleRule:
    """The rule ``rule`` names (``none``, ``layer`` or ``channel``), or ``rule`` itself."""
    if isinstance(rule, ScaleRule):
        return rule
    try:
        return SCALES[rule]
    except KeyError:
        raise OnebitError(f"unknown scale rule {rule!r}; accepted: {', '.join(SCALES)}.") from None


def scale(w: Tensor, rule: str | ScaleRule) -> Tensor:
    """The scale ``alpha`` of latent weight ``w`` under ``rule`` (a rule that is a function of ``w``).

    - ``none``: ``alpha = 1``;
    - ``layer``: ``alpha = mean(|w|)`` over the whole tensor (BWN per layer);
    - ``channel``: ``alpha_o = mean(|w_o|)`` per output channel ``o`` (BWN/XNOR-Net).

    ``alpha`` is computed from ``w.detach()``: no gradient flows through it.
    """
    return scale_rule(rule).of(w)
