"""Checkpoints: atomic writes, safe reads (``weights_only``, no code runs), RNG state, and loading
weights into a model with one sentence when they do not fit.

A checkpoint is a dict ``{"format": "onebit-checkpoint", "version": 1, ...}`` written by
``torch.save`` through :func:`onebit.fileio.atomic_write` (never a half-written file). What a
training run stores in it (model, optimizer, epoch, RNG state, history, its config) is
``onebit.training``'s business; this module only reads and writes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from onebit.errors import OnebitError
from onebit.fileio import atomic_write
from onebit.layers import is_binary_layer

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "load_checkpoint",
    "load_init_",
    "load_model_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "onebit-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, **state: Any) -> None:
    """Write a checkpoint atomically (temporary file, then rename): never a half-written file."""
    obj = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a onebit checkpoint safely (``weights_only``); bad files raise one clear OnebitError.

    A run folder means its ``last.pt``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise OnebitError(f"{p} does not exist; pass a run folder or its last.pt/best.pt.")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a foreign file
        raise OnebitError(f"{p} is not a onebit checkpoint ({type(e).__name__}).") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise OnebitError(f"{p} is not a onebit checkpoint (no onebit format tag).")
    if state.get("version", 0) > CHECKPOINT_VERSION:
        raise OnebitError(
            f"{p} was written by a newer onebit (checkpoint version {state['version']}); upgrade onebit."
        )
    return state


def load_model_state(model: nn.Module, state: dict[str, Tensor], where: str) -> None:
    """Load a state dict, turning a mismatch into one sentence about which model it came from."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise OnebitError(
            f"{where} holds weights of a different model than the one configured ({first.strip()})."
        ) from None


def load_init_(model: nn.Module, path: str | Path) -> None:
    """Start ``model`` from the weights of checkpoint ``path`` (e.g. a full-precision run's
    ``best.pt``): every entry must fit, except the state of weight parametrizations, which the
    file may lack; each parametrization is then reset to reproduce its layer's loaded weight."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    trained_only = {
        f"{name}.{m.PARAMETRIZATION}."
        for name, m in model.named_modules()
        if is_binary_layer(m) and m.parametrization is not None
    }
    extra = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.startswith(tuple(trained_only))]
    if extra or missing:
        raise OnebitError(
            f"{path} holds weights of a different model than the one configured "
            f"({(extra or missing)[0]!r}); method.init must be a run of the same model."
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise OnebitError(f"{path} does not fit the configured model ({e}).") from None
    for m in model.modules():
        if is_binary_layer(m) and m.parametrization is not None:
            m.parametrization.reset_(m.weight)


def rng_state() -> dict[str, Any]:
    """torch's, Python's and numpy's global RNG states, as checkpoint-safe values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (after a checkpoint round trip)."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
