"""Where and in which precision a run trains: ``train.device`` and ``train.precision``.

A run names its device as ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; :func:`resolve_device`
turns that into a ``torch.device`` (``auto``: CUDA if available, else MPS, else the CPU) or one
sentence saying why it cannot. Under torchrun each process takes the GPU of its ``LOCAL_RANK``,
and :func:`dist_backend` picks NCCL for CUDA processes and gloo otherwise.

:func:`resolve_precision` turns ``fp32``, ``bf16`` or ``fp16`` into a :class:`Precision`: the
``torch.autocast`` dtype (none for fp32) and, for fp16, a gradient scaler. fp16 runs only on CUDA
(its gradients need a scaler, and CPU kernels gain nothing from it); bf16 runs on CUDA and MPS,
and on a CPU only where the CPU computes bf16 natively (AMX or AVX512_BF16 on x86, the BF16
extension on Arm), read from ``/proc/cpuinfo`` at run time: elsewhere torch emulates bf16 and a run
would be slower than fp32, so it is refused with a sentence rather than silently slow.

Autocast changes the precision of matrix products and convolutions only; the binarized weight
``alpha * sign(w)`` is computed in fp32 (``BinaryLayer.forward_weight`` turns autocast off while it runs)
and autocast casts the finished weight, so the signs stay exact and ``alpha`` is rounded to the
product's precision (bf16: 8 significant bits).

:func:`to_device` moves an in-memory dataset so that batches are sliced from device tensors with
no per-step copy from the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import torch

from onebit.data import Dataset, Split
from onebit.errors import OnebitError
from onebit.settings import cpu_model

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "Precision",
    "check_device_spec",
    "cpu_bf16",
    "device_name",
    "dist_backend",
    "resolve_device",
    "resolve_precision",
    "to_device",
]

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
"""The accepted spellings of ``train.device`` (``N`` a GPU index)."""

PRECISIONS = ("fp32", "bf16", "fp16")
"""The accepted values of ``train.precision``."""

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_CUDA_N = re.compile(r"cuda:(\d+)")
# CPU feature flags that give native bf16 arithmetic (x86: /proc/cpuinfo "flags"; Arm: "Features")
_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def check_device_spec(spec: Any) -> None:
    """Raise one sentence unless ``spec`` is one of :data:`DEVICES` (availability is not checked:
    a config may be written on one machine and run on another)."""
    named = isinstance(spec, str) and (
        spec in ("auto", "cpu", "cuda", "mps") or _CUDA_N.fullmatch(spec)
    )
    if not named:
        raise OnebitError(
            f"train.device = {spec!r} is not accepted; give one of auto, cpu, cuda, cuda:N "
            "(N a GPU index) or mps."
        )


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str = "auto", *, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device ``train.device = spec`` names on this machine.

    Args:
        spec: one of :data:`DEVICES`; ``auto`` is CUDA if available, else MPS, else the CPU.
        local_rank: this process's ``LOCAL_RANK`` under torchrun: its GPU index.
        world_size: processes of the run; with more than one, ``cuda`` means GPU ``local_rank``.

    Raises:
        OnebitError: a spelling not in :data:`DEVICES`, a device this machine lacks, a GPU index
            beyond its GPUs, or ``cuda:N`` under torchrun (each process takes its own GPU).
    """
    check_device_spec(spec)
    if spec == "auto":
        spec = "cuda" if _cuda_available() else "mps" if _mps_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise OnebitError(
                "train.device = 'mps' but torch.backends.mps.is_available() is False; use 'cpu' "
                "or 'auto'."
            )
        return torch.device("mps")
    if not _cuda_available():
        raise OnebitError(
            f"train.device = {spec!r} but torch.cuda.is_available() is False; use 'cpu' or 'auto'."
        )
    count = torch.cuda.device_count()
    if spec != "cuda" and world_size > 1:
        raise OnebitError(
            f"train.device = {spec!r} under torchrun: each process takes the GPU of its "
            "LOCAL_RANK; give train.device = 'cuda' or 'auto'."
        )
    index = int(spec.partition(":")[2]) if spec != "cuda" else (local_rank if world_size > 1 else 0)
    if index >= count:
        what = f"LOCAL_RANK {local_rank}" if spec == "cuda" else f"train.device = {spec!r}"
        raise OnebitError(
            f"{what} asks for GPU {index} but this machine has {count} (0 to {count - 1}); "
            "start at most one process per GPU."
        )
    return torch.device("cuda", index)


