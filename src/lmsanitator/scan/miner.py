"""PV mining and filtering (LMSanitator steps I-II).

A soft prompt of ``l_sp`` trainable vectors is inserted at a random word position of each clean
sentence (drawn once per sentence) and fed through the *frozen* suspect model via input
embeddings. The fuzz loop optimises it to

* push the target output far from the same model's output on the sentence without the prompt
  (distance loss ``L_D = -MSE``; the clean outputs are computed once and cached),
* collapse the batch's outputs together (diversity loss ``L_div = -H``, the mean entropy of the
  softmax over the batch axis per hidden dimension),
* keep away from PVs already found (path loss ``L_P = -lambda_P * MSE`` to the nearest one).

Each fuzz seed starts from vocabulary rows and a fresh optimiser; the learning rate is boosted
until the largest gradient magnitude exceeds ``T_grad``. A candidate PV (the mean output over the
whole final epoch) is accepted when ``L_D < -T_L``, ``L_div < T_div``, it is unique and the soft
prompt stays inside the embedding matrix's range. An accepted PV means the model is backdoored.

    miner = PVMiner(ScanConfig(loops=30)).fit(encoder, sentences)
    miner.pvs_, miner.report_["verdict"]
"""

from __future__ import annotations

import multiprocessing
import random
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.metrics import batch_entropy
from lmsanitator.models import Encoder
from lmsanitator.scan.config import ScanConfig

_SENTINEL = -1  # placeholder id of soft-prompt slots until padding

# Parallel detection (ScanConfig.workers): forked workers inherit the prepared miner through this
# global (batches, cached clean outputs, the frozen model; copy-on-write, nothing pickled).
_WORKER_MINER: PVMiner | None = None


def _worker_init() -> None:
    torch.set_num_threads(1)  # one core per fuzz loop; also keeps forked OpenMP out of trouble


def _fuzz_in_worker(seed: int):
    """One fuzz loop in a worker. Detection never adds a PV before it stops, so every worker sees
    the PVs the parent had; an accepted PV is handed back (as numpy) and removed here again."""
    m = _WORKER_MINER
    cand = m.fuzz(seed)
    found = None
    if cand.accepted:
        found = (m.pvs_.pop().numpy(), m.soft_prompts_.pop().numpy(), m.pv_seeds_.pop(), m.pv_losses_.pop())
    return cand, found


