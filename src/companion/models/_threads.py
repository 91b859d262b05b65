"""Torch's intra-op thread count for the processes that serve models.

Torch defaults to one thread per core. On a small CPU shared with other work those threads
fight: measured on this project's 2-core machine with another process busy, a guard check
took 11.8 ms on one thread against 87-474 ms on two, and a 16-token generation 1.3 s against
6.6-7.1 s. The guard and the model run in one process and never at the same time per turn,
so one process-wide count is chosen at the entry point (``companion serve``, ``companion
chat``); the library itself never sets it.
"""

from __future__ import annotations

import os

__all__ = ["default_torch_threads", "set_torch_threads"]


def default_torch_threads(cpus: int | None = None) -> int:
    """Half the CPUs, at least one: one spare core for the gRPC threads, the event loop and
    whatever else runs on the machine."""
    n = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, n // 2)


def set_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (``None``: :func:`default_torch_threads`); returns it."""
    import torch

    n = default_torch_threads() if threads is None else threads
    if n < 1:
        raise ValueError(f"torch_threads={n}: need >= 1")
    torch.set_num_threads(n)
    return n
