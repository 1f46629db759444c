"""Shared fixtures: tiny synthetic datasets (no files, no network)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onebit.data import Dataset, Split


def blobs(n: int, shape: tuple[int, ...], classes: int, seed: int, noise: float = 0.6) -> Split:
    """Gaussian class prototypes plus noise: an easy, learnable task."""
    g = torch.Generator().manual_seed(1234)  # the same prototypes for every split
    protos = torch.randn(classes, *shape, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = protos[y] + noise * torch.randn(n, *shape, generator=g)
    return Split(x.float(), y)


def tiny_dataset(
    shape: tuple[int, ...] = (1, 8, 8), classes: int = 4, n_train: int = 256, seed: int = 0
) -> Dataset:
    """A learnable synthetic dataset with float inputs (mean 0, std 1: no normalization)."""
    c = shape[0]  # channels, or features for flat data
    ones = (1.0,) * c
    return Dataset(
        name="npz",
        train=blobs(n_train, shape, classes, seed),
        val=blobs(64, shape, classes, seed + 1),
        test=blobs(64, shape, classes, seed + 2),
        num_classes=classes,
        input_shape=shape,
        mean=(0.0,) * c,
        std=ones,
    )


def devices() -> list:
    """The devices of device-parametrized tests: the CPU, and CUDA where torch sees a GPU (marked
    ``gpu``: ``pytest -m gpu`` runs those alone). Without CUDA no cuda case is generated at all,
    so a CPU-only machine runs the same tests and skips none."""
    cuda = [pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else []
    return ["cpu", *cuda]


def write_npz(path, shape=(1, 8, 8), classes=4, n=256, seed=0) -> str:
    """The tiny dataset as a generic .npz with x/y and x_test/y_test."""
    tr = blobs(n, shape, classes, seed)
    te = blobs(64, shape, classes, seed + 2)
    np.savez(path, x=tr.x.numpy(), y=tr.y.numpy(), x_test=te.x.numpy(), y_test=te.y.numpy())
    return str(path)


@pytest.fixture
def tiny() -> Dataset:
    return tiny_dataset()


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests are small: one thread avoids oversubscription when the suite runs beside other work.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    # Caches (decoded images, the GEMM calibration) go to a folder of the test session, never
    # into the user's home; subprocesses inherit it.
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def binarized_mlp(method, data):
    """The conformance test's model: an MLP 16-64-64-classes binarized by ``method`` (seed 0)."""
    from onebit.convert import binarize_
    from onebit.models import build

    torch.manual_seed(0)
    model = build(
        "mlp", data.input_shape, data.num_classes, hidden=[64, 64], act=method.hidden_activation()
    )
    binarize_(model, method)
    return model
