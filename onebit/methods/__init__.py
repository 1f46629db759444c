"""Binarization methods, one file each, registered by name in ``METHODS``."""

from __future__ import annotations

from onebit.errors import OnebitError
from onebit.methods.base import Method, clip_latent_
from onebit.methods.bc import BinaryConnect
from onebit.methods.bitat import BiTAT, BiTATProgressive, XNORFromFP
from onebit.methods.bnn import BNN
from onebit.methods.bwn import BWN
from onebit.methods.fp import FullPrecision
from onebit.methods.gwt import GWT
from onebit.methods.iterative import (
    IterativeAll,
    IterativeBinarization,
    IterativeRandom,
    IterativeReverse,
    IterativeSensitivityAscending,
    IterativeSensitivityDescending,
)
from onebit.methods.lab import LAB, LAB2, LABOptimizer
from onebit.methods.proxconnect import BNNPlus, BNNPlusPlus, ProxConnect
from onebit.methods.proxquant import ProxQuant
from onebit.methods.xnor import XNORNet

__all__ = [
    "BNN",
    "BWN",
    "GWT",
    "LAB",
    "LAB2",
    "METHODS",
    "BNNPlus",
    "BNNPlusPlus",
    "BiTAT",
    "BiTATProgressive",
    "BinaryConnect",
    "FullPrecision",
    "IterativeAll",
    "IterativeBinarization",
    "IterativeRandom",
    "IterativeReverse",
    "IterativeSensitivityAscending",
    "IterativeSensitivityDescending",
    "LABOptimizer",
    "Method",
    "ProxConnect",
    "ProxQuant",
    "XNORFromFP",
    "XNORNet",
    "clip_latent_",
    "method_class",
]

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        FullPrecision,
        BinaryConnect,
        BWN,
        BNN,
        XNORNet,
        ProxConnect,
        BNNPlus,
        BNNPlusPlus,
        ProxQuant,
        LAB,
        LAB2,
        GWT,
        IterativeAll,
        IterativeBinarization,
        IterativeReverse,
        IterativeRandom,
        IterativeSensitivityAscending,
        IterativeSensitivityDescending,
        BiTAT,
        BiTATProgressive,
        XNORFromFP,
    )
}


def method_class(name: str) -> type[Method]:
    """The method class registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise OnebitError(f"unknown method {name!r}; accepted: {', '.join(METHODS)}.") from None
