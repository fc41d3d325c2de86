"""Trigger removal (the paper's Algorithm 2), done as a real defender would, within a budget.

For a flagged input, windows of 1..w_max consecutive words slide over each text field; a
candidate removes the window's words wherever they occur *as the tokenizer sees them* (every
occurrence, other case spellings an uncased tokenizer folds, punctuation glued on; see
:mod:`lmsanitator.guard.words`), then the monitor re-checks it. The first width with an unflagged
candidate wins (the first such window in the order tried). Nothing about where a trigger is, or
what it is, is used.

No remnant: the first window that unflags an input may leave part of a phrase trigger, or just
scrape under T_match while the trigger stays (POR MiniLM, P-tuning v2, tweets: after one word of a
two-word phrase went, the other still decided the prediction on 1 input in 5 of the phrase variant).
Two rules, both read only the PV match (no trigger, position or label is known):

* margin: a window *clears* an input when every PV match falls ``accept_margin`` below its
  threshold; one that only unflags it is remembered and the search goes on (wider windows
  included), and is accepted (``clear = False``) only when no window within the budget clears it;
* growth: the accepted window then grows by its left or right neighbour while removing that word
  lowers the match with a PV *the input was flagged on* by ``grow_margin`` or more (largest pull
  first, at most ``w_max`` words). The best PV over all PVs, which the old rule read, hid the pull:
  without the remnant another PV often matched as well (remnant words lowered the flagged PV's match
  by 0.07-0.35, other words by < 0.065 at q99, measured on the POR MiniLM above).

* stability (``stable``): an accepted purge must give the prediction that its neighbours give.
  The purged input is scored again with the removed span's left and right neighbour also removed
  (each alone) and, when the window grew, without the growth. If any of them changes the
  prediction, the guard cannot tell a remnant that still decides the answer from an ordinary word:
  the input is unresolved with ``reason = "unstable"``, and ``on_unresolved`` decides (the service
  rejects it). The PV match cannot make that call: on the POR MiniLM above, "quiet" left from
  "quiet harbor" decided the prediction while its removal *raised* the flagged PV's match, and an
  ordinary word next to a trigger ("@united" before "tq") lowered it by more than ``grow_margin``
  and, once grown over, flipped a borderline answer. Sequence tasks only (a token task's
  predictions are per word).

Budget (the service must not be held by one input): each input stops after ``max_candidates``
candidates or ``max_seconds`` of wall time per flagged input (the call's clock: inputs of one call
share its rounds), and only windows touching its ``max_words`` most salient words (reading order:
its first ``max_words`` words per field) are tried. An input the budget stops is unresolved with
``reason = "budget"``; one whose every window was tried, ``reason = "no-window"``.

Candidates go through the model in batched forward passes shared by all still-flagged inputs; the
same pass gives the match rate *and* the prediction on the purged text. :func:`purge_sequential` is
the paper's one-candidate-at-a-time loop (batch size 1, no budget), kept for benchmarks and as a
reference the batched version must agree with.

``order="saliency"`` (the default; ours, not the paper's) tries the windows of one width in order
of their words' saliency instead of reading order: the norm of the gradient of the input's smooth
match with its best PV with respect to each token's hidden state at the input of the last third
of the layers (one forward pass, and a backward pass through those layers only). A trigger drives
the output onto the PV, so its words carry the largest gradients (POR MiniLM, P-tuning v2, 32
tweets x 6 triggers: the trigger ranks first for 100% of inputs at that depth, 94% with the
gradient at the token embeddings, which costs 1.5x more). The widths, the candidates and the
acceptance rule are unchanged, so the smallest width that unflags still wins; only which window of
that width is found first can differ, when several would unflag.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.guard.candidates import (
    Candidate,
    _examined,
    _key_scores,
    _score_by_length,
    _window,
    candidates,
    forward_rates,
    score,
    to_fields,
    word_saliency,
)
from lmsanitator.guard.monitor import PVMonitor
from lmsanitator.guard.words import Fields, WordView
from lmsanitator.tuning import TunedModel

__all__ = [
    "ORDERS",
    "Candidate",
    "PurgeResult",
    "candidates",
    "forward_rates",
    "purge",
    "purge_sequential",
    "score",
    "to_fields",
    "word_saliency",
]

ORDERS = ("saliency", "reading")
DEFAULT_MAX_CANDIDATES = 256
DEFAULT_MAX_SECONDS = 2.0
DEFAULT_MAX_WORDS = 128
DEFAULT_GROW_MARGIN = 0.07
DEFAULT_ACCEPT_MARGIN = 0.03


@dataclass
class PurgeResult:
    """Unresolved results keep the candidate that exceeded the monitor's thresholds least (the
    fallback; its best column's match minus that column's threshold).
    ``clear``: resolved with every PV match ``accept_margin`` below its threshold (False: the first
    window that only unflagged the input, kept because none cleared it)."""

    resolved: bool
    width: int | None = None  # window width that unflagged the input
    removed: list[str] = field(default_factory=list)  # the window's words (grown window included)
    fields: Fields | None = None  # the purged input
    kept: list[int] | None = None  # original word index of each purged word of field 0
    match_rate: float | None = None  # after removal (the best PV's, as the monitor reports it)
    probs: np.ndarray | None = None  # prediction on the purged input (token tasks: purged words x labels)
    candidates: int = 0  # candidates evaluated (growth steps included)
    reason: str | None = None  # unresolved: "budget", "no-window" or "unstable"
    grown: int = 0  # words the window grew by after it unflagged the input (phrase remnants)
    clear: bool = False  # see above


@dataclass
class _Input:
    """One flagged input's progress through the rounds."""

    fields: Fields
    examined: set | None  # (field, word) positions whose windows are tried; None: all
    key_score: dict | None  # saliency of each single-word key; None: reading order
    result: PurgeResult = field(default_factory=lambda: PurgeResult(resolved=False))
    width: int = 0
    queue: list = field(default_factory=list)
    pos: int = 0
    grow: Candidate | None = None  # the accepted window, while it grows
    span: tuple[int, int, int] | None = None  # its (field, start, end)
    rest: tuple = ()  # keys removed after the window's own (the first window's, once it grew)
    row: torch.Tensor | None = None  # the accepted candidate's match with each PV
    cols: torch.Tensor | None = None  # the PVs the input was flagged on (growth follows their pull)
    marginal: tuple | None = None  # (width, candidate, row, probs): the first unflagged, not clear, window
    level: float = math.inf  # the fallback's excess over the thresholds (see PurgeResult)
    done: bool = False
    accepted_probs: np.ndarray | None = None  # prediction on the accepted window before it grew


