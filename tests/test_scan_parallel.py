"""Forked fuzz-loop workers: a worker that dies is an error, not a hang."""

import multiprocessing
import os

import pytest

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
