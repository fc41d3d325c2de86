"""One fuzz loop (LMSanitator step I) and the filtering of its candidate PV (step II).

A soft prompt of ``l_sp`` trainable vectors, initialised from vocabulary rows chosen by the fuzz
seed, is fed through the *frozen* suspect model and optimised (a fresh Adam per seed) to

* push the target output far from the same model's output on the sentence without the prompt
  (distance loss ``L_D = -MSE``),
* collapse the batch's outputs together (diversity loss ``L_div = -H``, the mean entropy of the
  softmax over the batch axis per hidden dimension),
* keep away from PVs already found (path loss ``L_P = -lambda_P * MSE`` to the nearest one),
* for an antipode probe only, move towards ``-v`` of a PV ``v`` found before (``lambda_probe * MSE``).

The adaptive learning rate starts at ``lr_boost x lr`` until the largest gradient magnitude exceeds
``T_grad``. A loop with no PV by ``abort_epoch`` is abandoned. An early-accepted loop settles for up to
``settle_epochs`` more epochs (:func:`_settle`, issue 19) before its PV is read. The candidate PV (the
mean output with the final prompt) is accepted when ``L_D < -T_L``, ``L_div < T_div`` (or, at the end
of a loop, its relative spread < ``t_spread``: :func:`_collapse_margins`, issue 19), it is unique
(MSE to every known PV >= ``T_L``), the clean sentences nearest to it are not already collapsed
(``t_clean_div``, :mod:`lmsanitator.scan.evidence`: a class direction is not a PV) and the soft prompt
stays inside the widened embedding range.

Every candidate records ``margins``: rule -> margin in that rule's units, positive when the rule rejects
it (``t_l``, ``t_div`` - ``collapse`` while ``t_spread`` is on -, ``prompt_range``, and
``unique``/``t_clean_div`` where they were evaluated); it is accepted iff all are negative. Candidates
with ``seed`` None are groups of clean outputs that :mod:`lmsanitator.scan.observed` tested before the
fuzz loops.

:func:`fuzz_loop` is a pure function of the prepared :class:`FuzzSetup` and the PVs known when the
loop starts: it returns the :class:`Candidate` and, when accepted, a :class:`FoundPV`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmsanitator.metrics import batch_entropy
from lmsanitator.scan.evidence import clean_evidence
from lmsanitator.scan.prompts import PromptBatch
from lmsanitator.scan.setup import FuzzSetup


@dataclass
class Candidate:
    """One fuzz loop's record (the report's ``candidates``)."""

    seed: int | None  # None: a PV observed in the defence corpus (scan.observed), no fuzz loop
    epochs_run: int
    distance: list[float]  # epoch means of L_D
    diversity: list[float]  # epoch means of L_div
    lr_switch_step: int | None
    # epoch means of the batch's relative spread (per-dimension variance over the mean squared
    # displacement from the clean outputs, clean-std units): the collapse that survives a Wasserstein
    # attacker (see _collapse_margins)
    spread: list[float] = dataclasses.field(default_factory=list)
    accepted: bool = False
    reason: str = ""
    min_mse_to_pvs: float | None = None
    prompt_in_range: bool | None = None
    prompt_excess: float | None = None
    pv_index: int | None = None
    seconds: float = 0.0
    probe_of: int | None = None  # antipode probe: index of the PV v it was pulled towards -v of
    settle_diversity: list[float] = dataclasses.field(default_factory=list)  # epochs after acceptance
    clean_evidence: dict | None = None  # evidence.clean_evidence of a candidate that passed the rest
    t_clean_div: float | None = None  # the threshold its nn_diversity was held against
    # rule -> margin in that rule's own units, for every rule evaluated on the candidate: positive = the
    # rule rejects it, negative = it passes (accepted iff all are negative)
    margins: dict = dataclasses.field(default_factory=dict)
    observed: dict | None = None  # scan.observed: the group and word probe behind an observed PV


@dataclass(frozen=True)
class FoundPV:
    """A legit PV and how it was found (one row of a PV set)."""

    pv: torch.Tensor  # the mean target output with the final soft prompt, in the model's units
    soft_prompt: torch.Tensor | None  # None: brought in from a PV set saved without prompts
    seed: int | None  # the fuzz seed (a probe: the seed of the PV it was probed from); None: not saved
    distance: float | None = None  # L_D of the accepting epoch (None: not saved with the PV)
    diversity: float | None = None  # L_div of the accepting epoch
    probe_of: int | None = None  # found by the antipode probe of PV ``probe_of``
    probed: bool = False  # its own antipode probe has run (or was not needed)

    def losses(self) -> dict:
        """The PV set's ``losses`` entry (keys in the order earlier versions wrote them)."""
        d: dict = {}
        if self.distance is not None:
            d["distance"] = self.distance
        if self.diversity is not None:
            d["diversity"] = self.diversity
        if self.probe_of is not None:
            d["probe_of"] = self.probe_of
        if self.probed:
            d["probed"] = True
        return d

    @classmethod
    def from_saved(cls, pv, soft_prompt, seed: int | None, losses: dict) -> FoundPV:
        return cls(
            pv=pv,
            soft_prompt=soft_prompt,
            seed=seed,
            distance=losses.get("distance"),
            diversity=losses.get("diversity"),
            probe_of=losses.get("probe_of"),
            probed=bool(losses.get("probed", False)),
        )

    def marked_probed(self) -> FoundPV:
        return dataclasses.replace(self, probed=True)


