"""Words as the tokenizer sees them, so that trigger removal deletes a trigger in every spelling the
model cannot tell apart.

A whitespace word is split into *pieces* the way the tokenizer's pre-tokenizer splits text before
word pieces are made (``"mn,"`` -> ``mn`` ``,``; ``"(cf)"`` -> ``(`` ``cf`` ``)``), and each piece gets
a *key*: the piece after the tokenizer's normaliser (an uncased BERT lowercases and strips accents,
so ``MN`` and ``mn`` share a key; a cased RoBERTa keeps them apart, as its vocabulary does). A window
of words is removed wherever its key sequence occurs in an input's piece sequence: across word
boundaries, with punctuation glued on, in any case the tokenizer folds. Matching is on whole pieces,
never inside one: ``mn`` does not remove ``mnemonic``, whose word pieces the model reads differently.

A word that loses all its letters and digits goes whole (``"mn,"`` leaves no lone comma); a word
that keeps some is rebuilt from its remaining pieces (``"cf,mn"`` without ``mn`` is ``"cf,"``).
"""

from __future__ import annotations

import functools
import re
import unicodedata
import weakref
from collections.abc import Sequence

Fields = tuple[tuple[str, ...], ...]  # one word tuple per text field

_FALLBACK_SPLIT = re.compile(r"[^\W_]+|_|[^\w\s]", re.UNICODE)  # letter/digit runs, each other char


_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its WordView


def _is_punct(raw: str) -> bool:
    return bool(raw) and all(unicodedata.category(c)[0] in "PS" for c in raw)


class WordView:
    """Pieces and keys of words for one tokenizer (``None``: split on punctuation, keep case)."""

    def __init__(self, tokenizer=None):
        backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer is not None else None
        self._pre = getattr(backend, "pre_tokenizer", None)
        self._norm = getattr(backend, "normalizer", None)
        self._fold = False
        if self._norm is None and tokenizer is not None:  # slow tokenizer: ask it whether case matters
            fold = getattr(tokenizer, "do_lower_case", None)
            if fold is None and hasattr(tokenizer, "tokenize"):
                fold = tokenizer.tokenize("MN") == tokenizer.tokenize("mn")
            self._fold = bool(fold)
        self.pieces = functools.lru_cache(maxsize=1 << 16)(self._pieces)

    @classmethod
    def of(cls, model) -> WordView:
        """The view of ``model``'s tokenizer, built once per model."""
        try:
            view = _VIEWS.get(model)
        except TypeError:  # not weak-referenceable: build it each time
            return cls(getattr(model, "tokenizer", None))
        if view is None:
            view = _VIEWS[model] = cls(getattr(model, "tokenizer", None))
        return view

    def _split(self, word: str) -> list[str]:
        if self._pre is not None:
            try:
                spans = self._pre.pre_tokenize_str(word)
                raws = [word[a:b] for _, (a, b) in spans]
                if "".join(raws) == "".join(word.split()):
                    return [r for r in raws if r]
            except Exception:  # noqa: BLE001  a pre-tokenizer we cannot drive: fall back below
                pass
        return _FALLBACK_SPLIT.findall(word) or [word]

    def key(self, raw: str) -> str:
        if self._norm is not None:
            try:
                return self._norm.normalize_str(raw)
            except Exception:  # noqa: BLE001  same fallback as above
                return raw.casefold()
        return raw.casefold() if self._fold else raw

    def _pieces(self, word: str) -> tuple[tuple[str, str, bool], ...]:
        """``(raw piece, key, is punctuation)`` for each piece of ``word``."""
        return tuple((r, self.key(r), _is_punct(r)) for r in self._split(word))

    def phrase_key(self, words: Sequence[str]) -> tuple[str, ...]:
        """The key sequence a window of words is removed by: its pieces' keys, without punctuation at
        either end (so ``"mn,"`` also removes ``mn`` and ``MN``); all of them when it is only
        punctuation."""
        ps = [p for w in words for p in self.pieces(w)]
        a, b = 0, len(ps)
        while a < b and ps[a][2]:
            a += 1
        while b > a and ps[b - 1][2]:
            b -= 1
        return tuple(p[1] for p in (ps[a:b] if a < b else ps))

    def remove(self, words: Sequence[str], key: tuple[str, ...]) -> tuple[tuple[str, ...], list[int]]:
        """``words`` without any occurrence of ``key``; also the indices of the words kept (a word
        rebuilt from its remaining pieces keeps its index)."""
        flat = [(i, j, p[1]) for i, w in enumerate(words) for j, p in enumerate(self.pieces(w))]
        n, k = len(flat), len(key)
        gone: set[tuple[int, int]] = set()
        s = 0
        while s + k <= n and k:
            if flat[s][2] == key[0] and all(flat[s + t][2] == key[t] for t in range(1, k)):
                gone.update((flat[s + t][0], flat[s + t][1]) for t in range(k))
                s += k
            else:
                s += 1
        if not gone:
            return tuple(words), list(range(len(words)))
        out, kept = [], []
        for i, w in enumerate(words):
            ps = self.pieces(w)
            left = [p for j, p in enumerate(ps) if (i, j) not in gone]
            if len(left) == len(ps):
                out.append(w)
            elif left and not all(p[2] for p in left):
                out.append("".join(p[0] for p in left))
            else:  # nothing but glued punctuation left: the word goes
                continue
            kept.append(i)
        return tuple(out), kept

    def remove_all(self, fields: Fields, keys: Sequence[tuple[str, ...]]) -> tuple[Fields, list[int]]:
        """``fields`` without any occurrence of each key (in the order given); also the original
        indices of the words field 0 keeps."""
        out, kept0 = [], None
        for f, words in enumerate(fields):
            idx = list(range(len(words)))
            for key in keys:
                words, kept = self.remove(words, key)
                idx = [idx[k] for k in kept]
            out.append(tuple(words))
            if f == 0:
                kept0 = idx
        return tuple(out), kept0 or []
