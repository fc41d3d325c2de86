"""Antipode probes of search mode (``ScanConfig.antipode_probe``; our addition, not in the paper).

Task-agnostic backdoors plant PVs in opposite pairs, and a plain fuzz loop can miss one of a pair
for good. So after each PV ``v`` a fuzz loop finds, one extra fuzz loop, from the seed that found
``v``, is pulled towards ``-v`` (see :mod:`lmsanitator.scan.config`). Its acceptance is unchanged,
so a probe only returns a PV the model really collapses to. A PV found by a probe is not probed
itself, and each PV is probed once: the PV set remembers it (``losses[i]["probed"]``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from lmsanitator.scan.fuzz import FoundPV, fuzz_loop

if TYPE_CHECKING:
    from lmsanitator.scan.miner import PVMiner


def needs_probe(found: FoundPV) -> bool:
    """A PV a fuzz loop found whose antipode probe has not run."""
    return not found.probed and found.probe_of is None


def antipode_target(known: list[FoundPV], k: int) -> torch.Tensor | None:
    """-PV k, or None when a known PV already agrees with -PV k in >= 90% of signs (the probe
    would have nothing to find)."""
    anti = -known[k].pv
    agree = torch.stack([(q.pv.sign() == anti.sign()).float().mean() for q in known])
    return None if bool((agree >= 0.9).any()) else anti


def run_antipode_probes(miner: PVMiner, on_loop=None, progress: bool = False) -> None:
    """One antipode probe for every fuzz-found PV of ``miner`` not yet probed, including the PVs
    the probes themselves add (they are skipped: a probe's PV is not probed). ``on_loop(miner)``
    runs after each probe."""
    k = 0
    while k < len(miner.found_):
        if needs_probe(miner.found_[k]):
            miner.found_[k] = miner.found_[k].marked_probed()
            anti = antipode_target(miner.found_, k)
            if anti is not None:
                _probe(miner, k, anti, progress)
                if on_loop is not None:
                    on_loop(miner)
        k += 1


def _probe(miner: PVMiner, k: int, anti: torch.Tensor, progress: bool) -> None:
    source = miner.found_[k]
    seed = source.seed if source.seed is not None else miner.config.seed  # the init of the loop that found v
    cand, found = fuzz_loop(miner.setup_, seed, miner.pvs_, progress=progress, toward=anti)
    cand.probe_of = k
    if found is not None:
        found = dataclasses.replace(found, probe_of=k, probed=True)
    miner.keep(cand, found)
    miner.probes_run_ += 1
