"""Layer-by-layer binarization schedules: which layers are binary at each point of training.

Iterative training (Lan 2021, arXiv 2111.07046, docs/methods.md#iterative) binarizes layers one at a
time and keeps them binary. With ``order`` a list of layer names and ``E = epochs_per_layer``,
before epoch ``e`` (0-based) layer ``order[floor(e / E)]`` switches to binary, so

- the first layer of the order is binary from the first epoch,
- ``order[:floor(e / E) + 1]`` are binary during epoch ``e``,
- with ``N`` layers and ``N * E`` epochs, the last ``E`` epochs train the fully binary net.

Layers that the order does not list never become binary (a sensitivity probe lists one layer).
``E`` may be fractional (several layers switch at one epoch boundary: short budgets, BiTAT's
bottom-up schedule); ``E <= 0`` makes every listed layer binary from the start.

Everything here is a pure function of the layer names and the progress, except :func:`apply`,
which writes a mask into a model's ``BinaryLayer.binary`` flags, and the ranking file's reader
and writer. Orders:

- ``forward``: the network's layer order (input to output; "bottom-up");
- ``reverse``: output to input;
- ``random``: a permutation drawn from ``random.Random(seed)`` (the same on every platform);
- an explicit list of layer names (a subset is allowed);
- ``sensitivity-ascending`` / ``sensitivity-descending``: from a sensitivity ranking file (see
  :class:`Ranking`). The *sensitivity* of layer ``k`` is how much validation accuracy drops when
  ``k`` alone is binary, so ascending sensitivity binarizes the layer whose probe kept the
  *highest* accuracy first, and descending the one with the *lowest* accuracy first.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from onebit.errors import OnebitError
from onebit.fileio import atomic_write
from onebit.layers import is_binary_layer

__all__ = [
    "ORDERS",
    "RANKING_FORMAT",
    "Ranking",
    "apply",
    "apply_progressive",
    "auto_epochs_per_layer",
    "binary_count",
    "binary_mask",
    "is_partial",
    "read_ranking",
    "resolve_order",
    "schedulable_layers",
    "write_ranking",
]

ORDERS = ("forward", "reverse", "random", "sensitivity-ascending", "sensitivity-descending")
"""The named orders; an explicit list of layer names is the other accepted form."""

RANKING_FORMAT = "onebit-sensitivity"
_EPS = 1e-9  # so that e / E lands on the integer it means when E is a float such as 0.9


def binary_count(n_layers: int, epoch: int, epochs_per_layer: float) -> int:
    """How many layers of the order are binary during ``epoch``: ``min(n, floor(e / E) + 1)``.

    ``E <= 0`` means all of them from the start.
    """
    if n_layers <= 0:
        return 0
    if epochs_per_layer <= 0:
        return n_layers
    return min(n_layers, math.floor(epoch / epochs_per_layer + _EPS) + 1)


def auto_epochs_per_layer(n_layers: int, epochs: int) -> float:
    """``E`` that ends with the whole order binary: ``epochs // n`` when ``epochs >= n`` (the paper's
    integer rule: the last ``E`` epochs train the fully binary net), else ``(epochs - 1) / (n - 1)``
    (several layers per epoch; the last epoch is fully binary)."""
    if n_layers <= 1:
        return float(max(epochs, 1))
    if epochs >= n_layers:
        return float(epochs // n_layers)
    return (epochs - 1) / (n_layers - 1)


def binary_mask(
    names: Sequence[str], order: Sequence[str], epoch: int, epochs_per_layer: float
) -> dict[str, bool]:
    """``name -> binary?`` during ``epoch``: the first :func:`binary_count` layers of ``order``."""
    on = set(order[: binary_count(len(order), epoch, epochs_per_layer)])
    return {n: n in on for n in names}


@dataclass(frozen=True)
class Ranking:
    """A sensitivity ranking: per layer (in network order), the validation accuracy of the net in
    which only that layer was binary (Lan 2021's sensitivity pre-training).

    Attributes:
        layers: ``(name, val_acc)`` in network order.
        epochs_per_layer: epochs each probe trained.
        extra: anything else the file holds (test accuracies, the config, run folders).
    """

    layers: tuple[tuple[str, float], ...]
    epochs_per_layer: int = 0
    extra: Mapping[str, Any] | None = None

    @property
    def names(self) -> list[str]:
        """Layer names in network order."""
        return [n for n, _ in self.layers]

    def order(self, ascending: bool = True) -> list[str]:
        """Layers by ascending sensitivity (highest probe accuracy first) or descending (lowest
        first); ties keep the network order."""
        idx = sorted(
            range(len(self.layers)),
            key=lambda i: (-self.layers[i][1] if ascending else self.layers[i][1], i),
        )
        return [self.layers[i][0] for i in idx]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``onebit.experiments.report`` reads ``layers[].name`` and ``layers[].val_acc``)."""
        extra = dict(self.extra or {})
        per_layer = extra.pop("per_layer", {})
        return {
            "format": RANKING_FORMAT,
            "version": 1,
            "metric": "val_acc",
            "epochs_per_layer": self.epochs_per_layer,
            "layers": [{"name": n, "val_acc": a, **per_layer.get(n, {})} for n, a in self.layers],
            "ascending": self.order(True),
            "descending": self.order(False),
            **extra,
        }


def write_ranking(path: str | Path, ranking: Ranking) -> Path:
    """Write ``ranking`` as JSON atomically (temporary name, then rename); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(p, json.dumps(ranking.to_dict(), indent=2) + "\n")


def read_ranking(path: str | Path) -> Ranking:
    """Read a ranking file written by :func:`write_ranking` (``onebit sensitivity``).

    Raises:
        OnebitError: the file is missing or is not a ranking file.
    """
    p = Path(path)
    if not p.is_file():
        raise OnebitError(
            f"sensitivity ranking {p} does not exist; make it with `onebit sensitivity CONFIG`."
        )
    try:
        doc = json.loads(p.read_text())
        layers = tuple((str(x["name"]), float(x["val_acc"])) for x in doc["layers"])
    except (ValueError, KeyError, TypeError):
        raise OnebitError(
            f"{p} is not a sensitivity ranking file ({{layers: [{{name, val_acc}}]}})."
        ) from None
    if not layers or len({n for n, _ in layers}) != len(layers):
        raise OnebitError(f"{p} lists no layers, or a layer twice.")
    extra = {k: v for k, v in doc.items() if k not in ("layers", "epochs_per_layer")}
    return Ranking(layers, int(doc.get("epochs_per_layer", 0)), extra)


def resolve_order(
    order: str | Sequence[str],
    names: Sequence[str],
    *,
    seed: int = 0,
    ranking: Ranking | str | Path | None = None,
) -> list[str]:
    """The list of layer names that ``order`` means for a network whose layers are ``names``.

    Args:
        order: one of :data:`ORDERS`, or an explicit list of layer names.
        names: the schedulable layers in network order.
        seed: seed of the ``random`` order.
        ranking: the ranking (or its file) for the sensitivity orders.

    Raises:
        OnebitError: an unknown order or layer name, a repeated name, a missing ranking, or a
            ranking made for other layers.
    """
    names = list(names)
    if not isinstance(order, str):
        listed = list(order)
        unknown = [n for n in listed if n not in names]
        if unknown:
            raise OnebitError(
                f"order names layer {unknown[0]!r}, which is not binarizable here; "
                f"accepted: {', '.join(names)}."
            )
        if len(set(listed)) != len(listed):
            raise OnebitError(f"order names a layer twice: {listed}.")
        return listed
    if order == "forward":
        return names
    if order == "reverse":
        return names[::-1]
    if order == "random":
        out = names.copy()
        random.Random(seed).shuffle(out)
        return out
    if order in ("sensitivity-ascending", "sensitivity-descending"):
        if ranking is None:
            raise OnebitError(
                f"order {order!r} needs a sensitivity ranking file (method.ranking); make one "
                "with `onebit sensitivity CONFIG`, or let `onebit compare` make it."
            )
        r = ranking if isinstance(ranking, Ranking) else read_ranking(ranking)
        if sorted(r.names) != sorted(names):
            raise OnebitError(
                f"the sensitivity ranking lists layers {r.names}, but this network's binarizable "
                f"layers are {names}; was it made for another model?"
            )
        return r.order(ascending=order == "sensitivity-ascending")
    raise OnebitError(
        f"unknown order {order!r}; accepted: {', '.join(ORDERS)}, or a list of layer names."
    )


def schedulable_layers(model: nn.Module) -> list[str]:
    """Names of the model's binarized layers (``BinaryLayer``), in registration (= forward) order.

    Layers a method keeps float (first/last layer policy) are plain torch layers and not listed.
    """
    return [n for n, m in model.named_modules() if is_binary_layer(m)]


def apply(model: nn.Module, mask: Mapping[str, bool]) -> list[str]:
    """Set each binarized layer's ``binary`` flag from ``mask``; returns the binary layers' names.

    A layer missing from ``mask`` stays float; a name in ``mask`` that is not a binarized layer of
    ``model`` raises OnebitError.
    """
    layers = {n: m for n, m in model.named_modules() if is_binary_layer(m)}
    unknown = [n for n in mask if n not in layers]
    if unknown:
        raise OnebitError(f"the schedule names {unknown[0]!r}, which is not a binarized layer.")
    for name, m in layers.items():
        m.binary = bool(mask.get(name, False))
    return [n for n, m in layers.items() if m.binary]


def is_partial(modules: Iterable[nn.Module]) -> bool:
    """True when some binarized layer is switched to float (a schedule has not finished)."""
    return any(is_binary_layer(m) and not m.binary for m in modules)


def apply_progressive(
    model: nn.Module,
    names: Sequence[str],
    order: Sequence[str],
    epoch: int,
    epochs: int,
    epochs_per_layer: float,
    owner: str,
) -> list[str]:
    """Set the binary flags of epoch ``epoch`` of a progressive schedule; returns the binary layers.

    Raises:
        OnebitError: ``len(order) * epochs_per_layer`` does not fit in ``epochs``, so the net
            would never be fully binary (``owner`` names the method in the message).
    """
    if binary_count(len(order), epochs - 1, epochs_per_layer) < len(order):
        raise OnebitError(
            f"{owner}: {len(order)} layers x epochs_per_layer {epochs_per_layer:g} need more than "
            f"the {epochs} epochs of train.epochs; the net would never be fully binary."
        )
    return apply(model, binary_mask(names, order, epoch, epochs_per_layer))
