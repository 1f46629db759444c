"""Binarized layers: subclasses of the torch layers whose ``weight`` stays the latent float weight.

Forward (training): ``y = layer(a(x), alpha * q(w))`` where ``q`` is the method's weight quantizer
(carrying its backward rule), ``alpha = scale(w, rule)`` (detached) and ``a`` the optional activation
binarizer. Forward (eval): the same with ``q.hard(w) = sign(w)``, so evaluation always measures the
hard-binarized model a user deploys. With ``binary = False`` the layer acts as its float parent
(used by layer-by-layer schedules).

What a method plugs into a layer is declared here and nowhere else: the weight quantizer, the
scale rule (:class:`onebit.quantizers.ScaleRule`, which may own a buffer on the layer), the
activation binarizer, and optionally a :class:`WeightParametrization` (a trainable transform that
produces the latent weight in training, e.g. BiTAT's). The layer knows no method by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from onebit.quantizers import NoScale, ScaleRule, scale_rule

__all__ = [
    "BinaryConv2d",
    "BinaryLayer",
    "BinaryLinear",
    "WeightParametrization",
    "WeightQuantizer",
    "is_binary_layer",
    "relaxed",
]


class WeightQuantizer(Protocol):
    """What a layer needs from a weight quantizer: a training forward and a hard (deployed) one.

    ``buf`` is an optional one-element list with a weight-shaped tensor the quantizer may write
    its result into instead of allocating (quantizers free to ignore it).
    """

    def __call__(self, w: Tensor, buf: list[Tensor] | None = None) -> Tensor: ...

    def hard(self, w: Tensor) -> Tensor: ...


class WeightParametrization(nn.Module):
    """A trainable transform whose output is a binarized layer's latent weight during training.

    The layer's own ``weight`` is kept equal to the transform's output after every optimizer step
    (:meth:`step_`), so evaluation, checkpoints' ``weight`` entries, packing and export see an
    ordinary binary layer; the transform's tensors are training state only (not deployed, left out
    of :func:`onebit.convert.summary`). A subclass implements:

    - ``forward() -> Tensor``: the latent weight ``W`` (the shape of ``weight``), differentiable in
      the transform's parameters;
    - :meth:`observe`: see the layer's (possibly binarized) input in training (default: ignore);
    - :meth:`reset_`: set its parameters so that ``forward()`` equals a given weight;
    - :meth:`step_`: after an optimizer step, update its own state and write ``W`` into ``weight``.
    """

    def observe(self, layer: nn.Module, x: Tensor) -> None:
        """See the input batch ``x`` of ``layer`` (training only); default: nothing."""

    def reset_(self, weight: Tensor) -> None:
        """Make ``forward()`` equal ``weight`` (after weights were loaded into the layer)."""
        raise NotImplementedError

    def step_(self, weight: Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """After an optimizer step: update and write ``W`` into ``weight`` (default: just write).

        ``optimizer`` is the one that stepped, for transforms whose update invalidates its state.
        """
        with torch.no_grad():
            weight.copy_(self())


class BinaryLayer:
    """Shared behaviour of the binarized layers (a mixin over ``nn.Linear`` / ``nn.Conv2d``).

    Attributes:
        quantizer: the training forward weight and its backward rule; ``hard`` for evaluation.
        scale_rule: gives ``alpha`` (``alpha()``).
        act: binarizer of the layer's input activations, or None.
        binary: False makes the layer act as its float parent (layer-by-layer schedules).
        relaxed: in eval mode, use the training forward weight ``q(w)`` instead of ``sign(w)``
            (set by :func:`relaxed` to measure a relaxed model; off otherwise).
    """

    weight: nn.Parameter
    training: bool
    quantizer: WeightQuantizer
    scale_rule: ScaleRule
    act: Callable[[Tensor], Tensor] | None
    binary: bool
    relaxed: bool
    _modules: dict[str, Any]

    PARAMETRIZATION = "reparam"  # the child module's name (checkpoint keys ``<layer>.reparam.*``)

    def _init_binary(
        self,
        quantizer: WeightQuantizer,
        scale: str | ScaleRule = "none",
        act: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.quantizer = quantizer
        self.scale_rule = scale_rule(scale)
        self.act = act
        self.binary = True
        self.relaxed = False
        self.scale_rule.attach_(self)

    @property
    def parametrization(self) -> WeightParametrization | None:
        """The layer's :class:`WeightParametrization`, or None."""
        return self._modules.get(self.PARAMETRIZATION)

    def parametrize_(self, p: WeightParametrization) -> WeightParametrization:
        """Attach ``p``: in training the latent weight becomes ``p()``, and ``weight`` itself is no
        longer trained directly (``p.step_`` keeps it equal to ``p()``)."""
        self._modules[self.PARAMETRIZATION] = p
        self.weight.requires_grad_(False)
        return p

    def alpha(self) -> Tensor:
        """The scale of the binary weight (detached): scalar or one per output channel."""
        return self.scale_rule(self)

    def forward_weight(self, hard: bool | None = None) -> Tensor:
        """The weight the forward pass uses: ``alpha * q(w)`` (training) or ``alpha * sign(w)``.

        With a parametrization, the training latent weight is its output (so gradients reach its
        parameters); evaluation and deployment read ``weight``, which it keeps equal.
        """
        if hard is None:
            hard = not self.training and not self.relaxed
        p = self.parametrization
        w = p() if p is not None and self.training and not hard else self.weight
        if not self.binary:
            return w
        wb = self.quantizer.hard(w) if hard else self.quantizer(w, self._buffer_for(w))
        if self.scale_rule.trivial:  # skip a useless multiply on the hot path
            return wb
        return wb * self.alpha()

    def _buffer_for(self, w: Tensor) -> list[Tensor]:
        # A per-layer tensor the training forward weight is written into (see SignSTE); not a
        # registered buffer, so it is neither saved nor moved by .to() (re-created on mismatch).
        buf = self.__dict__.get("_wb_buf")
        if (
            buf is None
            or buf[0].shape != w.shape
            or buf[0].dtype != w.dtype
            or buf[0].device != w.device
        ):
            buf = [torch.empty_like(w, requires_grad=False, memory_format=torch.preserve_format)]
            self.__dict__["_wb_buf"] = buf
        return buf

    def forward_input(self, x: Tensor) -> Tensor:
        """Binarize the input activations when the layer has an activation binarizer (and let the
        parametrization observe the input the weight sees, in training)."""
        if self.act is not None and self.binary:
            x = self.act(x)
        p = self.parametrization
        if p is not None and self.training:
            p.observe(self, x)
        return x

    def binary_extra_repr(self) -> str:
        """Extra text for ``repr``."""
        act = type(self.act).__name__ if self.act is not None else None
        return f"quantizer={type(self.quantizer).__name__}, scale={self.scale_rule.name}, act={act}"