def _next_width(st: _Input, view: WordView, w_max: int) -> bool:
    """Move ``st`` to its next width that has windows; False when none is left."""
    while st.width < w_max:
        st.width += 1
        q = candidates(st.fields, st.width, view, st.examined)
        if st.key_score is not None:  # most salient first (stable: ties keep reading order)
            ks = st.key_score
            q.sort(key=lambda c: -max(ks.get(view.phrase_key((w,)), float("-inf")) for w in c.phrase))
        if q:
            st.queue, st.pos = q, 0
            return True
    return False


def _extensions(st: _Input, view: WordView) -> list[Candidate]:
    """The accepted window grown by its left or its right neighbour (those that empty no field)."""
    f, s, e = st.span
    n = len(st.fields[f])
    spans = [(s - 1, e)] if s > 0 else []
    spans += [(s, e + 1)] if e < n else []
    keys = (st.grow.key, *st.rest)
    return [c for a, b in spans if (c := _window(view, st.fields, f, a, b, keys)) is not None]


class _Rules:
    """Acceptance and growth rules of one purge call (see the module docstring)."""

    def __init__(self, monitor: PVMonitor, grow_margin: float | None, accept_margin: float, w_max: int):
        self.monitor, self.margin, self.accept_margin, self.w_max = monitor, grow_margin, accept_margin, w_max
        self.thresholds = monitor.thresholds.detach().float().cpu()

    def rate(self, row: torch.Tensor) -> float:
        """The paper's match rate of a candidate (best PV; mixture columns only flag)."""
        return float(row[: self.monitor.n_pvs].max())

    def level(self, row: torch.Tensor) -> float:
        """How far the candidate's best column is above its threshold (< 0: unflagged)."""
        return float((row - self.thresholds).max())

    def flagged_on(self, row: torch.Tensor) -> torch.Tensor:
        """The columns a flagged input's ``row`` exceeds (the one closest to its threshold when it
        exceeds none)."""
        cols = row > self.thresholds
        if not bool(cols.any()):
            cols[int((row - self.thresholds).argmax())] = True
        return cols

    def clear(self, row: torch.Tensor) -> bool:
        """The candidate's match with every PV is ``accept_margin`` or more below that PV's threshold."""
        return bool((row <= self.thresholds - self.accept_margin).all())  # margin 0: unflagged

    def wants_growth(self, st: _Input) -> bool:
        return self.margin is not None and st.result.grown < self.w_max  # at most w_max words added

    def pick(self, st: _Input, scored: list) -> tuple | None:
        """The extension to grow into, of ``(candidate, row, probs)`` scored this round, or None: the
        unflagged one whose removal lowers the match with a PV the input was flagged on the most, if
        by at least ``grow_margin``."""
        pull = [(float((st.row - x[1])[st.cols].max()), x) for x in scored]
        ok = [(d, x) for d, x in pull if d >= self.margin and not bool(self.monitor.flag(x[1][None])[0])]
        return max(ok, key=lambda dx: dx[0])[1] if ok else None


