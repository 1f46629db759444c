"""The one place that changes torch's process-wide settings: threads and determinism.

Library code never sets them bare: it enters :func:`torch_settings`, which restores everything it
changed when the block ends, so ``onebit.train`` leaves a caller's process as it found it. Worker
processes that exist only to train (``onebit compare``'s pool) set their threads once with
:func:`set_process_threads`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = [
    "available_cpus",
    "cpu_model",
    "default_threads",
    "set_process_threads",
    "torch_settings",
]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(processes: int = 1) -> int:
    """Threads per process when ``processes`` share this machine: the CPUs divided evenly."""
    return max(1, available_cpus() // max(1, processes))


def set_process_threads(threads: int) -> None:
    """Set torch's threads for the rest of this process (for processes that only train)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def torch_settings(threads: int | None = None, deterministic: bool | None = None) -> Iterator[None]:
    """Within the block: torch's intra-op ``threads`` (None or 0: unchanged) and, when
    ``deterministic`` is given, ``torch.use_deterministic_algorithms(deterministic,
    warn_only=True)``. Every setting it changed is restored at exit, also on an exception."""
    saved_threads = torch.get_num_threads()
    saved_det = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        if threads and threads != saved_threads:
            torch.set_num_threads(threads)
        if deterministic is not None and (deterministic, True) != saved_det:
            torch.use_deterministic_algorithms(deterministic, warn_only=True)
        yield
    finally:
        if torch.get_num_threads() != saved_threads:
            torch.set_num_threads(saved_threads)
        now = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        if now != saved_det:
            torch.use_deterministic_algorithms(saved_det[0], warn_only=saved_det[1])
