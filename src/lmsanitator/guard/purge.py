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

``order="saliency"`` (the default; ours, not the paper's) tries the windows of one width in order
of their words' saliency instead of reading order: the norm of the gradient of the input's smooth
match with its best PV with respect to each token's hidden state at the input of the last third
of the layers (one forward pass, and a backward pass through those layers only). A trigger drives
the output onto the PV, so its words carry the largest gradients (POR MiniLM, P-tuning v2, 32
tweets x 6 triggers: the trigger ranks first for 100% of inputs at that depth, 94% with the
gradient at the token embeddings, which costs 1.5x more). The widths, the candidates and the
acceptance rule are unchanged, so the smallest width that unflags still wins; only which window of
that width is found first can differ, when several would unflag. It scores a fraction of the
windows the reading order does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.guard.monitor import PVMonitor
from lmsanitator.guard.saliency import token_gradient_norms, word_positions
from lmsanitator.tuning import TunedModel

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
        if words[i : i + w] == phrase:
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
            phrase = f[s : s + width]
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
        out.append(probs[start : start + k])
        start += k
    return out, matrix


def score(model, monitor: PVMonitor, batch: Sequence[Fields]) -> tuple[list[np.ndarray], torch.Tensor]:
    """:func:`forward_rates` of inputs given as fields."""
    return forward_rates(model, monitor, *_model_inputs(model, batch))


ORDERS = ("saliency", "reading")


def word_saliency(
    model, monitor: PVMonitor, inputs: Sequence[Fields], batch_size: int = 32
) -> list[list[list[float]]]:
    """Per input, per field, per word: the largest gradient norm of the input's smooth match with
    its best PV (mean of ``tanh(feature) x sign(PV)``) over the word's tokens, taken at the input of
    the last third of the layers (:func:`lmsanitator.guard.saliency.token_gradient_norms`). Words the tokenizer cut
    off (truncation) get -inf; they are tried last."""
    signs = monitor._pos * 2 - 1
    out: list = [None] * len(inputs)
    order = sorted(range(len(inputs)), key=lambda j: _length(inputs[j]))  # similar lengths share a pass
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        chunk = [inputs[j] for j in idx]
        texts, pairs = _model_inputs(model, chunk)

        def objective(feats, rows, n=len(chunk)):
            k = monitor.match_matrix(feats, rows, n).argmax(dim=1)
            return (torch.tanh(feats.float()) * signs[k[rows]]).mean(dim=-1).sum()

        norms = token_gradient_norms(model, texts, pairs, objective).cpu()
        where = word_positions(model, texts, pairs)
        for i, fields in enumerate(chunk):
            sal = [[float("-inf")] * len(f) for f in fields]
            for t, fw in enumerate(where[i]):
                if fw is not None and fw[0] < len(sal) and fw[1] < len(sal[fw[0]]):
                    sal[fw[0]][fw[1]] = max(sal[fw[0]][fw[1]], float(norms[i, t]))
            out[idx[i]] = sal
    return out


def _by_saliency(fields: Fields, sal: list[list[float]], cands: list) -> list:
    """Candidates ordered by the largest saliency among the words they remove (stable: ties keep
    reading order)."""
    score = {}
    for f, words in enumerate(fields):
        for j, w in enumerate(words):
            score[w] = max(score.get(w, float("-inf")), sal[f][j])
    return sorted(cands, key=lambda c: -max(score.get(w, float("-inf")) for w in c[0]))


def _length(fields: Fields) -> int:
    return sum(len(f) for f in fields)


def _score_by_length(model, monitor: PVMonitor, batch: Sequence[Fields], batch_size: int):
    """:func:`score` in passes of ``batch_size`` inputs of similar length (less padding); results
    in ``batch``'s order."""
    order = sorted(range(len(batch)), key=lambda j: _length(batch[j]))
    mats, probs = [], [None] * len(batch)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        p, m = score(model, monitor, [batch[j] for j in idx])
        mats.append(m)
        for j, pj in zip(idx, p):
            probs[j] = pj
    matrix = torch.cat(mats)
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))
    return matrix[back], probs


def purge(
    model,
    monitor: PVMonitor,
    inputs: Sequence[Fields],
    w_max: int,
    batch_size: int = 64,
    order: str = "saliency",
) -> list[PurgeResult]:
    """Batched Algorithm 2 over flagged ``inputs`` (fields); one :class:`PurgeResult` each.

    Rounds of forward passes shared by all inputs still flagged; an input stops at its first
    unflagged window. Each round scores the next ``max(1, batch_size // n)`` windows of each of
    the ``n`` inputs (in reading order: the same answer as the sequential loop). Saliency order:
    the first round scores only each input's most salient single word, so a well-ranked trigger
    costs one candidate.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    results = [PurgeResult(resolved=False) for _ in inputs]
    pending = list(range(len(inputs)))
    sal = None
    if order == "saliency" and inputs and isinstance(model, TunedModel):
        try:
            sal = word_saliency(model, monitor, list(inputs), batch_size=batch_size)
        except LMSanitatorError:  # no character offsets (slow tokenizer): reading order
            sal = None
    for width in range(1, w_max + 1):
        if not pending:
            break
        queue = {i: candidates(inputs[i], width) for i in pending}
        if sal is not None:
            queue = {i: _by_saliency(inputs[i], sal[i], q) for i, q in queue.items()}
        pos = dict.fromkeys(pending, 0)
        active = [i for i in pending if queue[i]]
        first = sal is not None and width == 1
        while active:
            take = 1 if first else max(1, batch_size // len(active))
            first = False
            round_ = [(i, c) for i in active for c in queue[i][pos[i] : pos[i] + take]]
            matrix, probs = _score_by_length(model, monitor, [c[1] for _, c in round_], batch_size)
            still, best = monitor.flag(matrix), matrix.max(dim=1).values
            done = set()
            for j, (i, (phrase, fields, kept)) in enumerate(round_):
                if i in done:
                    continue
                results[i].candidates += 1
                r = results[i]
                if not bool(still[j]):
                    done.add(i)
                    results[i] = PurgeResult(
                        True, width, list(phrase), fields, kept, float(best[j]), probs[j], r.candidates
                    )
                elif r.match_rate is None or float(best[j]) < r.match_rate:  # fallback: least matching
                    results[i] = PurgeResult(
                        False, width, list(phrase), fields, kept, float(best[j]), probs[j], r.candidates
                    )
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
                    res = PurgeResult(
                        True, width, list(phrase), fields, kept, float(m[0].max()), p[0], res.candidates
                    )
                    break
            if res.resolved:
                break
        results.append(res)
    return results