def _accept(st: _Input, c: Candidate, row, probs, rules: _Rules, clear: bool = True) -> None:
    n = st.result.candidates
    st.result = PurgeResult(
        True, st.width, list(c.phrase), c.fields, c.kept, rules.rate(row), probs, n, clear=clear
    )
    st.grow, st.span, st.rest, st.row = c, (c.field, c.start, c.start + len(c.phrase)), (), row
    st.accepted_probs = probs
    st.done = not rules.wants_growth(st)


def _settle(st: _Input, rules: _Rules, reason: str, grow: bool) -> None:
    """No clear window (widths or budget spent): accept the first marginal one, else unresolved."""
    if st.marginal is not None:
        st.width = st.marginal[0]
        _accept(st, *st.marginal[1:], rules, clear=False)
        st.done = st.done or not grow
    else:
        st.result.reason, st.done = reason, True


def _grown(st: _Input, c: Candidate, row, probs, rules: _Rules) -> None:
    r = st.result
    first = st.rest or (st.grow.key,)
    st.result = dataclasses.replace(
        r,
        removed=list(c.phrase),
        fields=c.fields,
        kept=c.kept,
        match_rate=rules.rate(row),
        probs=probs,
        grown=r.grown + 1,
        clear=rules.clear(row),
    )
    st.grow, st.span, st.rest, st.row = c, (c.field, c.start, c.start + len(c.phrase)), first, row


def _unstable(model, monitor: PVMonitor, states: list[_Input], view: WordView, batch_size: int) -> None:
    """Mark resolved purges whose prediction is not stable (see the module docstring): one batched
    pass over the neighbour extensions of every resolved input."""
    todo = []
    for i, st in enumerate(states):
        r = st.result
        if not r.resolved or st.span is None or r.probs is None or np.ndim(r.probs) != 1:
            continue
        label = int(np.argmax(r.probs))
        if r.grown and st.accepted_probs is not None and int(np.argmax(st.accepted_probs)) != label:
            _mark_unstable(st)
            continue
        todo += [(i, c) for c in _extensions(st, view)]
    if not todo:
        return
    _, probs = _score_by_length(model, monitor, [c.fields for _, c in todo], batch_size)
    for j, (i, _) in enumerate(todo):
        st = states[i]
        if not st.result.resolved:
            continue
        st.result.candidates += 1
        if int(np.argmax(probs[j])) != int(np.argmax(st.result.probs)):
            _mark_unstable(st)


def _mark_unstable(st: _Input) -> None:
    # keeps the purged input and its prediction: the "best" policy still answers it, flagged as such
    st.result = dataclasses.replace(st.result, resolved=False, reason="unstable", clear=False)


