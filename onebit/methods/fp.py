"""Full precision: the twin every binary method is compared against."""

from __future__ import annotations

from dataclasses import dataclass

from onebit.methods.base import Method


@dataclass(frozen=True)
class FullPrecision(Method):
    """No binarization: float weights and activations, trained with the same recipe.

    Forward ``y = W x``; backward the ordinary gradient.
    """

    name = "fp"
    title = "Full precision"
    paper = "-"
