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
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from onebit.quantizers import ScaleRule, WeightBuffer, scale_rule

__all__ = [
    "LAYER_KINDS",
    "BinaryConv1d",
    "BinaryConv2d",
    "BinaryEmbedding",
    "BinaryLayer",
    "BinaryLinear",
    "BinaryMultiheadAttention",
    "BinaryTransposedLinear",
    "LayerKind",
    "WeightParametrization",
    "WeightQuantizer",
    "binary_from_float",
    "float_from_binary",
    "is_binary_layer",
    "layer_kind",
    "relaxed",
]


class WeightQuantizer(Protocol):
    """What a layer needs from a weight quantizer: a training forward and a hard (deployed) one.

    ``buf`` is an optional :class:`onebit.quantizers.WeightBuffer` the quantizer may write its
    result into instead of allocating (quantizers are free to ignore it).
    """

    def __call__(self, w: Tensor, buf: WeightBuffer | None = None) -> Tensor: ...

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

    # Where the output channels of ``weight`` are: quantizers, scales and the packer see the
    # weight in its canonical orientation, output channels first (see ``canonical``).
    OUT_AXIS = 0

    def canonical(self, w: Tensor) -> Tensor:
        """``w`` with the output channels first (a view); the identity for most layers."""
        return w if self.OUT_AXIS == 0 else w.transpose(0, self.OUT_AXIS)

    def latent(self) -> Tensor:
        """The latent weight in canonical orientation (output channels first)."""
        return self.canonical(self.weight)

    def alpha(self) -> Tensor:
        """The scale of the binary weight (detached): scalar or one per output channel, shaped to
        broadcast against the canonical weight."""
        return self.scale_rule(self)

    def forward_weight(self, hard: bool | None = None) -> Tensor:
        """The weight the forward pass uses: ``alpha * q(w)`` (training) or ``alpha * sign(w)``,
        in the layer's own orientation.

        With a parametrization, the training latent weight is its output (so gradients reach its
        parameters); evaluation and deployment read ``weight``, which it keeps equal.

        Under ``torch.autocast`` the weight is still computed in fp32 (autocast is turned off
        while it is made: a parametrization's matrix product would otherwise round the latent
        weight, and a sign taken of it); the layer's product then casts the finished
        ``alpha * sign(w)``, whose signs stay exact.
        """
        device_type = self.weight.device.type
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return self._forward_weight(hard)
        return self._forward_weight(hard)

    def _forward_weight(self, hard: bool | None) -> Tensor:
        if hard is None:
            hard = not self.training and not self.relaxed
        p = self.parametrization
        w = p() if p is not None and self.training and not hard else self.weight
        if not self.binary:
            return w
        wc = self.canonical(w)
        wb = self.quantizer.hard(wc) if hard else self.quantizer(wc, self._buffer())
        if not self.scale_rule.trivial:  # skip a useless multiply on the hot path
            wb = wb * self.alpha()
        return self.canonical(wb)  # the transpose is its own inverse

    def _buffer(self) -> WeightBuffer:
        # Not a registered buffer: neither saved, copied nor moved by .to() (re-made on mismatch).
        buf = self.__dict__.get("_wb_buf")
        if buf is None:
            buf = self.__dict__["_wb_buf"] = WeightBuffer()
        return buf

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy and pickle: the forward-weight buffer may hold a tensor of a live graph
        state = dict(self.__dict__)
        state.pop("_wb_buf", None)
        return state

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


class BinaryConv1d(BinaryLayer, nn.Conv1d):
    """``nn.Conv1d`` with binary weights ``alpha * q(w)`` and optionally binary inputs (made from
    a float layer by :func:`binary_from_float`)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.forward_input(x), self.forward_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.binary_extra_repr()}"


class BinaryEmbedding(BinaryLayer, nn.Embedding):
    """``nn.Embedding`` whose table is ``alpha * q(w)`` (one alpha per row under a channel scale);
    its input is token ids, so it never binarizes activations."""

    def forward(self, x: Tensor) -> Tensor:
        return F.embedding(
            x,
            self.forward_weight(),
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.binary_extra_repr()}"


class BinaryTransposedLinear(BinaryLayer, nn.Module):
    """A linear layer whose weight is stored ``(in, out)``: ``y = x @ W + b`` (Hugging Face's
    ``Conv1D``, used by GPT-2). Output channels are axis 1 of ``weight``; quantizers and scales
    see ``W^T``. The layer keeps its class's attributes (``nf``, ``nx``) and state-dict keys."""

    OUT_AXIS = 1

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_input(x)
        w = self.forward_weight()
        y = torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), w)
        return y.view(*x.shape[:-1], w.shape[1])

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[0]}, out={self.weight.shape[1]}, {self.binary_extra_repr()}"


@contextlib.contextmanager
def _swapped(module: nn.Module, name: str, value: Tensor) -> Iterator[None]:
    """Within the block, ``module.<name>`` reads ``value`` instead of its Parameter."""
    param = module._parameters.pop(name)
    object.__setattr__(module, name, value)
    try:
        yield
    finally:
        object.__delattr__(module, name)
        module._parameters[name] = param