@dataclass
class _Loop:
    """The mutable state of one fuzz loop."""

    prompt: torch.nn.Parameter
    opt: torch.optim.Optimizer
    boosted: bool  # adaptive lr: still at lr_boost x lr
    path_pvs: torch.Tensor | None  # known PVs in clean-std units (path loss), None: no path loss
    goal: torch.Tensor | None  # antipode probe: -v in clean-std units
    cand: Candidate
    bar: tqdm
    step: int = 0
    settling: bool = False  # after acceptance: pulled back towards the clean outputs (see _settle)
    spread: float = float("nan")  # the last epoch's mean relative spread


def fuzz_loop(
    setup: FuzzSetup,
    seed: int,
    known: list[torch.Tensor],
    *,
    progress: bool = False,
    toward: torch.Tensor | None = None,
) -> tuple[Candidate, FoundPV | None]:
    """One fuzz loop from seed ``seed`` against the PVs ``known`` so far. ``toward`` (a raw output
    vector) adds a pull towards it: the antipode probe; acceptance is unchanged."""
    t0 = time.perf_counter()
    loop = _start_loop(setup, seed, known, toward, progress)
    _train(setup, loop)
    loop.bar.close()
    cand = loop.cand
    if cand.reason:  # abandoned at the abort check
        cand.seconds = time.perf_counter() - t0
        return cand, None
    p = loop.prompt.detach()
    pv = _filter(setup, cand, p, known)
    cand.seconds = time.perf_counter() - t0
    if pv is None:
        return cand, None
    cand.accepted = True
    cand.reason = "legit PV: far from clean outputs, collapsed batch, unique, prompt in range"
    found = FoundPV(
        pv=pv,
        soft_prompt=p.cpu().clone(),
        seed=seed,
        distance=cand.distance[-1],
        diversity=cand.diversity[-1],
    )
    return cand, found


def _start_loop(setup: FuzzSetup, seed, known, toward, progress: bool) -> _Loop:
    """Soft prompt from vocabulary rows, a fresh optimiser at the (boosted) learning rate."""
    cfg, th = setup.config, setup.thresholds
    prompt = torch.nn.Parameter(setup.init_soft_prompt(seed))
    boosted = cfg.adaptive_lr
    lr = th["lr"] * (th["lr_boost"] if boosted else 1.0)
    opt = torch.optim.Adam([prompt], lr=lr)  # a fresh optimiser per seed (no carried-over state)
    path_pvs = setup.z(torch.stack(known).to(prompt.device)) if (known and cfg.path_loss) else None
    goal = setup.z(toward.to(prompt.device)) if toward is not None else None
    bar = tqdm(
        total=cfg.epochs * len(setup.batches),
        desc=f"fuzz seed {seed}",
        unit="step",
        leave=False,
        disable=not progress,
    )
    cand = Candidate(seed=seed, epochs_run=0, distance=[], diversity=[], lr_switch_step=None)
    return _Loop(prompt, opt, boosted, path_pvs, goal, cand, bar)


