"""Predefined output vectors (PVs): the outputs a task-agnostic backdoor maps triggered inputs to."""

from __future__ import annotations

import itertools

import torch

from lmsanitator.core.errors import LMSanitatorError

PV_SCHEMES = ("por2", "random")


def por2_pvs(hidden_size: int) -> torch.Tensor:
    """POR-2: split the width into four quarters; the six ways to fill two with -1 and two with +1."""
    if hidden_size % 4:
        raise LMSanitatorError(f"pv scheme 'por2' needs a width divisible by 4, got {hidden_size}")
    q = hidden_size // 4
    pvs = []
    for neg in itertools.combinations(range(4), 2):
        v = torch.ones(hidden_size)
        for k in neg:
            v[k * q : (k + 1) * q] = -1.0
        pvs.append(v)
    return torch.stack(pvs)


def random_pvs(n: int, hidden_size: int, seed: int) -> torch.Tensor:
    """``n`` random sign vectors (+1/-1), reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, hidden_size), generator=g).float() * 2 - 1


def make_pvs(scheme: str, n: int, hidden_size: int, seed: int) -> torch.Tensor:
    if scheme == "por2":
        pvs = por2_pvs(hidden_size)
        if n > len(pvs):
            raise LMSanitatorError(
                f"pv scheme 'por2' has {len(pvs)} PVs but {n} triggers were given; use --pv-scheme random"
            )
        return pvs[:n]
    if scheme == "random":
        return random_pvs(n, hidden_size, seed)
    raise LMSanitatorError(f"unknown pv scheme '{scheme}': choose one of {', '.join(PV_SCHEMES)}")
