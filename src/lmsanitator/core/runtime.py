"""Runtime: how many cores this process may use and how many torch threads it runs."""

from __future__ import annotations

import os

import torch


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


def set_threads(n: int | None = None) -> None:
    """Use ``n`` threads, by default every core we were given (torch defaults can oversubscribe
    small containers)."""
    torch.set_num_threads(n or available_cores())
