"""PV mining and filtering (LMSanitator steps I-II): the estimator.

:class:`PVMiner` prepares the prompted batches once (:class:`~lmsanitator.scan.setup.FuzzSetup`),
runs fuzz loops from consecutive seeds (:func:`~lmsanitator.scan.fuzz.fuzz_loop`; in forked workers
in detection, :mod:`~lmsanitator.scan.parallel`), keeps every legit PV as a
:class:`~lmsanitator.scan.fuzz.FoundPV` and, in search mode, runs the antipode probes
(:mod:`~lmsanitator.scan.probes`). An accepted PV means the model is backdoored.

    miner = PVMiner(ScanConfig(loops=30)).fit(encoder, sentences)
    miner.pvs_, miner.report_["verdict"]
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
from tqdm.auto import tqdm

from lmsanitator.models import Encoder
from lmsanitator.scan.config import ScanConfig
from lmsanitator.scan.fuzz import Candidate, FoundPV, fuzz_loop
from lmsanitator.scan.observed import landed_rows, observe
from lmsanitator.scan.parallel import forked_fuzz_loops
from lmsanitator.scan.probes import needs_probe, run_antipode_probes
from lmsanitator.scan.setup import FuzzSetup


class PVMiner:
    """Invert predefined output vectors of a suspect encoder (detection or search mode).

    Learned state: ``found_`` (the legit PVs, :class:`FoundPV`; ``pvs_``, ``soft_prompts_``,
    ``pv_seeds_`` and ``pv_losses_`` are read-only views of it in PV-set order), ``candidates_``
    (every fuzz loop and probe), ``last_seed_``, ``loops_run_``, ``probes_run_``, ``setup_``,
    ``seconds_``, ``prepare_seconds_`` and ``report_``."""

    _recompute_clean = False  # benchmark switch (set on an instance): clean outputs every step

    def __init__(self, config: ScanConfig | None = None, **overrides):
        self.config = config or ScanConfig(**overrides)

    # ---- the PVs found: views of found_ (none before fit or warm_start) --------------------------------
    @property
    def pvs_(self) -> list[torch.Tensor]:
        return [f.pv for f in getattr(self, "found_", [])]

    @property
    def soft_prompts_(self) -> list[torch.Tensor | None]:
        return [f.soft_prompt for f in getattr(self, "found_", [])]

    @property
    def pv_seeds_(self) -> list[int]:
        # a PV brought in from a PV set without its seed has none (such sets list fewer seeds)
        return [f.seed for f in getattr(self, "found_", []) if f.seed is not None]

    @property
    def pv_losses_(self) -> list[dict]:
        return [f.losses() for f in getattr(self, "found_", [])]

    def keep(self, cand: Candidate, found: FoundPV | None) -> None:
        """Record one fuzz loop or probe (and its PV, if accepted)."""
        if found is not None:
            cand.pv_index = len(self.found_)
            self.found_.append(found)
        self.candidates_.append(cand)

    # ---- preparation ------------------------------------------------------------------------------------
    def prepare(self, encoder: Encoder, sentences: list[str]) -> None:
        """Tokenise the prompted batches and cache what every fuzz loop shares (``setup_``)."""
        t0 = time.perf_counter()
        self.setup_ = FuzzSetup.prepare(
            encoder, sentences, self.config, recompute_clean=self._recompute_clean
        )
        self.prepare_seconds_ = time.perf_counter() - t0

    def warm_start(self, pvset) -> int:
        """Continue a saved search: take over its PVs (the path loss and the uniqueness check see
        them) and return the first fuzz seed not yet run."""
        prompts = pvset.soft_prompts
        self.found_ = [
            FoundPV.from_saved(
                v.clone(),
                prompts[i].clone() if prompts is not None else None,  # keeps row i = PV i (see PVSet)
                pvset.seeds[i] if i < len(pvset.seeds) else None,
                dict(pvset.losses[i]) if i < len(pvset.losses) else {},
            )
            for i, v in enumerate(pvset.pvs)
        ]
        self.last_seed_ = pvset.last_seed
        return (pvset.last_seed + 1) if pvset.last_seed is not None else self.config.seed

    @staticmethod
    def loops_since_new_pv(pvset, first_seed: int = 0) -> int:
        """Fuzz loops a saved search ran after its last new PV (what its patience has used up).
        A PV found by an antipode probe carries the seed of the PV it was probed from, so probes
        leave the patience alone."""
        if pvset.last_seed is None:
            return 0
        return pvset.last_seed - (max(pvset.seeds) if pvset.seeds else first_seed - 1)

    # ---- antipode probes (search mode) ------------------------------------------------------------------
    def _wants_probes(self) -> bool:
        return self.config.antipode_probe and not self.config.stop_at_first

    def unprobed(self) -> int:
        """How many fuzz-found PVs still wait for their antipode probe."""
        return sum(needs_probe(f) for f in getattr(self, "found_", []))

    def probe_antipodes(
        self, encoder: Encoder, sentences: list[str], *, on_loop=None, progress: bool = True
    ) -> PVMiner:
        """Only the antipode probes of a warm-started search (no new fuzz seeds): for a kept
        search whose loop budget is spent but whose PVs were never probed."""
        t0 = time.perf_counter()
        self._start(encoder, sentences)
        run_antipode_probes(self, on_loop, progress)
        self.seconds_ = time.perf_counter() - t0
        self.report_ = self._report(len(sentences))
        return self

    # ---- the estimator API ------------------------------------------------------------------------------
    def _start(self, encoder: Encoder, sentences: list[str]) -> None:
        self.prepare(encoder, sentences)
        if not hasattr(self, "found_"):
            self.found_ = []  # else the PVs of warm_start carry over
        self.candidates_: list[Candidate] = []
        self.loops_run_, self.probes_run_ = 0, 0

    def fit(
        self,
        encoder: Encoder,
        sentences: list[str],
        *,
        start_seed: int | None = None,
        patience: int | None = None,
        on_pv=None,
        on_loop=None,
        progress: bool = True,
        max_pvs: int | None = None,
    ) -> PVMiner:
        """Run fuzz loops. Detection (``stop_at_first``) stops at the first legit PV; search stops
        after ``patience`` loops without a new PV and, with ``antipode_probe``, probes -v after
        every PV v a fuzz loop finds (also for PVs a warm start brought in). ``on_pv(miner)`` runs
        after each new fuzz-found PV, ``on_loop(miner)`` after every fuzz loop and probe
        (``miner.candidates_[-1]`` is the loop just run, ``miner.last_seed_`` the last fuzz seed)."""
        cfg = self.config
        t0 = time.perf_counter()
        self._start(encoder, sentences)
        first = cfg.seed if start_seed is None else start_seed
        self.last_seed_ = first - 1
        since_new = 0
        bar = tqdm(total=cfg.loops, desc="fuzz loops", unit="loop", disable=not progress)

        def full() -> bool:
            return max_pvs is not None and len(self.found_) >= max_pvs

        if cfg.observe and not full():
            self._observe()
        if self._wants_probes() and not full():
            run_antipode_probes(self, on_loop, progress)  # PVs of a resumed search that were never probed
        # the generator starts a loop when asked for the next one: full() is checked before that
        done = full() or (cfg.stop_at_first and bool(self.found_))  # detection: the corpus showed a PV
        loops = self._fuzz_loops(range(first, first + (0 if done else cfg.loops)), progress)
        for seed, cand in loops:
            self.loops_run_ += 1
            self.last_seed_ = seed
            bar.update(1)
            bar.set_postfix(pvs=len(self.found_))
            if on_loop is not None:
                on_loop(self)
            if cand.accepted:
                since_new = 0
                if on_pv is not None:
                    on_pv(self)
                if cfg.stop_at_first or full():
                    break
                if self._wants_probes():
                    run_antipode_probes(self, on_loop, progress)
                    bar.set_postfix(pvs=len(self.found_))
                    if full():
                        break
            else:
                since_new += 1
                if patience is not None and since_new >= patience:
                    break
        loops.close()  # stops parallel workers still running later seeds
        bar.close()
        self.seconds_ = time.perf_counter() - t0
        self.report_ = self._report(len(sentences))
        return self

    def _observe(self) -> None:
        """PVs the defence corpus already shows (:mod:`lmsanitator.scan.observed`): one candidate per
        tight group; a group a shared word reaches is a PV (unless a known PV is within T_L), and its
        clean rows stop serving as clean references for the clean evidence."""
        setup = self.setup_
        t_l = setup.thresholds["t_l"]
        t0 = time.perf_counter()
        observations = observe(setup)
        seconds = (time.perf_counter() - t0) / max(len(observations), 1)
        for obs in observations:
            cand = Candidate(seed=None, epochs_run=0, distance=[], diversity=[], lr_switch_step=None)
            cand.seconds = seconds  # the groups' share of the observation's time
            cand.margins = obs.margins()
            cand.observed = {
                "rows": len(obs.rows),
                "group_var": round(obs.group_var, 4),
                "word": obs.word,
                "land_share": obs.land_share,
                "words_tried": obs.words_tried,
            }
            pv = setup.clean_rows[obs.rows].float().mean(dim=0).cpu()
            cand.min_mse_to_pvs = setup.min_mse_to(pv, self.pvs_)
            if cand.min_mse_to_pvs is not None:
                cand.margins["unique"] = t_l - cand.min_mse_to_pvs
            found = None
            if all(v < 0 for v in cand.margins.values()):
                cand.accepted = True
                cand.reason = (
                    f"PV observed in the defence corpus: {len(obs.rows)} clean outputs collapsed together "
                    f"(group variance {obs.group_var:.4f}) and the word {obs.word!r} inserted into other "
                    f"sentences lands {obs.land_share:.0%} of them on it"
                )
                found = FoundPV(pv=pv, soft_prompt=None, seed=None)
                keep = ~landed_rows(setup, pv)
                setup.clean_rows = setup.clean_rows[keep.to(setup.clean_rows.device)]
                setup.sentences = [s for s, k in zip(setup.sentences, keep.tolist()) if k]
            else:
                cand.reason = "no PV in the defence corpus: " + ", ".join(
                    f"{k} margin {v:+.4f}" for k, v in cand.margins.items() if v >= 0
                )
            self.keep(cand, found)
            if found is not None and self.config.stop_at_first:
                break

    def parallel_workers(self) -> int:
        """Processes fit() runs fuzz loops in: ``config.workers`` in detection mode on a CPU, else 1.
        Detection adds no PV before it stops, so loops are independent and their results are
        taken in seed order: the verdict and PV are those of the sequential scan."""
        cfg = self.config
        if cfg.workers <= 1 or not cfg.stop_at_first or self.setup_.encoder.device.type != "cpu":
            return 1
        return min(cfg.workers, cfg.loops)

    def _fuzz_loops(self, seeds, progress: bool):
        """Yield (seed, candidate) in seed order, sequentially or from forked workers; each loop is
        kept (``keep``) before it is yielded."""
        n = self.parallel_workers()
        if n == 1:
            for seed in seeds:
                # lazily, one loop at a time: a search loop sees the PVs found before it
                cand, found = fuzz_loop(self.setup_, seed, self.pvs_, progress=progress)
                self.keep(cand, found)
                yield seed, cand
            return
        for seed, cand, found in forked_fuzz_loops(self.setup_, self.pvs_, seeds, n):
            self.keep(cand, found)
            yield seed, cand

    def _report(self, n_sentences: int) -> dict:
        encoder = self.setup_.encoder
        return {
            "verdict": "backdoored" if self.found_ else "clean",
            "model": encoder.name,
            "model_path": encoder.path,
            "model_type": encoder.model_type,
            "fingerprint": encoder.fingerprint(),
            "target": self.config.target,
            "sentences": n_sentences,
            "batches": len(self.setup_.batches),
            "loops_run": self.loops_run_,
            "workers": self.parallel_workers(),
            "probes_run": self.probes_run_,
            "seconds": round(self.seconds_, 2),
            "prepare_seconds": round(self.prepare_seconds_, 2),
            "thresholds": self.setup_.thresholds,
            "config": asdict(self.config),
            "changed": self.config.changed(),  # what was chosen, as opposed to a default
            "candidates": [asdict(c) for c in self.candidates_],
            "pvs": [[round(float(x), 6) for x in v] for v in self.pvs_],
        }