def _round_size(active: int, first: bool, batch_size: int, est: float | None, left_s: float | None) -> int:
    """Candidates per input this round: one for the saliency order's first round (a well-ranked
    trigger costs one candidate), else an equal share of a batch, cut to what the time left allows
    at the last round's pace."""
    take = 1 if first else max(1, batch_size // active)
    if est and left_s is not None:
        take = min(take, max(1, int(left_s / (est * active))))
    return take


def purge(
    model,
    monitor: PVMonitor,
    inputs: Sequence[Fields],
    w_max: int,
    batch_size: int = 64,
    order: str = "saliency",
    *,
    max_candidates: int | None = DEFAULT_MAX_CANDIDATES,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    max_words: int | None = DEFAULT_MAX_WORDS,
    grow_margin: float | None = DEFAULT_GROW_MARGIN,
    accept_margin: float = DEFAULT_ACCEPT_MARGIN,
    stable: bool = True,
    flagged_rows: torch.Tensor | None = None,
) -> list[PurgeResult]:
    """Batched Algorithm 2 over flagged ``inputs`` (fields) within the budget; one
    :class:`PurgeResult` each (``None`` budget values: unbounded; ``grow_margin=None``: no growth;
    ``accept_margin=0``: the first unflagged window wins, as in the paper; ``stable=False``: no
    stability check).

    Rounds of forward passes shared by all inputs still at work: each scores the next windows of
    each input (or the two growths of an accepted window). ``flagged_rows`` are the inputs' match
    with each PV as given (the monitor's pass); without them, one pass computes them. Long, but one loop:
    the round's bookkeeping (budget, widths, growth) reads best in one place."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    t0 = time.perf_counter()
    inputs = list(inputs)
    if not inputs:
        return []
    view = WordView.of(model)
    sal = None
    if order == "saliency" and isinstance(model, TunedModel):
        try:
            sal = word_saliency(model, monitor, inputs, batch_size=batch_size)
        except LMSanitatorError:  # no character offsets (slow tokenizer): reading order
            sal = None
    if flagged_rows is None:
        flagged_rows = _score_by_length(model, monitor, inputs, batch_size)[0]
    flagged_rows = flagged_rows.detach().float().cpu()
    rules = _Rules(monitor, grow_margin, accept_margin, w_max)
    states = []
    for k, x in enumerate(inputs):
        st = _Input(
            x,
            _examined(x, sal[k] if sal else None, max_words),
            _key_scores(view, x, sal[k]) if sal else None,
            cols=rules.flagged_on(flagged_rows[k]),
        )
        if not _next_width(st, view, w_max):
            st.result.reason, st.done = "no-window", True
        states.append(st)
    first, est = sal is not None, None
    while True:
        active = [i for i, st in enumerate(states) if not st.done]
        if not active:
            break
        elapsed = time.perf_counter() - t0
        # max_seconds is per flagged input: a call with n of them may take n times as long (a shared
        # clock let one batch of 32 flagged inputs time out after 2 s, every input unresolved)
        left_s = None if max_seconds is None else max_seconds * len(inputs) - elapsed
        take = _round_size(len(active), first, batch_size, est, left_s)
        first = False
        round_: list[tuple[int, Candidate, bool]] = []
        for i in active:
            st = states[i]
            left_c = math.inf if max_candidates is None else max_candidates - st.result.candidates
            if left_c <= 0 or (left_s is not None and left_s <= 0):
                if st.grow is None:  # a growing window is already resolved: it keeps what it has
                    _settle(st, rules, "budget", grow=False)
                st.done = True
                continue
            if st.grow is not None:
                exts = _extensions(st, view)[: int(min(2, left_c))]
                if not exts:
                    st.done = True
                round_ += [(i, c, True) for c in exts]
            else:
                n = int(min(take, left_c))
                round_ += [(i, c, False) for c in st.queue[st.pos : st.pos + n]]
                st.pos += n
        if not round_:
            continue
        r0 = time.perf_counter()
        matrix, probs = _score_by_length(model, monitor, [c.fields for _, c, _ in round_], batch_size)
        est = (time.perf_counter() - r0) / len(round_)
        still = monitor.flag(matrix)
        growths: dict[int, list] = {}
        for j, (i, c, growing) in enumerate(round_):
            st = states[i]
            if growing:
                growths.setdefault(i, []).append((c, matrix[j], probs[j]))
                continue
            if st.done or st.grow is not None:  # resolved earlier in this round
                continue
            st.result.candidates += 1
            if not bool(still[j]):
                if rules.clear(matrix[j]):
                    _accept(st, c, matrix[j], probs[j], rules)
                elif st.marginal is None:  # unflagged, but only just: look on for a clear window
                    st.marginal = (st.width, c, matrix[j], probs[j])
            elif (level := rules.level(matrix[j])) < st.level:
                r = st.result  # fallback: the least flagged candidate
                st.result = PurgeResult(
                    False, st.width, list(c.phrase), c.fields, c.kept, rules.rate(matrix[j]), probs[j]
                )
                st.result.candidates, st.level = r.candidates, level
        for i, scored in growths.items():
            st = states[i]
            st.result.candidates += len(scored)
            best = rules.pick(st, scored)
            if best is None:
                st.done = True
                continue
            _grown(st, *best, rules)
            st.done = not rules.wants_growth(st)
        for i in active:
            st = states[i]
            if (
                not st.done
                and st.grow is None
                and st.pos >= len(st.queue)
                and not _next_width(st, view, w_max)
            ):
                _settle(st, rules, "no-window", grow=True)
    if stable:
        _unstable(model, monitor, states, view, batch_size)
    return [st.result for st in states]


def purge_sequential(
    model,
    monitor: PVMonitor,
    inputs: Sequence[Fields],
    w_max: int,
    *,
    grow_margin=DEFAULT_GROW_MARGIN,
    accept_margin=DEFAULT_ACCEPT_MARGIN,
    stable=True,
) -> list[PurgeResult]:
    """The paper's loop: one candidate, one forward pass, stop at the first unflagged one (reading
    order, no budget; the same removal and growth rules as :func:`purge`)."""
    return [
        purge(
            model,
            monitor,
            [x],
            w_max,
            batch_size=1,
            order="reading",
            max_candidates=None,
            max_seconds=None,
            max_words=None,
            grow_margin=grow_margin,
            accept_margin=accept_margin,
            stable=stable,
        )[0]
        for x in inputs
    ]