class BinaryMultiheadAttention(BinaryLayer, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with its packed input projection ``in_proj_weight`` (q, k and v
    stacked, ``(3E, E)``) binary, and its ``out_proj`` binary when that is a binary layer too.

    ``nn.MultiheadAttention`` reads both matrices directly (not through ``out_proj.forward``), so
    the forward pass runs torch's own forward with them replaced by their forward weights; its
    inputs ``query``, ``key``, ``value`` pass the activation binarizer. The input of ``out_proj``
    (the attention output, computed inside torch's forward) stays real.
    """

    @property
    def weight(self) -> nn.Parameter:  # type: ignore[override]
        """The latent of the input projection (``in_proj_weight``)."""
        return self.in_proj_weight

    def forward(self, query: Tensor, key: Tensor, value: Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.act is not None and self.binary:
            same_kv, same_qk = key is value, query is key
            query = self.forward_input(query)
            key = query if same_qk else self.forward_input(key)
            value = key if same_kv else self.forward_input(value)
        w_in = self.forward_weight()
        out = self.out_proj
        w_out = out.forward_weight() if is_binary_layer(out) else out.weight
        with _swapped(self, "in_proj_weight", w_in), _swapped(out, "weight", w_out):
            return nn.MultiheadAttention.forward(self, query, key, value, *args, **kwargs)


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


@dataclass(frozen=True)
class LayerKind:
    """A float layer type onebit binarizes, and its binarized class.

    ``matches(m)`` says whether module ``m`` is of this kind; the binarized layer is ``m`` itself
    retyped to ``binary`` (same parameters, buffers, hooks and attributes), so state-dict keys do
    not change.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    binary: type


def _exact(cls: type) -> Callable[[nn.Module], bool]:
    # a subclass with a forward of its own computes something else: not this kind
    return lambda m: isinstance(m, cls) and type(m).forward is cls.forward


def _hf_conv1d(m: nn.Module) -> bool:
    # Hugging Face's Conv1D (GPT-2): a linear layer with its weight stored (in, out)
    t = type(m)
    return (
        t.__name__ == "Conv1D"
        and t.__module__.startswith("transformers")
        and isinstance(getattr(m, "weight", None), nn.Parameter)
        and m.weight.dim() == 2
        and getattr(m, "nf", None) == m.weight.shape[1]
    )


LAYER_KINDS: tuple[LayerKind, ...] = (
    LayerKind("Linear", _exact(nn.Linear), BinaryLinear),
    LayerKind("Conv2d", _exact(nn.Conv2d), BinaryConv2d),
    LayerKind("Conv1d", _exact(nn.Conv1d), BinaryConv1d),
    LayerKind("Conv1D (transformers)", _hf_conv1d, BinaryTransposedLinear),
    LayerKind("Embedding", _exact(nn.Embedding), BinaryEmbedding),
    LayerKind("MultiheadAttention", _exact(nn.MultiheadAttention), BinaryMultiheadAttention),
)
"""Every layer type :func:`binary_from_float` accepts, in the order they are tried."""


def layer_kind(m: nn.Module) -> LayerKind | None:
    """The :data:`LAYER_KINDS` entry of float layer ``m`` (None: not a binarizable type)."""
    return next((k for k in LAYER_KINDS if k.matches(m)), None)


def _retype(m: nn.Module, cls: type) -> nn.Module:
    """``m`` as an instance of ``cls``: a new object sharing its parameters, buffers, children
    and attributes (the containers are copied, so the two can diverge afterwards)."""
    new = cls.__new__(cls)
    state = dict(m.__dict__)
    for k, v in state.items():
        if isinstance(v, dict | set):  # _parameters, _buffers, _modules, hooks, ...
            state[k] = type(v)(v) if not isinstance(v, dict) else v.copy()
    state.pop("_wb_buf", None)
    new.__dict__.update(state)
    return new


def _no_fast_path(module: nn.Module, args: Any) -> None:
    """A forward pre-hook that does nothing: torch's fused Transformer fast paths read layer
    weights directly and are disabled while a submodule carries a hook, so they never run the
    latent float weights of a binary layer."""


def binary_from_float(
    m: nn.Module,
    quantizer: WeightQuantizer,
    scale: str | ScaleRule,
    act: Callable[[Tensor], Tensor] | None,
) -> BinaryLayer:
    """A binarized copy of float layer ``m`` (a :data:`LAYER_KINDS` type) that shares its
    parameters; the scale rule is attached after, so state it registers is made from the real
    weight.

    Raises:
        TypeError: ``m`` is not of a binarizable type.
    """
    kind = layer_kind(m)
    if kind is None:
        raise TypeError(f"cannot binarize {type(m).__name__}")
    new = _retype(m, kind.binary)
    new.float_type = type(m)
    new._init_binary(quantizer, scale, act)
    new.register_forward_pre_hook(_no_fast_path)
    return new


def float_from_binary(m: BinaryLayer) -> nn.Module:
    """The float layer sharing the parameters of binarized layer ``m`` (its original type)."""
    cls = m.__dict__.get("float_type") or next(
        c
        for c in type(m).__mro__[1:]
        if issubclass(c, nn.Module) and not issubclass(c, BinaryLayer)
    )
    new = _retype(m, cls)
    for k in ("quantizer", "scale_rule", "act", "binary", "relaxed", "float_type"):
        new.__dict__.pop(k, None)
    new._modules.pop(BinaryLayer.PARAMETRIZATION, None)
    new._forward_pre_hooks = type(new._forward_pre_hooks)(
        (k, h) for k, h in new._forward_pre_hooks.items() if h is not _no_fast_path
    )
    return new
