"""Trigger removal (the paper's Algorithm 2), done as a real defender would.

For a flagged input, windows of 1..w_max consecutive words slide over each text field; a
candidate removes the window's words and every other occurrence of the same word sequence in the
input (a trigger is often inserted several times), then the monitor re-checks it. The first width
with an unflagged candidate wins (the first such window, in reading order). Nothing about where a
trigger is, or what it is, is used.

Candidates go through the model in batched forward passes shared by all still-flagged inputs
(see :func:`purge`); the same pass gives the match rate *and* the prediction on the purged text.
:func:`purge_sequential` is the paper's one-candidate-at-a-time loop, kept for benchmarks and as a
reference the batched version must agree with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from lmsanitator.guard.monitor import PVMonitor

Fields = tuple[tuple[str, ...], ...]  # one word tuple per text field


@dataclass
class PurgeResult:
    """Unresolved results keep the candidate whose best PV match was lowest (the fallback)."""

    resolved: bool
    width: int | None = None  # window width that unflagged the input
    removed: list[str] = field(default_factory=list)
    fields: Fields | None = None  # the purged input
    kept: list[int] | None = None  # token tasks: original word index of each purged word
    match_rate: float | None = None  # after removal
    probs: np.ndarray | None = None  # prediction on the purged input (token tasks: purged words x labels)
    candidates: int = 0  # candidates evaluated


def to_fields(text, pair=None) -> Fields:
    if not isinstance(text, str):  # token task: a word list
        return (tuple(text),)
    return (tuple(text.split()),) if pair is None else (tuple(text.split()), tuple(pair.split()))


def _remove(words: tuple[str, ...], phrase: tuple[str, ...]) -> tuple[tuple[str, ...], list[int]]:
    """``words`` without any occurrence of ``phrase``; also the indices that are kept."""
    w, out, kept, i = len(phrase), [], [], 0
    while i < len(words):
        if words[i:i + w] == phrase:
            i += w
            continue
        out.append(words[i])
        kept.append(i)
        i += 1
    return tuple(out), kept


def candidates(fields: Fields, width: int) -> list[tuple[tuple[str, ...], Fields, list[int]]]:
    """``(removed phrase, purged fields, kept indices of field 0)`` for every window of ``width``
    words, in reading order, without duplicates and without candidates that empty a field."""
    seen, out = set(), []
    for f in fields:
        for s in range(len(f) - width + 1):
            phrase = f[s:s + width]
            if phrase in seen:
                continue
            seen.add(phrase)
            purged, kept0 = [], None
            for k, g in enumerate(fields):
                new, kept = _remove(g, phrase)
                purged.append(new)
                if k == 0:
                    kept0 = kept
            if any(len(g) == 0 for g in purged):
                continue
            out.append((phrase, tuple(purged), kept0))
    return out


def _model_inputs(model, batch: Sequence[Fields]):
    if model.task.kind == "token":
        return [list(f[0]) for f in batch], None
    texts = [" ".join(f[0]) for f in batch]
    pairs = [" ".join(f[1]) for f in batch] if len(batch[0]) > 1 else None
    return texts, pairs


def forward_rates(model, monitor: PVMonitor, texts, pairs=None) -> tuple[list[np.ndarray], torch.Tensor]:
    """Class probabilities (token tasks: words x labels per input) and the inputs x PVs match
    matrix, from one forward pass."""
    fo = model.forward_with_features(texts, pairs)
    matrix = monitor.match_matrix(fo.features, fo.rows, len(texts)).cpu()
    probs = torch.softmax(fo.logits.float(), dim=-1).cpu().numpy()
    if model.task.kind != "token":
        return list(probs), matrix
    out, start = [], 0
    for k in fo.words:  # words scored per input (truncation may drop some)
        out.append(probs[start:start + k])
        start += k
    return out, matrix


def score(model, monitor: PVMonitor, batch: Sequence[Fields]) -> tuple[list[np.ndarray], torch.Tensor]:
    """:func:`forward_rates` of inputs given as fields."""
    return forward_rates(model, monitor, *_model_inputs(model, batch))


def purge(model, monitor: PVMonitor, inputs: Sequence[Fields], w_max: int, batch_size: int = 64) -> list[PurgeResult]:
    """Batched Algorithm 2 over flagged ``inputs`` (fields); one :class:`PurgeResult` each.

    Rounds of forward passes: each round scores the next ``max(1, batch_size // n)`` candidates of
    each of the ``n`` inputs still flagged, so one input gets all its windows of a width in one
    pass, many inputs share passes, and an input stops at its first unflagged window (the same
    answer as the sequential loop, without scoring the windows after it).
    """
    results = [PurgeResult(resolved=False) for _ in inputs]
    pending = list(range(len(inputs)))
    for width in range(1, w_max + 1):
        if not pending:
            break
        queue = {i: candidates(inputs[i], width) for i in pending}
        pos = dict.fromkeys(pending, 0)
        active = [i for i in pending if queue[i]]
        while active:
            take = max(1, batch_size // len(active))
            round_ = [(i, c) for i in active for c in queue[i][pos[i]:pos[i] + take]]
            mats, probs = [], []
            for s in range(0, len(round_), batch_size):
                p, m = score(model, monitor, [c[1] for _, c in round_[s:s + batch_size]])
                mats.append(m)
                probs.extend(p)
            matrix = torch.cat(mats)
            still, best = monitor.flag(matrix), matrix.max(dim=1).values
            done = set()
            for j, (i, (phrase, fields, kept)) in enumerate(round_):
                if i in done:
                    continue
                results[i].candidates += 1
                r = results[i]
                if not bool(still[j]):
                    done.add(i)
                    results[i] = PurgeResult(True, width, list(phrase), fields, kept, float(best[j]), probs[j],
                                             r.candidates)
                elif r.match_rate is None or float(best[j]) < r.match_rate:  # fallback: least matching
                    results[i] = PurgeResult(False, width, list(phrase), fields, kept, float(best[j]), probs[j],
                                             r.candidates)
            for i in active:
                pos[i] += take
            active = [i for i in active if i not in done and pos[i] < len(queue[i])]
            pending = [i for i in pending if i not in done]
    return results


def purge_sequential(model, monitor: PVMonitor, inputs: Sequence[Fields], w_max: int) -> list[PurgeResult]:
    """The paper's loop: one candidate, one forward pass, stop at the first unflagged one."""
    results = []
    for fields0 in inputs:
        res = PurgeResult(resolved=False)
        for width in range(1, w_max + 1):
            for phrase, fields, kept in candidates(fields0, width):
                res.candidates += 1
                p, m = score(model, monitor, [fields])
                if not bool(monitor.flag(m)[0]):
                    res = PurgeResult(True, width, list(phrase), fields, kept, float(m[0].max()), p[0],
                                      res.candidates)
                    break
            if res.resolved:
                break
        results.append(res)
    return results
