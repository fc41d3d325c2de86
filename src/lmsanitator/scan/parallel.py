"""Detection's fuzz loops in forked one-thread workers (``ScanConfig.workers``).

Detection adds no PV before it stops, so its loops are independent: each worker runs whole fuzz
loops against the PVs known when the pool started, and the results are taken in seed order, so
the verdict and the PV are those of the sequential scan.

The workers are forked (the fork start method stays: nothing big is pickled). The prepared
:class:`FuzzSetup` (frozen model, cached batches and clean outputs) and the known PVs reach them
through the pool's initializer: with fork, a worker process inherits its arguments with the
parent's memory (copy-on-write), and :func:`_init_worker` keeps them in the worker's own
``_WORKER`` for :func:`_fuzz_in_worker`. The parent never sets ``_WORKER``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Iterable, Iterator

import torch

from lmsanitator.scan.fuzz import Candidate, FoundPV, fuzz_loop
from lmsanitator.scan.setup import FuzzSetup

_WORKER: tuple[FuzzSetup, list[torch.Tensor]] | None = None  # set in each worker by _init_worker


def _init_worker(setup: FuzzSetup, known: list[torch.Tensor]) -> None:
    """Pool initializer, run once in each forked worker."""
    global _WORKER
    torch.set_num_threads(1)  # one core per fuzz loop; also keeps forked OpenMP out of trouble
    _WORKER = (setup, known)


def _fuzz_in_worker(seed: int) -> tuple[Candidate, FoundPV | None]:
    setup, known = _WORKER
    cand, found = fuzz_loop(setup, seed, known)
    if found is not None:  # handed back as numpy: torch would pass tensors through shared memory
        found = dataclasses.replace(found, pv=found.pv.numpy(), soft_prompt=found.soft_prompt.numpy())
    return cand, found


def forked_fuzz_loops(
    setup: FuzzSetup, known: list[torch.Tensor], seeds: Iterable[int], workers: int
) -> Iterator[tuple[int, Candidate, FoundPV | None]]:
    """Yield ``(seed, candidate, found PV or None)`` in seed order from ``workers`` forked
    processes; closing the generator stops the workers still running later seeds."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(setup, known)) as pool:
        for seed, (cand, found) in zip(seeds, pool.imap(_fuzz_in_worker, seeds)):
            if found is not None:
                found = dataclasses.replace(
                    found, pv=torch.from_numpy(found.pv), soft_prompt=torch.from_numpy(found.soft_prompt)
                )
            yield seed, cand, found
