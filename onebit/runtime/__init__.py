"""Run packed 1-bit models: the ``.onebit`` file format and a numpy + kernels interpreter.

This package imports neither torch nor the training code: a packed model loads and runs with
numpy, safetensors and ``onebit.kernels`` only (``tests/test_pack.py`` checks both statically
and in a fresh interpreter).

- :mod:`onebit.runtime.ops`: the graph's steps (``Op``) and their implementations;
- :mod:`onebit.runtime.format`: the ``.onebit`` file (layout, versions, checks, legacy ops);
- :mod:`onebit.runtime.model`: ``PackedModel`` (the interpreter) and ``load``;
- :mod:`onebit.runtime.inputs`: ``read_inputs`` (IDX, ``.npz`` and image files).

Tensors between ops are float32 ``(N, F)`` or NHWC ``(N, H, W, C)`` arrays.
"""

from __future__ import annotations

from onebit.runtime.format import FORMAT, FORMAT_VERSION
from onebit.runtime.inputs import read_inputs
from onebit.runtime.model import PackedModel, load, serial_blas
from onebit.runtime.ops import Op

__all__ = ["FORMAT", "FORMAT_VERSION", "Op", "PackedModel", "load", "read_inputs", "serial_blas"]
