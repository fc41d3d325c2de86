"""Runtime: how many cores this process may use, how many torch threads it runs, where it caches."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


def set_threads(n: int | None = None) -> None:
    """Use ``n`` threads, by default every core we were given (torch defaults can oversubscribe
    small containers)."""
    torch.set_num_threads(n or available_cores())


def cache_dir() -> Path:
    """Where the project caches what it derives (dequantised GGUF models, the zoo's verdicts):
    ``$LMSANITATOR_CACHE``, else ``$XDG_CACHE_HOME/lmsanitator``, else ``~/.cache/lmsanitator``."""
    if os.environ.get("LMSANITATOR_CACHE"):
        return Path(os.environ["LMSANITATOR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmsanitator"