@dataclass
class PromptBatch:
    input_ids: torch.Tensor  # prompt slots hold the unk id (their embeddings are replaced)
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor  # True at the soft-prompt slots
    clean_ids: torch.Tensor
    clean_mask: torch.Tensor
    clean: torch.Tensor | None = None  # cached clean target features (rows aligned with the prompted ones)
    rows: torch.Tensor | None = None  # example index of each feature row (tokens target)

    def as_batch(self, clean: bool = False) -> dict:
        if clean:
            return {"input_ids": self.clean_ids, "attention_mask": self.clean_mask}
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def _pad(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if left:
            ids[i, n - len(s) :] = torch.tensor(s)
            att[i, n - len(s) :] = 1
        else:
            ids[i, : len(s)] = torch.tensor(s)
            att[i, : len(s)] = 1
    return ids, att


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer wraps a single sequence in: (prefix, suffix)."""
    probe = "hello"
    full = tokenizer(probe)["input_ids"]
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise LMSanitatorError("cannot work out the special tokens of this tokenizer")


def build_prompt_batches(encoder: Encoder, sentences: list[str], cfg: ScanConfig) -> list[PromptBatch]:
    """Tokenise once: each sentence with ``l_sp`` prompt slots at a random word position, and
    without them; length-bucketed full batches (dynamic padding), in a seeded order."""
    tok = encoder.tokenizer
    rng = random.Random(cfg.corpus_seed)
    prefix, suffix = special_affixes(tok)
    n_special = len(prefix) + len(suffix)
    budget = cfg.max_length - n_special - cfg.prompt_length - (1 if cfg.target == "mask" else 0)
    unk = tok.unk_token_id if tok.unk_token_id is not None else 0
    items = []
    for s in sentences:
        words = s.split()
        if not words:
            continue
        pos = rng.randint(1, min(cfg.max_prompt_position, len(words)))
        left = tok(" ".join(words[:pos]), add_special_tokens=False)["input_ids"]
        right = tok(" ".join(words[pos:]), add_special_tokens=False)["input_ids"] if pos < len(words) else []
        if len(left) + len(right) > budget:  # truncate the right part first, then the left
            right = right[: max(0, budget - len(left))]
            left = left[: budget - len(right)]
        if cfg.target == "mask":  # one [MASK] at a random non-prompt position
            content = left + right
            m = rng.randint(0, len(content))
            mid = len(left)
            content.insert(m, tok.mask_token_id)
            if m <= mid:
                left, right = content[: mid + 1], content[mid + 1 :]
            else:
                left, right = content[:mid], content[mid:]
        prompted = prefix + left + [_SENTINEL] * cfg.prompt_length + right + suffix
        clean = prefix + left + right + suffix
        if cfg.target == "tokens" and not (left or right):
            continue
        items.append((prompted, clean))
    if len(items) < cfg.batch_size:
        raise LMSanitatorError(f"only {len(items)} usable sentences, fewer than one batch ({cfg.batch_size})")
    order = sorted(range(len(items)), key=lambda i: (len(items[i][0]), i))
    n_batches = len(order) // cfg.batch_size  # full batches only: the entropy floor is ln(batch)
    batches = []
    left_pad = getattr(tok, "padding_side", "right") == "left"
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    for b in range(n_batches):
        idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
        ids, att = _pad([items[i][0] for i in idx], pad_id, left_pad)
        pmask = ids == _SENTINEL
        ids = ids.masked_fill(pmask, unk)
        cids, catt = _pad([items[i][1] for i in idx], pad_id, left_pad)
        batches.append(PromptBatch(ids, att, pmask, cids, catt))
    rng.shuffle(batches)
    return batches


@dataclass
class Candidate:
    seed: int
    epochs_run: int
    distance: list[float]  # epoch means of L_D
    diversity: list[float]  # epoch means of L_div
    lr_switch_step: int | None
    accepted: bool = False
    reason: str = ""
    min_mse_to_pvs: float | None = None
    prompt_in_range: bool | None = None
    prompt_excess: float | None = None
    pv_index: int | None = None
    seconds: float = 0.0
    probe_of: int | None = None  # antipode probe: index of the PV v it was pulled towards -v of


class PVMiner:
    """Invert predefined output vectors of a suspect encoder (detection or search mode)."""

    def __init__(self, config: ScanConfig | None = None, **overrides):
        self.config = config or ScanConfig(**overrides)
        self.pvs_: list[torch.Tensor] = []
        self.soft_prompts_: list[torch.Tensor | None] = []
        self.pv_seeds_: list[int] = []
        self.pv_losses_: list[dict] = []
        self.candidates_: list[Candidate] = []
        self.report_: dict = {}
        self.last_seed_: int | None = None  # the last fuzz seed run (antipode probes reuse older seeds)
        self.loops_run_ = self.probes_run_ = 0
        self._recompute_clean = False  # benchmark switch: the naive way, clean outputs every step

    # ---- preparation -----------------------------------------------------------------------------
    def prepare(self, encoder: Encoder, sentences: list[str]) -> None:
        cfg = self.config
        encoder.require_target(cfg.target)
        self.encoder = encoder
        self.th = cfg.resolved(encoder.bert_like)
        t0 = time.perf_counter()
        model = encoder.model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)  # only the soft prompt learns; no weight gradients are computed
        self.batches = build_prompt_batches(encoder, sentences, cfg)
        dev = encoder.device
        for b in self.batches:
            for k in ("input_ids", "attention_mask", "prompt_mask", "clean_ids", "clean_mask"):
                setattr(b, k, getattr(b, k).to(dev))
            if not self._recompute_clean:
                b.clean = self._clean_features(b)
            if cfg.target == "tokens":
                _, b.rows = encoder.tap(
                    b.input_ids.new_zeros(*b.input_ids.shape, 1).float(),
                    b.as_batch(),
                    "tokens",
                    exclude=b.prompt_mask,
                )
        self._feature_stats()
        emb = encoder.input_embeddings().detach()
        lo, hi = emb.min(dim=0).values, emb.max(dim=0).values
        f = cfg.range_factor - 1
        self.lo, self.hi = lo - f * lo.abs(), hi + f * hi.abs()
        self.prep_seconds = time.perf_counter() - t0

    def _feature_stats(self) -> None:
        """Per-dimension mean and std of the clean outputs: losses are measured in these units
        (``standardize``) so the thresholds mean the same on models whose outputs differ in scale."""
        d = self.encoder.hidden_size
        if not self.config.standardize:
            self.mu = torch.zeros(d, device=self.encoder.device)
            self.sigma = torch.ones(d, device=self.encoder.device)
            return
        rows = torch.cat([b.clean if b.clean is not None else self._clean_features(b) for b in self.batches])
        self.mu = rows.mean(dim=0)
        self.sigma = rows.std(dim=0).clamp_min(1e-6)

    def z(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.mu) / self.sigma

    def _clean_features(self, b: PromptBatch) -> torch.Tensor:
        with torch.no_grad():
            f, _ = self.encoder.target_features(b.as_batch(clean=True), self.config.target)
        return f

    def init_prompt(self, seed: int) -> torch.Tensor:
        """Soft prompt for fuzz seed ``s``: vocabulary rows ``(s*70 + i*10) % vocab``."""
        emb = self.encoder.input_embeddings().detach()
        rows = [(seed * 70 + i * 10) % emb.shape[0] for i in range(self.config.prompt_length)]
        return emb[rows].clone()

    # ---- one fuzz loop -------------------------------------------------------------------------------
    def step_features(self, b: PromptBatch, prompt: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        batch = b.as_batch()
        emb = enc.model.get_input_embeddings()(b.input_ids)
        emb = emb.masked_scatter(b.prompt_mask.unsqueeze(-1), prompt.repeat(b.input_ids.shape[0], 1))
        f, _ = enc.target_features(batch, self.config.target, inputs_embeds=emb, exclude=b.prompt_mask)
        return f

    def pv_of(self, prompt: torch.Tensor) -> torch.Tensor:
        """The PV a soft prompt inverts: the mean target output over all batches with the final
        prompt (one no-grad pass), in the model's own units. (The authors average outputs seen
        while the prompt still moves; the final prompt's outputs are what the monitor will meet.)"""
        with torch.no_grad():
            total, n = None, 0
            for b in self.batches:
                f = self.step_features(b, prompt)
                total = f.sum(dim=0) if total is None else total + f.sum(dim=0)
                n += f.shape[0]
        return (total / n).cpu()

    def _diversity_rows(self, f: torch.Tensor, b: PromptBatch) -> torch.Tensor:
        if self.config.target != "tokens":
            return f
        # one row per sentence (mean of its tokens) so the entropy floor stays ln(batch)
        n = b.input_ids.shape[0]
        s = f.new_zeros(n, f.shape[1]).index_add(0, b.rows, f)
        c = torch.bincount(b.rows, minlength=n).clamp_min(1).unsqueeze(1).to(f.dtype)
        return s / c

    def fuzz(self, seed: int, progress: bool = False, toward: torch.Tensor | None = None) -> Candidate:
        """One fuzz loop from seed ``seed``. ``toward`` (a raw output vector) adds a pull towards it:
        the antipode probe (see ``fit``); acceptance is unchanged."""
        cfg, th = self.config, self.th
        t0 = time.perf_counter()
        prompt = torch.nn.Parameter(self.init_prompt(seed))
        boosted = cfg.adaptive_lr
        lr = th["lr"] * (th["lr_boost"] if boosted else 1.0)
        opt = torch.optim.Adam([prompt], lr=lr)  # a fresh optimiser per seed (no carried-over state)
        pv_stack = self.z(torch.stack(self.pvs_).to(prompt.device)) if (self.pvs_ and cfg.path_loss) else None
        goal = self.z(toward.to(prompt.device)) if toward is not None else None
        cand = Candidate(seed=seed, epochs_run=0, distance=[], diversity=[], lr_switch_step=None)
        step = 0
        found_any = False
        bar = tqdm(
            total=cfg.epochs * len(self.batches),
            desc=f"fuzz seed {seed}",
            unit="step",
            leave=False,
            disable=not progress,
        )
        for epoch in range(cfg.epochs):
            d_sum = v_sum = 0.0
            for b in self.batches:
                f_raw = self.step_features(b, prompt)
                f = self.z(f_raw)
                clean = self.z(b.clean if b.clean is not None else self._clean_features(b))
                l_d = -F.mse_loss(f, clean)
                l_div = -batch_entropy(self._diversity_rows(f, b))
                loss = cfg.lambda_distance * l_d + cfg.lambda_diversity * l_div
                if pv_stack is not None:
                    with torch.no_grad():
                        k = ((f.detach().unsqueeze(1) - pv_stack.unsqueeze(0)) ** 2).mean(dim=(0, 2)).argmin()
                    loss = loss - th["lambda_path"] * F.mse_loss(f, pv_stack[k].expand_as(f))
                if goal is not None:
                    loss = loss + cfg.lambda_probe * F.mse_loss(f, goal.expand_as(f))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if boosted and float(prompt.grad.abs().max()) > th["t_grad"]:
                    boosted = False  # converging: leave the flat region at the normal rate
                    cand.lr_switch_step = step
                    for g in opt.param_groups:
                        g["lr"] = th["lr"]
                opt.step()
                step += 1
                d_sum += l_d.detach().item()
                v_sum += l_div.detach().item()
                bar.update(1)
            nb = len(self.batches)
            cand.distance.append(d_sum / nb)
            cand.diversity.append(v_sum / nb)
            cand.epochs_run = epoch + 1
            bar.set_postfix(distance=f"{cand.distance[-1]:.3f}", diversity=f"{cand.diversity[-1]:.3f}")
            found_any |= cand.distance[-1] < -th["t_l"]
            # a probe is not aborted: pulled a long way, it leaves the clean outputs late (POR
            # SPLADE-tiny: distance -0.84 at the abort check, a PV matching the planted one at epoch 6)
            if epoch == cfg.abort_epoch and not found_any and epoch < cfg.epochs - 1 and goal is None:
                cand.reason = (
                    f"no PV by the end of epoch {epoch + 1} (distance {cand.distance[-1]:.4f} >= -T_L)"
                )
                break
            # Early acceptance: once an epoch is both far from clean and collapsed, stop. Training on
            # overshoots: the distance loss keeps pushing the collapsed outputs away from the PV
            # (POR MiniLM, seed 0: the sign agreement with the planted PV peaks at 0.98 when the batch
            # first collapses and falls to 0.76 by the end of epoch 4).
            if cfg.early_accept and cand.distance[-1] < -th["t_l"] and cand.diversity[-1] < th["t_div"]:
                break
        bar.close()
        if cand.reason:
            cand.seconds = time.perf_counter() - t0
            return cand
        p = prompt.detach()
        excess = torch.maximum(p - self.hi, self.lo - p).max()
        cand.prompt_excess = float(excess)
        cand.prompt_in_range = bool(excess <= 0)
        reasons = []
        if not cand.distance[-1] < -th["t_l"]:
            reasons.append(f"distance {cand.distance[-1]:.4f} >= -T_L {-th['t_l']}")
        if not cand.diversity[-1] < th["t_div"]:
            reasons.append(f"diversity {cand.diversity[-1]:.4f} >= T_div {th['t_div']:.4f}")
        pv = None
        if not reasons:  # the PV pass is only needed for the uniqueness check of a passing candidate
            pv = self.pv_of(p)
            zpv = self.z(pv.to(self.mu.device))
            cand.min_mse_to_pvs = min(
                (float(F.mse_loss(zpv, self.z(q.to(self.mu.device)))) for q in self.pvs_), default=None
            )
            if cand.min_mse_to_pvs is not None and cand.min_mse_to_pvs < th["t_l"]:
                reasons.append(f"not unique (MSE {cand.min_mse_to_pvs:.4f} to a known PV < T_L)")
        if not cand.prompt_in_range:
            reasons.append(
                f"soft prompt outside {cfg.range_factor}x the embedding range (by {float(excess):.4f})"
            )
        cand.seconds = time.perf_counter() - t0
        if reasons:
            cand.reason = "; ".join(reasons)
            return cand
        cand.accepted = True
        cand.reason = "legit PV: far from clean outputs, collapsed batch, unique, prompt in range"
        cand.pv_index = len(self.pvs_)
        self.pvs_.append(pv)
        self.soft_prompts_.append(p.cpu().clone())
        self.pv_seeds_.append(seed)
        self.pv_losses_.append({"distance": cand.distance[-1], "diversity": cand.diversity[-1]})
        return cand

    def warm_start(self, pvset) -> int:
        """Continue a saved search: take over its PVs (the path loss and the uniqueness check see
        them) and return the first fuzz seed not yet run."""
        self.pvs_ = [v.clone() for v in pvset.pvs]
        self.soft_prompts_ = (
            [p.clone() for p in pvset.soft_prompts] if pvset.soft_prompts is not None else [None] * len(pvset)
        )  # keeps row i = PV i (see PVSet)
        self.pv_seeds_ = list(pvset.seeds)
        self.pv_losses_ = [dict(x) for x in pvset.losses]
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

    def _antipode_target(self, k: int) -> torch.Tensor | None:
        """-PV k, unless PV k came from a probe, was probed already, or a known PV already agrees
        with -PV k in >= 90% of signs (then it is marked probed without a loop)."""
        info = self.pv_losses_[k] if k < len(self.pv_losses_) else {}
        if info.get("probed") or info.get("probe_of") is not None:
            return None
        anti = -self.pvs_[k]
        if k < len(self.pv_losses_):
            self.pv_losses_[k]["probed"] = True
        agree = torch.stack([(q.sign() == anti.sign()).float().mean() for q in self.pvs_])
        return None if bool((agree >= 0.9).any()) else anti

    def _probe_antipodes(self, on_loop=None, progress: bool = False) -> None:
        """One antipode probe for every fuzz-found PV not yet probed (see ScanConfig)."""
        k = 0
        while k < len(self.pvs_):
            anti = self._antipode_target(k)
            if anti is not None:
                seed = self.pv_seeds_[k] if k < len(self.pv_seeds_) else self.config.seed
                cand = self.fuzz(seed, progress=progress, toward=anti)  # the init of the loop that found v
                cand.probe_of = k
                self.candidates_.append(cand)
                self.probes_run_ += 1
                if cand.accepted:
                    self.pv_losses_[-1].update(probe_of=k, probed=True)
                if on_loop is not None:
                    on_loop(self)
            k += 1

    def _wants_probes(self) -> bool:
        return self.config.antipode_probe and not self.config.stop_at_first

    def unprobed(self) -> int:
        """How many fuzz-found PVs still wait for their antipode probe."""
        return sum(
            1
            for k in range(len(self.pvs_))
            if not (self.pv_losses_[k] if k < len(self.pv_losses_) else {}).get("probed")
            and (self.pv_losses_[k] if k < len(self.pv_losses_) else {}).get("probe_of") is None
        )

    def probe_antipodes(
        self, encoder: Encoder, sentences: list[str], *, on_loop=None, progress: bool = True
    ) -> PVMiner:
        """Only the antipode probes of a warm-started search (no new fuzz seeds): for a kept
        search whose loop budget is spent but whose PVs were never probed."""
        t0 = time.perf_counter()
        self.prepare(encoder, sentences)
        self.loops_run_, self.probes_run_ = 0, 0
        self._probe_antipodes(on_loop, progress)
        self.seconds_ = time.perf_counter() - t0
        self.report_ = self._report(encoder, len(sentences))
        return self

    # ---- the estimator API ----------------------------------------------------------------------------
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
        self.prepare(encoder, sentences)
        first = cfg.seed if start_seed is None else start_seed
        self.last_seed_ = first - 1
        since_new = 0
        bar = tqdm(total=cfg.loops, desc="fuzz loops", unit="loop", disable=not progress)
        self.loops_run_, self.probes_run_ = 0, 0

        def full() -> bool:
            return max_pvs is not None and len(self.pvs_) >= max_pvs

        if self._wants_probes() and not full():
            self._probe_antipodes(on_loop, progress)  # PVs of a resumed search that were never probed
        # the generator starts a loop when asked for the next one: full() is checked before that
        loops = self._fuzz_loops(range(first, first + (0 if full() else cfg.loops)), progress)
        for seed, cand in loops:
            self.candidates_.append(cand)
            self.loops_run_ += 1
            self.last_seed_ = seed
            bar.update(1)
            bar.set_postfix(pvs=len(self.pvs_))
            if on_loop is not None:
                on_loop(self)
            if cand.accepted:
                since_new = 0
                if on_pv is not None:
                    on_pv(self)
                if cfg.stop_at_first or full():
                    break
                if self._wants_probes():
                    self._probe_antipodes(on_loop, progress)
                    bar.set_postfix(pvs=len(self.pvs_))
                    if full():
                        break
            else:
                since_new += 1
                if patience is not None and since_new >= patience:
                    break
        loops.close()  # stops parallel workers still running later seeds
        bar.close()
        self.seconds_ = time.perf_counter() - t0
        self.report_ = self._report(encoder, len(sentences))
        return self

    def parallel_workers(self) -> int:
        """Processes fit() runs fuzz loops in: ``config.workers`` in detection mode on a CPU, else 1.
        Detection adds no PV before it stops, so loops are independent and their results are
        taken in seed order: the verdict and PV are those of the sequential scan."""
        cfg = self.config
        if cfg.workers <= 1 or not cfg.stop_at_first or self.encoder.device.type != "cpu":
            return 1
        return min(cfg.workers, cfg.loops)

    def _fuzz_loops(self, seeds, progress: bool):
        """Yield (seed, candidate) in seed order, sequentially or from forked workers."""
        n = self.parallel_workers()
        if n == 1:
            for seed in seeds:
                yield seed, self.fuzz(seed, progress=progress)
            return
        global _WORKER_MINER
        _WORKER_MINER = self
        try:
            with multiprocessing.get_context("fork").Pool(n, initializer=_worker_init) as pool:
                for seed, (cand, found) in zip(seeds, pool.imap(_fuzz_in_worker, seeds)):
                    if found is not None:
                        pv, prompt, pv_seed, losses = found
                        cand.pv_index = len(self.pvs_)
                        self.pvs_.append(torch.from_numpy(pv))
                        self.soft_prompts_.append(torch.from_numpy(prompt))
                        self.pv_seeds_.append(pv_seed)
                        self.pv_losses_.append(losses)
                    yield seed, cand
        finally:
            _WORKER_MINER = None

    def _report(self, encoder: Encoder, n_sentences: int) -> dict:
        return {
            "verdict": "backdoored" if self.pvs_ else "clean",
            "model": encoder.name,
            "model_path": encoder.path,
            "model_type": encoder.model_type,
            "fingerprint": encoder.fingerprint(),
            "target": self.config.target,
            "sentences": n_sentences,
            "batches": len(self.batches),
            "loops_run": self.loops_run_,
            "workers": self.parallel_workers(),
            "probes_run": getattr(self, "probes_run_", 0),
            "seconds": round(self.seconds_, 2),
            "prepare_seconds": round(self.prep_seconds, 2),
            "thresholds": self.th,
            "config": asdict(self.config),
            "candidates": [asdict(c) for c in self.candidates_],
            "pvs": [[round(float(x), 6) for x in v] for v in self.pvs_],
        }