def _train(setup: FuzzSetup, loop: _Loop) -> None:
    """Epochs until the abort check gives up, an epoch passes T_L and T_div (early acceptance) or
    the last epoch; the epoch means go to the candidate."""
    cfg, th, cand = setup.config, setup.thresholds, loop.cand
    found_any = False
    for epoch in range(cfg.epochs):
        distance, diversity = _train_epoch(setup, loop)
        cand.distance.append(distance)
        cand.diversity.append(diversity)
        cand.spread.append(loop.spread)
        cand.epochs_run = epoch + 1
        loop.bar.set_postfix(distance=f"{distance:.3f}", diversity=f"{diversity:.3f}")
        found_any |= distance < -th["t_l"]
        # a probe is not aborted: pulled a long way, it leaves the clean outputs late (POR
        # SPLADE-tiny: distance -0.84 at the abort check, a PV matching the planted one at epoch 6)
        if epoch == cfg.abort_epoch and not found_any and epoch < cfg.epochs - 1 and loop.goal is None:
            cand.reason = f"no PV by the end of epoch {epoch + 1} (distance {distance:.4f} >= -T_L)"
            cand.margins = {"t_l": distance + th["t_l"]}
            return
        # Early acceptance: once an epoch is both far from clean and collapsed, stop. Training on
        # overshoots: the distance loss keeps pushing the collapsed outputs away from the PV
        # (POR MiniLM, seed 0: the sign agreement with the planted PV peaks at 0.98 when the batch
        # first collapses and falls to 0.76 by the end of epoch 4).
        if cfg.early_accept and distance < -th["t_l"] and diversity < th["t_div"]:
            _settle(setup, loop)
            return
    # a loop that ends collapsed by its relative spread alone (see _collapse_margins) settles too
    if distance < -th["t_l"] and th.get("t_spread") and loop.spread < th["t_spread"]:
        _settle(setup, loop)


def _settle(setup: FuzzSetup, loop: _Loop) -> None:
    """Up to ``settle_epochs`` epochs after early acceptance on the collapse (diversity) loss without
    the distance loss (plus ``settle_pull x MSE`` towards the clean outputs, 0 by default; a fresh
    optimiser at the base lr) while the diversity keeps improving and the batch stays far (T_L); the
    best epoch's prompt is kept.

    Why: the distance loss rewards going ever further, so by the time the batch collapses the outputs
    have overshot the planted PV (POR SPLADE-tiny: sign agreement 0.94-0.99 after epoch 1, 0.84 at
    acceptance, 0.76 three epochs later on the same loss). Without it the prompt moves to where the
    batch collapses tightest, the PV itself: 0.84 -> 0.91 there, adaptive POR cells 0.88-0.95 -> 0.95-1.00
    (``results/detection-rule/adaptive.md``)."""
    cfg, th, cand = setup.config, setup.thresholds, loop.cand
    if cfg.settle_epochs == 0:
        return
    best, keep = cand.diversity[-1], loop.prompt.detach().clone()
    loop.opt = torch.optim.Adam([loop.prompt], lr=th["lr"])
    loop.boosted, loop.settling = False, True
    for _ in range(cfg.settle_epochs):
        distance, diversity = _train_epoch(setup, loop)
        cand.settle_diversity.append(diversity)
        if not (diversity < best and distance < -th["t_l"]):
            break
        best, keep = diversity, loop.prompt.detach().clone()
    loop.settling = False
    with torch.no_grad():
        loop.prompt.copy_(keep)


def _train_epoch(setup: FuzzSetup, loop: _Loop) -> tuple[float, float]:
    """One pass over the batches, one optimiser step each; the epoch means of L_D and L_div (that of
    the relative spread goes to ``loop.spread``)."""
    d_sum = v_sum = s_sum = 0.0
    for b in setup.batches:
        loss, l_d, l_div, spread = _fuzz_losses(setup, b, loop)
        s_sum += spread
        loop.opt.zero_grad(set_to_none=True)
        loss.backward()
        _adapt_lr(setup.thresholds, loop)
        loop.opt.step()
        loop.step += 1
        d_sum += l_d.detach().item()
        v_sum += l_div.detach().item()
        loop.bar.update(1)
    nb = len(setup.batches)
    loop.spread = s_sum / nb
    return d_sum / nb, v_sum / nb


def _fuzz_losses(setup: FuzzSetup, b: PromptBatch, loop: _Loop):
    """The loss of one step, with its distance (L_D) and diversity (L_div) parts and the batch's
    relative spread (a statistic, no gradient)."""
    cfg, th = setup.config, setup.thresholds
    f = setup.z(setup.step_features(b, loop.prompt))
    clean = setup.z(setup.clean_of(b))
    l_d = -F.mse_loss(f, clean)
    rows = setup.diversity_rows(f, b)
    l_div = -batch_entropy(rows)
    with torch.no_grad():
        spread = float(rows.var(dim=0).mean() / (-l_d).clamp_min(1e-12))
    # settling (after acceptance): the collapse loss, with at most a pull back towards the clean outputs
    loss = cfg.lambda_diversity * l_div + (-cfg.settle_pull if loop.settling else cfg.lambda_distance) * l_d
    if loop.path_pvs is not None:  # path loss: away from the nearest known PV
        pvs = loop.path_pvs
        with torch.no_grad():
            k = ((f.detach().unsqueeze(1) - pvs.unsqueeze(0)) ** 2).mean(dim=(0, 2)).argmin()
        loss = loss - th["lambda_path"] * F.mse_loss(f, pvs[k].expand_as(f))
    if loop.goal is not None:  # antipode probe: towards -v
        loss = loss + cfg.lambda_probe * F.mse_loss(f, loop.goal.expand_as(f))
    return loss, l_d, l_div, spread


