"""The in-memory dataset: :class:`Split` and :class:`Dataset`, the dataset names, class names and
published statistics, and what is done to a loaded dataset (validation split, per-channel
statistics, :func:`subsample`, :func:`unnormalized`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from onebit.errors import OnebitError

PathLike = str | os.PathLike[str]

DATASETS: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "npz", "linux-kernel", "text")

TEXT_DATASETS: tuple[str, ...] = ("linux-kernel", "text")
"""Character-level text: inputs are ``(N, T)`` token ids, targets the same shifted by one."""

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}

# Published per-channel statistics of the training sets (of x / 255).
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass
class Split:
    """One split of a dataset, held in memory.

    Attributes:
        x: Inputs, ``(N, C, H, W)`` uint8 for images, float32 (``(N, C, H, W)`` or ``(N, F)``)
            for generic float data, or int64 token ids ``(N, T)`` for text.
        y: Integer class labels, ``(N,)`` int64; for text the next-token targets ``(N, T)``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise OnebitError(
                f"A split has {self.x.shape[0]} inputs but {self.y.shape[0]} labels; "
                "give every input exactly one label."
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Dataset:
    """A dataset with train/validation/test splits and what is needed to feed it to a model.

    Attributes:
        name: One of :data:`DATASETS`.
        train: Training split.
        val: Validation split (may be empty).
        test: Test split.
        num_classes: Number of classes.
        input_shape: Shape of one example, ``(C, H, W)`` or ``(F,)``.
        mean: Per-channel (or per-feature for flat data) mean used to normalize ``x / 255`` for
            uint8 data, or ``x`` for float data.
        std: Matching standard deviations.
        augment: Whether training should use random crop (pad 4) and horizontal flips.
        classes: Class names when known, else empty.
        source: Where and in which format the data was read, for records and logs.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False
    classes: tuple[str, ...] = ()
    source: str = ""


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise OnebitError(f"Unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")


def unnormalized(data: Dataset) -> Dataset:
    """The same dataset fed as ``x / 255`` in [0, 1] (mean 0, std 1 per channel) instead of
    standardized with its per-channel statistics; text token ids are unaffected either way."""
    return replace(data, mean=(0.0,) * len(data.mean), std=(1.0,) * len(data.std))


def subsample(data: Dataset, max_train: int | None = None, max_val: int | None = None) -> Dataset:
    """Keep at most ``max_train`` training and ``max_val`` validation examples (None: all).

    The kept examples are evenly spaced over the split (indices ``floor(k n / m)``, ``k < m``), so a
    subset of a text spans all of it rather than its beginning. The test split is never cut.

    Raises:
        OnebitError: When a limit is below 1.
    """

    def cut(split: Split, m: int | None, what: str) -> Split:
        if m is None or m >= len(split):
            return split
        if m < 1:
            raise OnebitError(f"data.{what} is {m}; pass a positive number of examples or none.")
        idx = torch.arange(m) * len(split) // m
        return Split(split.x[idx], split.y[idx])

    data.train = cut(data.train, max_train, "max_train")
    data.val = cut(data.val, max_val, "max_val")
    return data


def _split_off_val(train: Split, val_size: int) -> tuple[Split, Split]:
    if val_size < 0:
        raise OnebitError(f"data.val_size is {val_size}; pass 0 or a positive number of examples.")
    n = len(train)
    if val_size >= n:
        raise OnebitError(
            f"data.val_size = {val_size} leaves none of the {n} training examples to train on; "
            f"pass a smaller data.val_size (e.g. {n // 10})."
        )
    cut = n - val_size
    return Split(train.x[:cut], train.y[:cut]), Split(train.x[cut:], train.y[cut:])


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (dim 1) mean and std of ``x / 255`` (uint8) or ``x``; zero std becomes 1."""
    dims = [0, *range(2, x.dim())]
    xf = x.to(torch.float64)
    if x.dtype == torch.uint8:
        xf = xf / 255.0
    mean = xf.mean(dim=dims)
    std = xf.std(dim=dims, correction=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return tuple(mean.tolist()), tuple(std.tolist())