class BinaryLinear(BinaryLayer, nn.Linear):
    """``nn.Linear`` with binary weights ``alpha * q(w)`` and optionally binary inputs."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        quantizer: WeightQuantizer,
        scale_rule: str | ScaleRule = "none",
        act: Callable[[Tensor], Tensor] | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_binary(quantizer, scale_rule, act)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.forward_input(x), self.forward_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.binary_extra_repr()}"


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    """``nn.Conv2d`` with binary weights ``alpha * q(w)`` and optionally binary inputs."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        quantizer: WeightQuantizer,
        scale_rule: str | ScaleRule = "none",
        act: Callable[[Tensor], Tensor] | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        self._init_binary(quantizer, scale_rule, act)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.forward_input(x), self.forward_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.binary_extra_repr()}"


@contextlib.contextmanager
def relaxed(model: nn.Module) -> Iterator[nn.Module]:
    """Within this context, binary layers in eval mode use the training forward weight ``q(w)``.

    Evaluates the relaxed model of methods whose training weight is not yet ``sign(w)`` (GWT,
    ProxConnect, BNN++); outside it evaluation always uses the hard-binarized weight.
    """
    layers = [m for m in model.modules() if is_binary_layer(m)]
    for m in layers:
        m.relaxed = True
    try:
        yield model
    finally:
        for m in layers:
            m.relaxed = False


def is_binary_layer(m: nn.Module) -> bool:
    """True for onebit's binarized layers."""
    return isinstance(m, BinaryLayer)


def binary_from_float(
    m: nn.Module,
    quantizer: WeightQuantizer,
    scale: str | ScaleRule,
    act: Callable[[Tensor], Tensor] | None,
) -> BinaryLinear | BinaryConv2d:
    """A binarized copy of ``m`` (``nn.Linear`` or ``nn.Conv2d``) that shares its parameters.

    The scale rule is attached after the parameters are shared, so state it registers (a
    buffer) is made from the real weight.
    """
    kw = {"quantizer": quantizer, "scale_rule": NoScale(), "act": act}
    with torch.device("meta"):  # no allocation: the parameters are replaced by m's below
        if isinstance(m, nn.Linear):
            new: BinaryLinear | BinaryConv2d = BinaryLinear(
                m.in_features, m.out_features, m.bias is not None, **kw
            )
        elif isinstance(m, nn.Conv2d):
            new = BinaryConv2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.groups,
                m.bias is not None,
                m.padding_mode,
                **kw,
            )
        else:
            raise TypeError(f"cannot binarize {type(m).__name__}")
    new.weight = m.weight
    new.bias = m.bias
    new.scale_rule = scale_rule(scale)
    new.scale_rule.attach_(new)
    new.train(m.training)
    return new


def float_from_binary(m: BinaryLinear | BinaryConv2d) -> nn.Linear | nn.Conv2d:
    """The plain torch layer sharing the parameters of binarized layer ``m``."""
    with torch.device("meta"):
        if isinstance(m, BinaryLinear):
            new: nn.Linear | nn.Conv2d = nn.Linear(
                m.in_features, m.out_features, m.bias is not None
            )
        else:
            new = nn.Conv2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.groups,
                m.bias is not None,
                m.padding_mode,
            )
    new.weight = m.weight
    new.bias = m.bias
    new.train(m.training)
    return new