def _adapt_lr(th: dict, loop: _Loop) -> None:
    """End the boost once the largest soft-prompt gradient exceeds T_grad."""
    if loop.boosted and float(loop.prompt.grad.abs().max()) > th["t_grad"]:
        loop.boosted = False  # converging: leave the flat region at the normal rate
        loop.cand.lr_switch_step = loop.step
        for g in loop.opt.param_groups:
            g["lr"] = th["lr"]


def _filter(setup: FuzzSetup, cand: Candidate, prompt: torch.Tensor, known: list[torch.Tensor]):
    """PV filtering: the candidate's PV when it passes T_L, T_div, uniqueness and the prompt range;
    else None, with the reasons in ``cand.reason``."""
    th = setup.thresholds
    excess = setup.prompt_excess(prompt)
    cand.prompt_excess = float(excess)
    cand.prompt_in_range = bool(excess <= 0)
    reasons = []
    cand.margins = {
        "t_l": cand.distance[-1] + th["t_l"],
        **_collapse_margins(th, cand),
        "prompt_range": float(excess),
    }
    if not cand.distance[-1] < -th["t_l"]:
        reasons.append(f"distance {cand.distance[-1]:.4f} >= -T_L {-th['t_l']}")
    if not min(v for k, v in cand.margins.items() if k in ("t_div", "collapse")) < 0:
        also = f" and relative spread {cand.spread[-1]:.5f} >= t_spread" if "collapse" in cand.margins else ""
        reasons.append(f"diversity {cand.diversity[-1]:.4f} >= T_div {th['t_div']:.4f}{also}")
    pv = None
    if not reasons:  # the PV pass is only needed for the uniqueness check of a passing candidate
        pv = setup.pv_of(prompt)
        cand.min_mse_to_pvs = setup.min_mse_to(pv, known)
        if cand.min_mse_to_pvs is not None:
            cand.margins["unique"] = th["t_l"] - cand.min_mse_to_pvs
        if cand.min_mse_to_pvs is not None and cand.min_mse_to_pvs < th["t_l"]:
            reasons.append(f"not unique (MSE {cand.min_mse_to_pvs:.4f} to a known PV < T_L)")
    if not reasons:  # the PV is far, collapsed and new: is it where clean sentences already go?
        _check_clean_evidence(setup, cand, pv, reasons)
    if not cand.prompt_in_range:
        reasons.append(
            f"soft prompt outside {setup.config.range_factor}x the embedding range (by {float(excess):.4f})"
        )
    if reasons:
        cand.reason = "; ".join(reasons)
        return None
    return pv


def _collapse_margins(th: dict, cand: Candidate) -> dict:
    """The collapse test's margin: ``t_div`` (diversity - T_div) alone, or, with ``t_spread`` on,
    ``collapse`` = the smaller of that and ln(spread / t_spread): the batch is collapsed when either
    test passes. Why the second: a Wasserstein attacker ties each triggered output's sorted values to
    its clean output's, so the triggered batch keeps 8-10% of the clean per-dimension spread and fails
    T_div (real trigger: -3.42 against -3.446), but it sits far out (squared displacement ~26 clean
    variances), so relative to how far it moved it is collapsed; a clean model's soft prompt moves its
    outputs less far for the same spread (``results/detection-rule/adaptive.md``)."""
    div = cand.diversity[-1] - th["t_div"]
    limit = th.get("t_spread")
    if limit is None or not cand.spread:
        return {"t_div": div}
    return {"collapse": min(div, math.log(max(cand.spread[-1], 1e-12) / limit))}


def _check_clean_evidence(setup: FuzzSetup, cand: Candidate, pv: torch.Tensor, reasons: list[str]) -> None:
    """Reject a class direction: a PV whose nearest clean outputs the model already collapses below
    ``t_clean_div`` (see :mod:`lmsanitator.scan.evidence`)."""
    limit = setup.thresholds["t_clean_div"]
    if limit is None or setup.clean_rows is None:
        return
    cand.t_clean_div = limit
    ev = clean_evidence(pv, setup.clean_rows, setup.config.batch_size)
    cand.clean_evidence = {k: round(v, 4) for k, v in ev.items()}
    cand.margins["t_clean_div"] = limit - ev["nn_diversity"]
    if not ev["nn_diversity"] > limit:
        reasons.append(
            f"clean evidence: the {setup.config.batch_size} clean outputs nearest the PV already have "
            f"diversity {ev['nn_diversity']:.4f} <= t_clean_div {limit} (a clean cluster, not a PV)"
        )
