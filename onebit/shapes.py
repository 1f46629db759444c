"""Shape arithmetic shared by the packer, the runtime, the kernels and the transforms.

Pure Python (no torch, no numpy), so every floor of the package may use it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["conv_output_size", "pair"]


def pair(v: int | Sequence[int], name: str = "value") -> tuple[int, int]:
    """``(v, v)`` for an int, ``(v[0], v[1])`` for a pair: torch's convention for kernel sizes,
    strides, paddings and dilations.

    Raises:
        ValueError: ``v`` is neither an int nor a sequence of two ints.
    """
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    try:
        a, b = v  # type: ignore[misc]
        return (int(a), int(b))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None


def conv_output_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Output length of a convolution or pooling window along one axis:
    ``floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