def dist_backend(device: torch.device) -> str:
    """The torch.distributed backend of processes on ``device``: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_name(device: torch.device) -> str:
    """A readable name of ``device`` for logs and records (the GPU's or the CPU's model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_model()
    return device.type


def _cpu_flags() -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def cpu_bf16() -> str | None:
    """The CPU feature that gives native bf16 arithmetic (``amx_bf16``, ``avx512_bf16`` or Arm's
    ``bf16``), or None where the CPU has none of them (or ``/proc/cpuinfo`` cannot be read)."""
    flags = _cpu_flags()
    return next((f for f in _BF16_FLAGS if f in flags), None)


@dataclass(frozen=True)
class Precision:
    """The arithmetic of a run on its device.

    Attributes:
        name: ``fp32``, ``bf16`` or ``fp16``.
        device_type: ``cpu``, ``cuda`` or ``mps`` (autocast's device type).
        dtype: the autocast dtype; None for fp32 (autocast off).
        via: what provides it, for the log (a CPU feature flag, the GPU, ``-`` for fp32).
    """

    name: str = "fp32"
    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    via: str = "-"

    @property
    def scaled(self) -> bool:
        """Whether gradients need a scaler (fp16: small gradients underflow without one)."""
        return self.dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` to :attr:`dtype` on the device (a no-op context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A fresh gradient scaler for fp16, None otherwise."""
        return torch.amp.GradScaler(self.device_type) if self.scaled else None

    def describe(self) -> str:
        """``bf16 (autocast, amx_bf16)``, ``fp16 (autocast, gradient scaler)``, ``fp32``."""
        if self.dtype is None:
            return "fp32"
        extra = "gradient scaler" if self.scaled else self.via
        return f"{self.name} (autocast, {extra})"


def resolve_precision(name: str, device: torch.device) -> Precision:
    """The :class:`Precision` that ``train.precision = name`` gives on ``device``.

    Raises:
        OnebitError: an unknown name; fp16 off CUDA; bf16 on a CPU without native bf16.
    """
    if name not in PRECISIONS:
        raise OnebitError(
            f"train.precision = {name!r} is not accepted; give one of {', '.join(PRECISIONS)}."
        )
    if name == "fp32":
        return Precision("fp32", device.type)
    if name == "fp16" and device.type != "cuda":
        raise OnebitError(
            f"train.precision = 'fp16' needs CUDA (a gradient scaler on a GPU), but the run is on "
            f"{device.type}; use 'bf16' or 'fp32'."
        )
    via = device.type
    if device.type == "cpu":
        flag = cpu_bf16()
        if flag is None:
            raise OnebitError(
                f"train.precision = 'bf16' on the CPU needs AMX or AVX512_BF16 instructions, "
                f"which this CPU ({cpu_model()}) lacks; use 'fp32'."
            )
        via = flag
    elif device.type == "cuda":
        if name == "bf16" and not torch.cuda.is_bf16_supported():
            raise OnebitError(
                f"train.precision = 'bf16' but {torch.cuda.get_device_name(device)} has no bf16; "
                "use 'fp16' or 'fp32'."
            )
        via = torch.cuda.get_device_name(device)
    return Precision(name, device.type, _DTYPES[name], via)


def _split_to(split: Split, device: torch.device) -> Split:
    return Split(split.x.to(device), split.y.to(device))


def to_device(data: Dataset, device: torch.device) -> Dataset:
    """``data`` with its splits on ``device`` (the same object when they already are there; a
    copy otherwise, so the caller's dataset is unchanged)."""
    splits = (data.train, data.val, data.test)
    if all(s.x.device == device and s.y.device == device for s in splits):
        return data
    return dataclasses.replace(
        data,
        train=_split_to(data.train, device),
        val=_split_to(data.val, device),
        test=_split_to(data.test, device),
    )
