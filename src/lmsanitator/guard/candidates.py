"""The candidates of trigger removal and how they are scored (see :mod:`lmsanitator.guard.purge`):
windows of words removed as the tokenizer sees them, word saliency, batched forward passes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from lmsanitator.guard.monitor import PVMonitor
from lmsanitator.guard.saliency import token_gradient_norms, word_positions
from lmsanitator.guard.words import Fields, WordView


class Candidate(NamedTuple):
    phrase: tuple[str, ...]  # the window's words
    fields: Fields  # the input without every occurrence of the window's key
    kept: list[int]  # original index of each word field 0 keeps
    key: tuple[str, ...]  # what was removed, as the tokenizer sees it
    field: int  # where the window is (its first occurrence)
    start: int


def to_fields(text, pair=None) -> Fields:
    if not isinstance(text, str):  # token task: a word list
        return (tuple(text),)
    return (tuple(text.split()),) if pair is None else (tuple(text.split()), tuple(pair.split()))


def _window(view: WordView, fields: Fields, f: int, s: int, e: int, keys=()) -> Candidate | None:
    """The candidate removing words ``s:e`` of field ``f`` (then ``keys``), None if it empties a field."""
    phrase = fields[f][s:e]
    key = view.phrase_key(phrase)
    purged, kept = view.remove_all(fields, [key, *keys])
    if any(len(g) == 0 for g in purged):
        return None
    return Candidate(phrase, purged, kept, key, f, s)


def candidates(
    fields: Fields, width: int, view: WordView | None = None, examined: set | None = None
) -> list[Candidate]:
    """Every window of ``width`` words (touching an ``examined`` ``(field, word)`` when given), in
    reading order, one per key, without those that empty a field."""
    view = view or WordView()
    seen, out = set(), []
    for f, words in enumerate(fields):
        for s in range(len(words) - width + 1):
            if examined is not None and not any((f, j) in examined for j in range(s, s + width)):
                continue
            key = view.phrase_key(words[s : s + width])
            if key in seen:
                continue
            seen.add(key)
            c = _window(view, fields, f, s, s + width)
            if c is not None:
                out.append(c)
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


def word_saliency(
    model, monitor: PVMonitor, inputs: Sequence[Fields], batch_size: int = 32
) -> list[list[list[float]]]:
    """Per input, per field, per word: the largest gradient norm of the input's smooth match with
    its best PV (mean of ``tanh(feature) x sign(PV)``) over the word's tokens, taken at the input of
    the last third of the layers (:func:`lmsanitator.guard.saliency.token_gradient_norms`). Words the
    tokenizer cut off (truncation) get -inf; they are tried last."""
    signs, mask = monitor.signs()
    out: list = [None] * len(inputs)
    order = sorted(range(len(inputs)), key=lambda j: _length(inputs[j]))  # similar lengths share a pass
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        chunk = [inputs[j] for j in idx]
        texts, pairs = _model_inputs(model, chunk)

        def objective(feats, rows, n=len(chunk)):
            k = monitor.match_matrix(feats, rows, n).argmax(dim=1)[rows]
            # a mixture column reads only its pair's agreeing dimensions
            return ((torch.tanh(feats.float()) * signs[k]).sum(dim=-1) / mask[k].sum(dim=-1)).sum()

        norms = token_gradient_norms(model, texts, pairs, objective).cpu()
        where = word_positions(model, texts, pairs)
        for i, fields in enumerate(chunk):
            sal = [[float("-inf")] * len(f) for f in fields]
            for t, fw in enumerate(where[i]):
                if fw is not None and fw[0] < len(sal) and fw[1] < len(sal[fw[0]]):
                    sal[fw[0]][fw[1]] = max(sal[fw[0]][fw[1]], float(norms[i, t]))
            out[idx[i]] = sal
    return out


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
