"""What one forward pass of an example input says about a model: its data flow between layers, and
the inputs its layers see.

:func:`data_flow` runs the model once under a ``TorchFunctionMode`` that tags every tensor with
where it came from: the network input, or the last layer (of the ones asked about) it passed
through. Every torch operation's result carries the union of its inputs' tags, and a watched
layer's output carries that layer alone. So:

- the *first* layers are those whose input is tagged with the network input alone (the layers that
  read the data before any other watched layer; several when they read the same tensor, as a
  transformer's q, k, v projections do; a residual stream that also carries the input does not
  make a later layer first);
- the *last* layers are those the network output is tagged with (the layer that writes the
  logits).

That is the data flow, not the registration order: it holds for models written by anyone.
:func:`layer_inputs` records each watched layer's input and the module that produced it.
Both run in eval mode without gradients (no BatchNorm statistics move, no random number is drawn)
and restore the model's mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "INPUT",
    "DataFlow",
    "LayerInput",
    "data_flow",
    "first_tensor",
    "layer_inputs",
    "watch_inputs",
]

INPUT = "<input>"
"""The tag of tensors derived from the network input without passing a watched layer."""


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _tensors(v)
    elif hasattr(obj, "to_tuple"):  # a Hugging Face ModelOutput
        yield from _tensors(obj.to_tuple())


def first_tensor(out: Any) -> Tensor | None:
    """The tensor a model's output stands for: itself, its ``logits`` entry (dicts, Hugging Face
    ``ModelOutput``), or the first tensor of a tuple/list; None when it holds none."""
    if isinstance(out, Tensor):
        return out
    logits = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    return next(_tensors(out), None)


class _Tags(TorchFunctionMode):
    """Propagates tags (sets of source names) from the inputs of every torch call to its result."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, frozenset[str]] = {}
        self.alive: list[Tensor] = []  # keeps tagged tensors alive, so their ids stay theirs

    def of(self, obj: Any) -> frozenset[str]:
        out: frozenset[str] = frozenset()
        for t in _tensors(obj):
            out |= self.tags.get(id(t), frozenset())
        return out

    def set(self, obj: Any, tags: frozenset[str]) -> None:
        for t in _tensors(obj):
            self.tags[id(t)] = tags
            self.alive.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tags = self.of(args) | self.of(kwargs)  # an in-place op's result is among its args
        if tags:
            self.set(out, tags)
        return out


@dataclass
class DataFlow:
    """What :func:`data_flow` found.

    Attributes:
        first: watched layers whose input comes from the network input and no other watched layer.
        last: watched layers the network output comes from.
        reached: watched layers the example input ran through.
    """

    first: set[str] = field(default_factory=set)
    last: set[str] = field(default_factory=set)
    reached: set[str] = field(default_factory=set)


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, t in was.items():
            m.train(t)


def _call(model: nn.Module, example: Sequence[Any] | Mapping[str, Any]) -> Any:
    if isinstance(example, Mapping):
        return model(**example)
    return model(*example)


def data_flow(
    model: nn.Module, example: Sequence[Any] | Mapping[str, Any], watch: Mapping[str, nn.Module]
) -> DataFlow:
    """Run ``model`` on ``example`` (positional inputs, or keyword inputs) and find the first and
    last of the ``watch`` layers (name -> module) in its data flow (module doc)."""
    mode = _Tags()
    flow = DataFlow()
    hooks = []
    for name, m in watch.items():

        def pre(mod: nn.Module, args: Any, kwargs: Any, name: str = name) -> None:
            flow.reached.add(name)
            if mode.of(args) | mode.of(kwargs) == {INPUT}:
                flow.first.add(name)

        def post(mod: nn.Module, args: Any, kwargs: Any, out: Any, name: str = name) -> None:
            mode.set(out, frozenset({name}))

        hooks.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        with _evaluating(model):
            mode.set(example, frozenset({INPUT}))
            with mode:
                out = _call(model, example)
            flow.last = set(mode.of(first_tensor(out))) - {INPUT}
    finally:
        for h in hooks:
            h.remove()
    return flow


@dataclass
class LayerInput:
    """A watched layer's input on the example (its first call) and who produced it.

    Attributes:
        x: the input tensor (the first positional argument).
        producer: the name of the leaf module whose output it is, or None (a functional op).
    """

    x: Tensor
    producer: str | None


def watch_inputs(
    model: nn.Module,
    example: Sequence[Any] | Mapping[str, Any],
    watch: Mapping[str, nn.Module],
    see: Callable[[str, LayerInput], None],
) -> None:
    """Run ``model`` on ``example`` and call ``see(name, input)`` at each ``watch`` layer's first
    call, just before the layer runs: a change ``see`` makes to that layer (its activation
    binarizer) already acts on this pass, so later layers see its effect."""
    made_by: dict[int, str] = {}
    keep: list[Any] = []
    done: set[str] = set()
    hooks = []
    watched = {id(m) for m in watch.values()}
    for name, m in model.named_modules():
        if id(m) in watched or next(m.children(), None) is not None:
            continue

        def post(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
            for t in _tensors(out):
                made_by[id(t)] = name
                keep.append(t)

        hooks.append(m.register_forward_hook(post))
    for name, m in watch.items():

        def pre(mod: nn.Module, args: Any, name: str = name) -> None:
            x = next(_tensors(args), None)
            if x is not None and name not in done:
                done.add(name)
                see(name, LayerInput(x, made_by.get(id(x))))

        hooks.append(m.register_forward_pre_hook(pre))
    try:
        with _evaluating(model):
            _call(model, example)
    finally:
        for h in hooks:
            h.remove()


def layer_inputs(
    model: nn.Module, example: Sequence[Any] | Mapping[str, Any], watch: Mapping[str, nn.Module]
) -> dict[str, LayerInput]:
    """The input of each ``watch`` layer on ``example``, with the leaf module that produced it."""
    seen: dict[str, LayerInput] = {}
    watch_inputs(model, example, watch, seen.__setitem__)
    return seen
