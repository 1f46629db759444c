"""Binarization methods, one file each, and the registry ``METHODS`` of the names users type.

A registry row is a :class:`Preset`: a method class and the option defaults its name stands for
(``iterative-reverse`` is :class:`IterativeBinarization` with ``order = "reverse"``), with the
title users see. ``METHODS[name](**options)`` builds the method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onebit.errors import OnebitError
from onebit.methods.base import Method, clip_latent_
from onebit.methods.bc import BinaryConnect
from onebit.methods.bitat import BiTAT
from onebit.methods.bnn import BNN
from onebit.methods.bwn import BWN
from onebit.methods.fp import FullPrecision
from onebit.methods.gwt import GWT
from onebit.methods.iterative import IterativeBinarization
from onebit.methods.lab import LAB, LABOptimizer
from onebit.methods.proxconnect import BNNPlus, BNNPlusPlus, ProxConnect
from onebit.methods.proxquant import ProxQuant
from onebit.methods.xnor import XNORNet

__all__ = [
    "BNN",
    "BWN",
    "GWT",
    "LAB",
    "METHODS",
    "BNNPlus",
    "BNNPlusPlus",
    "BiTAT",
    "BinaryConnect",
    "FullPrecision",
    "IterativeBinarization",
    "LABOptimizer",
    "Method",
    "Preset",
    "ProxConnect",
    "ProxQuant",
    "XNORNet",
    "build_method",
    "clip_latent_",
    "method_preset",
]


@dataclass(frozen=True)
class Preset:
    """A registry row: ``cls`` with option ``defaults``; calling it builds the method.

    Attributes:
        cls: the method class.
        defaults: options this name sets (the caller's options override them).
        title: what users see (default: the class's title).
        reconstruction: whether the name is our reconstruction (default: the class's flag).
    """

    cls: type[Method]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    title: str = ""
    reconstruction: bool | None = None

    def __call__(self, **options: Any) -> Method:
        return self.cls(**{**self.defaults, **options})

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.cls.title)
        if self.reconstruction is None:
            object.__setattr__(self, "reconstruction", self.cls.reconstruction)

    @property
    def paper(self) -> str:
        """The citation."""
        return self.cls.paper

    def options(self) -> list[str]:
        """The option names a config may set (the class's fields)."""
        return [f.name for f in dataclasses.fields(self.cls)]


def _it(order: str, title: str, **extra: Any) -> Preset:
    return Preset(IterativeBinarization, {"order": order, **extra}, title)


def _bitat(title: str, reconstruction: bool, **defaults: Any) -> Preset:
    return Preset(BiTAT, defaults, title, reconstruction)


METHODS: dict[str, Preset | type[Method]] = {
    "fp": Preset(FullPrecision),
    "bc": Preset(BinaryConnect),
    "bwn": Preset(BWN),
    "bnn": Preset(BNN),
    "xnor": Preset(XNORNet),
    "pc": Preset(ProxConnect),
    "bnn+": Preset(BNNPlus),
    "bnn++": Preset(BNNPlusPlus),
    "proxquant": Preset(ProxQuant),
    "lab": Preset(LAB),
    "lab2": Preset(LAB, {"binary_acts": True}, "LAB2 (loss-aware, binary activations)"),
    "gwt": Preset(GWT),
    "iterative-all": Preset(
        IterativeBinarization,
        {"epochs_per_layer": 0.0},
        "All binary from the start (iterative training's baseline)",
    ),
    "iterative": _it("forward", "Iterative training, forward order"),
    "iterative-reverse": _it("reverse", "Iterative training, reverse order"),
    "iterative-random": _it("random", "Iterative training, random order"),
    "iterative-sens-asc": _it(
        "sensitivity-ascending", "Iterative training, sensitivity-guided (least sensitive first)"
    ),
    "iterative-sens-desc": _it(
        "sensitivity-descending", "Iterative training, sensitivity-guided (most sensitive first)"
    ),
    "bitat": Preset(BiTAT),
    "bitat-progressive": _bitat(
        "BiTAT progressive order alone, no transformation (reconstruction)", True, transform=False
    ),
    "xnor-ft": _bitat(
        "XNOR-Net from the full-precision start (BiTAT baseline)",
        False,
        transform=False,
        progressive=False,
    ),
}
"""name -> registry row, in the order tables list them (``fp`` first)."""


def method_preset(name: str) -> Preset:
    """The registry row of ``name`` (a bare method class registered directly counts as a row
    with no defaults)."""
    try:
        entry = METHODS[name]
    except KeyError:
        raise OnebitError(f"unknown method {name!r}; accepted: {', '.join(METHODS)}.") from None
    return entry if isinstance(entry, Preset) else Preset(entry)


def build_method(name: str, **options: Any) -> Method:
    """The method ``name`` with ``options`` (unknown options raise one sentence)."""
    row = method_preset(name)
    accepted = row.options()
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise OnebitError(
            f"unknown key method.{unknown[0]} for method {name!r}; accepted: name, "
            f"{', '.join(sorted(accepted))}."
        )
    return row(**options)
