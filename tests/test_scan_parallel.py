"""Forked fuzz-loop workers: a worker that dies is an error, not a hang."""

import multiprocessing
import os
import time

import pytest
import tqdm.auto
import tqdm.std

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import load_corpus
from lmsanitator.models import tiny_encoder
from lmsanitator.scan import PVMiner, ScanConfig, parallel

_real_fuzz = parallel._fuzz_in_worker


def _dies_on_seed_1(seed: int):
    """A worker killed mid-loop (what the kernel's OOM killer does): no exception, no result."""
    if seed == 1:
        os._exit(9)
    return _real_fuzz(seed)


_LOCK_TAKEN = multiprocessing.get_context("fork").Event()  # set by a worker, seen by its sibling


def _dies_holding_the_bar_lock(seed: int):
    """Seed 1 takes tqdm's write lock (as a progress bar does for a moment) and is terminated
    holding it, by the early stop after seed 0."""
    if seed == 1:
        with tqdm.auto.tqdm.get_lock():
            _LOCK_TAKEN.set()
            time.sleep(600)
    _LOCK_TAKEN.wait(120)
    return None, None  # no loop: a real one draws a (disabled) bar and would wait for the lock


def _config(**kw) -> ScanConfig:
    return ScanConfig(sentences=32, batch_size=16, max_length=40, loops=4, epochs=2, abort_epoch=1, **kw)


def test_dead_worker_is_a_one_line_error(monkeypatch):
    # the workers are forked after the patch, so they run the patched function
    monkeypatch.setattr(parallel, "_fuzz_in_worker", _dies_on_seed_1)
    sentences = load_corpus("austen")[:32]
    with pytest.raises(LMSanitatorError, match="worker process died .*--workers 1"):
        PVMiner(_config(workers=2)).fit(tiny_encoder("bert"), sentences, progress=False)


def test_workers_end_when_the_loops_are_no_longer_read():
    """Closing the generator early (an early accept) leaves no worker process behind."""
    miner = PVMiner(_config(workers=2))
    miner.fit(tiny_encoder("bert"), load_corpus("austen")[:32], progress=False)
    loops = parallel.forked_fuzz_loops(miner.setup_, [], range(4), 2)
    seed, cand, _ = next(loops)
    assert seed == 0 and cand.seed == 0
    loops.close()
    assert multiprocessing.active_children() == []


def test_a_worker_stopped_holding_the_bar_lock_blocks_nothing(monkeypatch):
    """An early stop terminates workers wherever they are. One terminated inside tqdm's write lock,
    whose default is a multiprocessing lock shared with the parent, left it taken: the next scan's
    workers (every bar takes it, even a disabled one) and the parent's progress bar waited forever,
    and CI hung. Each worker now has a lock of its own."""
    miner = PVMiner(_config(workers=2))
    miner.fit(tiny_encoder("bert"), load_corpus("austen")[:32], progress=False)
    tqdm.auto.tqdm(disable=True).close()  # the parent's shared lock exists before the fork
    monkeypatch.setattr(parallel, "_fuzz_in_worker", _dies_holding_the_bar_lock)
    loops = parallel.forked_fuzz_loops(miner.setup_, [], range(4), 2)
    assert next(loops)[0] == 0 and _LOCK_TAKEN.is_set()
    loops.close()
    shared = tqdm.std.TqdmDefaultWriteLock.mp_lock
    assert shared.acquire(timeout=60), "a terminated worker left tqdm's shared lock taken"
    shared.release()
    monkeypatch.setattr(parallel, "_fuzz_in_worker", _real_fuzz)
    again = parallel.forked_fuzz_loops(miner.setup_, [], range(2), 2)
    assert [seed for seed, _, _ in again] == [0, 1]
