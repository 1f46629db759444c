"""onebit: train, compare, pack and run binary-weight neural networks.

    import onebit
    model = onebit.models.build("mlp", in_shape=(1, 28, 28), num_classes=10)
    method = onebit.methods.BinaryConnect()
    onebit.binarize_(model, method)
    history = onebit.train(model, method, data, cfg)

Attributes are imported on first use, so ``import onebit.runtime`` (the packed-model runtime)
loads neither torch nor the training code.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "OnebitError": ("onebit.errors", "OnebitError"),
    "binarize_": ("onebit.convert", "binarize_"),
    "unbinarize_": ("onebit.convert", "unbinarize_"),
    "summary": ("onebit.convert", "summary"),
    "train": ("onebit.training", "train"),
    "evaluate": ("onebit.training", "evaluate"),
    "TrainConfig": ("onebit.training", "TrainConfig"),
    "pack": ("onebit.packer", "pack"),
    "pack_": ("onebit.ops", "pack_"),
    "save_packed": ("onebit.ops", "save_packed"),
    "load_packed_": ("onebit.ops", "load_packed_"),
    "load": ("onebit.runtime", "load"),
    "export_onnx": ("onebit.export", "export_onnx"),
    "methods": ("onebit.methods", None),
    "models": ("onebit.models", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'onebit' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)
