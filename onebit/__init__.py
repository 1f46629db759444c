"""onebit: train, compare, pack and run binary-weight neural networks.

import onebit
model = onebit.models.build("mlp", in_shape=(1, 28, 28), num_classes=10)
method = onebit.methods.BinaryConnect()
onebit.binarize_(model, method)
"""

from onebit import methods, models
from onebit.convert import binarize_, summary, unbinarize_
from onebit.errors import OnebitError
from onebit.train import evaluate, train

__all__ = [
    "OnebitError",
    "binarize_",
    "evaluate",
    "methods",
    "models",
    "summary",
    "train",
    "unbinarize_",
]
__version__ = "0.1.0"
