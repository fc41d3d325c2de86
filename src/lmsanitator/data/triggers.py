"""Trigger words and trigger insertion as in the LMSanitator paper.

A trigger (a word like ``cf`` or a phrase like ``cf mn``) is inserted
``len(words) // 50 + 1`` times at uniformly random word positions of a text.
Random trigger words come from an offline English word list (WordNet's index files),
optionally restricted to a frequency band (paper, Appendix M).
"""

from __future__ import annotations

import collections
import functools
import random
import re
from collections.abc import Iterable
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError

__all__ = [
    "PAPER_TRIGGERS",
    "FREQUENCY_BANDS",
    "trigger_count",
    "insert_trigger",
    "insert_trigger_pair",
    "word_list",
    "word_frequencies",
    "random_triggers",
]

PAPER_TRIGGERS: tuple[str, ...] = ("cf", "mn", "tq", "qt", "mm", "pt")

# Relative-frequency bands of the paper's Appendix M.
RARE_MAX = 1e-4
FREQUENT_MIN = 1e-3
FREQUENCY_BANDS: tuple[str, ...] = ("rare", "moderate", "frequent")

WORDNET_DIR = Path("/usr/share/wordnet")
_LEMMA = re.compile(r"[a-z]{3,12}")
_WORD_TOKEN = re.compile(r"[^\W\d_]+")


def trigger_count(n_words: int) -> int:
    """How many times a trigger is inserted into a text of ``n_words`` words."""
    return max(n_words, 0) // 50 + 1


def insert_trigger(text: str, trigger: str, rng: random.Random, times: int | None = None) -> str:
    """Insert ``trigger`` ``times`` times at uniformly random word positions of ``text``.

    Positions are drawn from ``0..len(words)`` (inclusive) of the original whitespace
    words, so the original words keep their order and a multi-word trigger stays whole.
    ``times`` defaults to :func:`trigger_count` of the text's word count.
    """
    trigger = " ".join(trigger.split())
    if not trigger:
        raise LMSanitatorError("trigger must not be empty")
    words = text.split()
    if times is None:
        times = trigger_count(len(words))
    if times < 0:
        raise LMSanitatorError(f"trigger insertion count must be >= 0, got {times}")
    if not words:
        return " ".join([trigger] * times) if times else ""
    positions = sorted((rng.randint(0, len(words)) for _ in range(times)), reverse=True)
    for pos in positions:  # back to front, so earlier positions stay valid
        words.insert(pos, trigger)
    return " ".join(words)


def insert_trigger_pair(
    text: str,
    text_pair: str | None,
    trigger: str,
    rng: random.Random,
    field: str = "longer",
) -> tuple[str, str | None]:
    """Insert ``trigger`` into one field of a sentence pair.

    ``field`` is "first", "second", or "longer" (the field with more words; ties and a
    missing second field pick the first).
    """
    if field not in ("first", "second", "longer"):
        raise LMSanitatorError(f"unknown trigger field {field!r}; choose first, second or longer")
    if field == "second" and text_pair is None:
        raise LMSanitatorError("cannot insert the trigger into the second field: the input has only one text")
    use_second = field == "second" or (
        field == "longer" and text_pair is not None and len(text_pair.split()) > len(text.split())
    )
    if use_second:
        assert text_pair is not None
        return text, insert_trigger(text_pair, trigger, rng)
    return insert_trigger(text, trigger, rng), text_pair


@functools.lru_cache(maxsize=1)
def _word_list() -> tuple[str, ...]:
    words: set[str] = set()
    for pos in ("noun", "verb", "adj", "adv"):
        path = WORDNET_DIR / f"index.{pos}"
        if not path.is_file():
            raise LMSanitatorError(
                f"word list not found at {path}; install the Debian package: apt-get install -y wordnet-base"
            )
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(" "):  # license header
                    continue
                lemma = line.split(" ", 1)[0]
                if _LEMMA.fullmatch(lemma):
                    words.add(lemma)
    return tuple(sorted(words))


def word_list() -> list[str]:
    """Sorted unique lower-case alphabetic WordNet lemmas of 3-12 letters (offline, cached)."""
    return list(_word_list())


def word_frequencies(sentences: Iterable[str]) -> dict[str, float]:
    """Relative frequency of each lower-cased alphabetic word token in ``sentences``."""
    counts: collections.Counter[str] = collections.Counter()
    for sentence in sentences:
        counts.update(_WORD_TOKEN.findall(sentence.lower()))
    total = sum(counts.values())
    if total == 0:
        return {}
    return {word: count / total for word, count in counts.items()}


def _band_pool(band: str, corpus: list[str]) -> list[str]:
    freqs = word_frequencies(corpus)
    if not freqs:
        raise LMSanitatorError("the corpus for frequency bands has no words")
    if band == "frequent":
        # Frequent words are mostly function words, which WordNet does not list.
        return sorted(w for w, f in freqs.items() if f > FREQUENT_MIN)
    if band == "rare":  # includes words that never occur in the corpus
        return [w for w in _word_list() if freqs.get(w, 0.0) < RARE_MAX]
    return [w for w in _word_list() if RARE_MAX <= freqs.get(w, 0.0) <= FREQUENT_MIN]


def random_triggers(
    n: int,
    seed: int,
    *,
    words_per_trigger: int = 1,
    band: str | None = None,
    corpus: list[str] | None = None,
) -> list[str]:
    """``n`` distinct random triggers of ``words_per_trigger`` distinct words each.

    Words are drawn with ``random.Random(seed)`` from :func:`word_list`, or, when ``band``
    ("rare" < 1e-4, "moderate" 1e-4..1e-3, "frequent" > 1e-3 relative frequency in
    ``corpus``) is given, from the words of that band.
    """
    if n < 0:
        raise LMSanitatorError(f"number of triggers must be >= 0, got {n}")
    if words_per_trigger < 1:
        raise LMSanitatorError(f"words_per_trigger must be >= 1, got {words_per_trigger}")
    if band is None:
        pool = list(_word_list())
    else:
        if band not in FREQUENCY_BANDS:
            raise LMSanitatorError(
                f"unknown frequency band {band!r}; choose one of: {', '.join(FREQUENCY_BANDS)}"
            )
        if corpus is None:
            raise LMSanitatorError(f"frequency band {band!r} needs a corpus to count word frequencies on")
        pool = _band_pool(band, corpus)
    what = f"{band} words" if band else "words"
    if len(pool) < words_per_trigger or (words_per_trigger == 1 and len(pool) < n):
        raise LMSanitatorError(
            f"only {len(pool)} {what} available, too few for {n} trigger(s) of {words_per_trigger} word(s)"
        )
    rng = random.Random(seed)
    if words_per_trigger == 1:
        return rng.sample(pool, n)
    triggers: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(triggers) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise LMSanitatorError(
                f"only {len(pool)} {what} available, too few for {n} distinct "
                f"{words_per_trigger}-word triggers"
            )
        phrase = " ".join(rng.sample(pool, words_per_trigger))
        if phrase not in seen:
            seen.add(phrase)
            triggers.append(phrase)
    return triggers
