"""Trigger removal (the paper's Algorithm 2), done as a real defender would, within a budget.

For a flagged input, windows of 1..w_max consecutive words slide over each text field; a
candidate removes the window's words wherever they occur *as the tokenizer sees them* (every
occurrence, other case spellings an uncased tokenizer folds, punctuation glued on; see
:mod:`lmsanitator.guard.words`), then the monitor re-checks it. The first width with an unflagged
candidate wins (the first such window in the order tried). Nothing about where a trigger is, or
what it is, is used.

No remnant: an unflagged candidate may still carry part of a phrase trigger (``blue moon`` without
``blue``). The accepted window then grows by one neighbouring word at a time while the purged
input's match with some PV stays within ``grow_margin`` of that PV's threshold (the remnant still
pulls the output toward the PV), or while the prediction is still the flagged input's and removing
a neighbour changes it *and* lowers the match by at least the margin (a remnant still decides
the output; asking for the pull toward the PV keeps an ordinary sentiment word next to the trigger,
which also flips the prediction, from being taken). Each growth must lower the match. At most
``w_max`` words are added; token tasks use the match rule only. With calibrated thresholds the
margin is below each PV's own threshold, so a natural near-trigger next to the trigger goes too.

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

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.guard.candidates import (
    Candidate,
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
DEFAULT_GROW_MARGIN = 0.1


@dataclass
class PurgeResult:
    """Unresolved results keep the candidate whose best PV match was lowest (the fallback)."""

    resolved: bool
    width: int | None = None  # window width that unflagged the input
    removed: list[str] = field(default_factory=list)  # the window's words (grown window included)
    fields: Fields | None = None  # the purged input
    kept: list[int] | None = None  # original word index of each purged word of field 0
    match_rate: float | None = None  # after removal
    probs: np.ndarray | None = None  # prediction on the purged input (token tasks: purged words x labels)
    candidates: int = 0  # candidates evaluated (growth steps included)
    reason: str | None = None  # unresolved: "budget" or "no-window"
    grown: int = 0  # words the window grew by after it unflagged the input (phrase remnants)


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
    done: bool = False


def _examined(fields: Fields, sal, max_words: int | None) -> set | None:
    """The ``max_words`` most salient words of the input (reading order: the first ``max_words`` of
    each field): only windows touching one are tried, so a 1 MiB input never costs more than a short
    one."""
    if max_words is None:
        return None
    if sal is None:
        return {(f, j) for f, words in enumerate(fields) for j in range(min(len(words), max_words))}
    ranked = sorted(
        ((f, j) for f, words in enumerate(fields) for j in range(len(words))),
        key=lambda fj: -sal[fj[0]][fj[1]],
    )
    return set(ranked[:max_words])


def _key_scores(view: WordView, fields: Fields, sal) -> dict:
    out: dict = {}
    for f, words in enumerate(fields):
        for j, w in enumerate(words):
            k = view.phrase_key((w,))
            out[k] = max(out.get(k, float("-inf")), sal[f][j])
    return out


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
    """Acceptance and growth rules of one purge call."""

    def __init__(self, monitor: PVMonitor, token: bool, grow_margin: float | None, flagged_probs, w_max: int):
        self.monitor, self.token, self.margin = monitor, token, grow_margin
        self.flagged_probs, self.w_max = flagged_probs, w_max

    def near(self, row: torch.Tensor) -> bool:
        return bool(self.monitor.near(row[None], self.margin)[0])

    def same_prediction(self, i: int, probs) -> bool:
        if self.token or self.flagged_probs is None:
            return False
        return int(np.argmax(probs)) == int(np.argmax(self.flagged_probs[i]))

    def wants_growth(self, st: _Input, i: int) -> bool:
        if self.margin is None or st.result.grown >= self.w_max:  # at most w_max words added
            return False
        return self.near(st.row) or self.same_prediction(i, st.result.probs)

    def pick(self, st: _Input, scored: list) -> tuple | None:
        """The extension to grow into, of ``(candidate, row, probs)`` scored this round, or None."""
        cur = float(st.row.max())
        ok = [x for x in scored if not bool(self.monitor.flag(x[1][None])[0]) and float(x[1].max()) < cur]
        if not self.near(
            st.row
        ):  # the prediction rule: a flip, and a pull toward the PV worth half the margin
            now = int(np.argmax(st.result.probs)) if not self.token else None
            drop = cur - self.margin / 2
            ok = [
                x for x in ok if not self.token and int(np.argmax(x[2])) != now and float(x[1].max()) <= drop
            ]
        return min(ok, key=lambda x: float(x[1].max())) if ok else None


def _accept(st: _Input, c: Candidate, row, probs, rules: _Rules, i: int) -> None:
    n = st.result.candidates
    st.result = PurgeResult(True, st.width, list(c.phrase), c.fields, c.kept, float(row.max()), probs, n)
    st.grow, st.span, st.rest, st.row = c, (c.field, c.start, c.start + len(c.phrase)), (), row
    st.done = not rules.wants_growth(st, i)


def _grown(st: _Input, c: Candidate, row, probs) -> None:
    r = st.result
    first = st.rest or (st.grow.key,)
    st.result = PurgeResult(
        True,
        r.width,
        list(c.phrase),
        c.fields,
        c.kept,
        float(row.max()),
        probs,
        r.candidates,
        None,
        r.grown + 1,
    )
    st.grow, st.span, st.rest, st.row = c, (c.field, c.start, c.start + len(c.phrase)), first, row


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
    flagged_probs: Sequence | None = None,
) -> list[PurgeResult]:
    """Batched Algorithm 2 over flagged ``inputs`` (fields) within the budget; one
    :class:`PurgeResult` each (``None`` budget values: unbounded; ``grow_margin=None``: no growth).

    Rounds of forward passes shared by all inputs still at work: each scores the next windows of
    each input (or the two growths of an accepted window). ``flagged_probs`` are the predictions on
    the inputs as given (the monitor's pass); without them, one pass computes them. Long, but one
    loop: the round's bookkeeping (budget, widths, growth) reads best in one place."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    t0 = time.perf_counter()
    inputs = list(inputs)
    if not inputs:
        return []
    view = WordView.of(model)
    token = model.task.kind == "token"
    sal = None
    if order == "saliency" and isinstance(model, TunedModel):
        try:
            sal = word_saliency(model, monitor, inputs, batch_size=batch_size)
        except LMSanitatorError:  # no character offsets (slow tokenizer): reading order
            sal = None
    if grow_margin is not None and not token and flagged_probs is None:
        flagged_probs = _score_by_length(model, monitor, inputs, batch_size)[1]
    rules = _Rules(monitor, token, grow_margin, flagged_probs, w_max)
    states = []
    for k, x in enumerate(inputs):
        st = _Input(
            x,
            _examined(x, sal[k] if sal else None, max_words),
            _key_scores(view, x, sal[k]) if sal else None,
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
                st.done = True  # a growing window is already resolved: it keeps what it has
                st.result.reason = None if st.grow is not None else "budget"
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
                _accept(st, c, matrix[j], probs[j], rules, i)
            elif st.result.match_rate is None or float(matrix[j].max()) < st.result.match_rate:
                r = st.result  # fallback: the least matching candidate
                st.result = PurgeResult(
                    False,
                    st.width,
                    list(c.phrase),
                    c.fields,
                    c.kept,
                    float(matrix[j].max()),
                    probs[j],
                    r.candidates,
                )
        for i, scored in growths.items():
            st = states[i]
            st.result.candidates += len(scored)
            best = rules.pick(st, scored)
            if best is None:
                st.done = True
                continue
            _grown(st, *best)
            st.done = not rules.wants_growth(st, i)
        for i in active:
            st = states[i]
            if (
                not st.done
                and st.grow is None
                and st.pos >= len(st.queue)
                and not _next_width(st, view, w_max)
            ):
                st.result.reason, st.done = "no-window", True
    return [st.result for st in states]


def purge_sequential(
    model, monitor: PVMonitor, inputs: Sequence[Fields], w_max: int, *, grow_margin=DEFAULT_GROW_MARGIN
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
        )[0]
        for x in inputs
    ]
