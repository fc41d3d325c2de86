"""Detection's fuzz loops in forked one-thread workers (``ScanConfig.workers``).

Detection adds no PV before it stops, so its loops are independent: each worker runs whole fuzz
loops against the PVs known when the pool started, and the results are taken in seed order, so
the verdict and the PV are those of the sequential scan.

The workers are forked (the fork start method stays: nothing big is pickled). The prepared
:class:`FuzzSetup` (frozen model, cached batches and clean outputs) and the known PVs reach them
through the pool's initializer: with fork, a worker process inherits its arguments with the
parent's memory (copy-on-write), and :func:`_init_worker` keeps them in the worker's own
``_WORKER`` for :func:`_fuzz_in_worker`. The parent never sets ``_WORKER``.

A :class:`~concurrent.futures.ProcessPoolExecutor` rather than ``multiprocessing.Pool``: when a
worker dies (killed for memory, a crash in native code) the Pool silently starts a new one and
waits forever for the lost loop's result, so a CI job hung instead of failing. The executor marks
itself broken, which becomes a one-line error (exit 2) here.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import signal
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch
import tqdm.auto
import tqdm.std

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.scan.fuzz import Candidate, FoundPV, fuzz_loop
from lmsanitator.scan.setup import FuzzSetup

_WORKER: tuple[FuzzSetup, list[torch.Tensor]] | None = None  # set in each worker by _init_worker


def _init_worker(setup: FuzzSetup, known: list[torch.Tensor]) -> None:
    """Pool initializer, run once in each forked worker."""
    global _WORKER
    # Ctrl-C reaches the whole process group: the parent alone handles it (and stops the workers);
    # the parent's SIGTERM handler (raise KeyboardInterrupt) must not survive the fork either, or a
    # terminated worker would unwind through a fuzz loop instead of exiting.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)  # one core per fuzz loop; also keeps forked OpenMP out of trouble
    # Every tqdm bar, even a disabled one, takes tqdm's write lock, and its default is a
    # multiprocessing lock shared with the parent and the other workers: a worker terminated while
    # holding it (an early accept stops the workers mid-loop) left it taken, and the next pool's
    # workers and the parent's progress bar waited for it forever. Its thread half, copied at the
    # fork, may be held by the parent's tqdm monitor thread, which does not exist here. A worker
    # draws no bar, so a lock of its own is enough.
    for bar in {tqdm.std.tqdm, tqdm.auto.tqdm}:
        bar.set_lock(threading.RLock())
    _WORKER = (setup, known)


def _fuzz_in_worker(seed: int) -> tuple[Candidate, FoundPV | None]:
    setup, known = _WORKER
    cand, found = fuzz_loop(setup, seed, known)
    if found is not None:  # handed back as numpy: torch would pass tensors through shared memory
        found = dataclasses.replace(found, pv=found.pv.numpy(), soft_prompt=found.soft_prompt.numpy())
    return cand, found


def _stop(pool: ProcessPoolExecutor, pending: deque[Future]) -> None:
    """Cancel the loops not started and end the workers still running one (an early accept or an
    interrupt must not wait for loops whose results nobody reads)."""
    for f in pending:
        f.cancel()
    # the executor has no public way to end running tasks before Python 3.14 (terminate_workers)
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def forked_fuzz_loops(
    setup: FuzzSetup, known: list[torch.Tensor], seeds: Iterable[int], workers: int
) -> Iterator[tuple[int, Candidate, FoundPV | None]]:
    """Yield ``(seed, candidate, found PV or None)`` in seed order from ``workers`` forked
    processes; closing the generator stops the workers still running later seeds. A worker that
    dies raises :class:`LMSanitatorError` instead of waiting for it forever."""
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_init_worker,
        initargs=(setup, known),
    )
    todo = iter(seeds)
    pending: deque[tuple[int, Future]] = deque()
    try:
        # keep every worker busy plus one queued loop, submitted lazily so that an early accept
        # leaves little to cancel
        for seed in todo:
            pending.append((seed, pool.submit(_fuzz_in_worker, seed)))
            if len(pending) > workers:
                break
        while pending:
            seed, future = pending.popleft()
            try:
                cand, found = future.result()
            except BrokenProcessPool as e:
                raise LMSanitatorError(
                    # the whole pool breaks with it, so the loop that died is not known here
                    f"a scan worker process died (killed, out of memory?) with fuzz loops from seed {seed} "
                    "unfinished; rerun with --workers 1"
                ) from e
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_fuzz_in_worker, nxt)))
            if found is not None:
                found = dataclasses.replace(
                    found, pv=torch.from_numpy(found.pv), soft_prompt=torch.from_numpy(found.soft_prompt)
                )
            yield seed, cand, found
    finally:
        _stop(pool, deque(f for _, f in pending))
