"""``wordnet-topic``: a WordNet noun gloss -> its lexicographer category (Debian ``wordnet-base``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
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

WORDNET_DIR = Path("/usr/share/wordnet")
# WordNet's standard lexicographer file names, index = lex_filenum (field 2 of a data line)
LEXNAMES: tuple[str, ...] = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
# category -> P-tuning label word
WORDNET_TOPICS: dict[str, str] = {
    "noun.animal": "animal",
    "noun.artifact": "object",
    "noun.food": "food",
    "noun.person": "person",
    "noun.plant": "plant",
    "noun.location": "place",
}

_QUOTED = re.compile(r'"[^"]*"')


def _wordnet_topic(categories: Sequence[str] | None = None) -> Task:
    cats = tuple(categories or WORDNET_TOPICS)
    if len(cats) < 4:
        raise LMSanitatorError("wordnet-topic needs at least four noun categories")
    for c in cats:
        if c not in LEXNAMES or not c.startswith("noun."):
            raise LMSanitatorError(f"unknown WordNet noun category '{c}'")
    want = {LEXNAMES.index(c): i for i, c in enumerate(cats)}
    path = WORDNET_DIR / "data.noun"
    if not path.is_file():
        raise LMSanitatorError(
            f"WordNet data not found at {path}; install the Debian package: apt-get install -y wordnet-base"
        )
    items = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  "):  # license header
                continue
            fields = line.split(" ", 3)
            if len(fields) < 4 or "|" not in line:
                continue
            lex = int(fields[1])
            if lex not in want:
                continue
            gloss = line[line.index("|") + 1 :]
            definition = "; ".join(p.strip() for p in _QUOTED.sub(" ", gloss).split(";") if p.strip())
            definition = " ".join(definition.split())
            if len(definition.split()) >= 3:
                items.append((definition, want[lex]))
    train, val, test = balanced_splits(dedupe_labelled(items), len(cats), f"{SPLIT_SALT}:wordnet-topic")
    return Task(
        name="wordnet-topic",
        labels=cats,
        train=examples_of(train),
        validation=examples_of(val),
        test=examples_of(test),
        verbalizer=tuple(WORDNET_TOPICS.get(c, c.split(".")[1]) for c in cats),
        template="Topic: {mask}. {text}",
        max_length=64,
        source="Debian wordnet-base: /usr/share/wordnet/data.noun (gloss definitions, lex_filenum)",
        description=f"WordNet noun gloss -> lexicographer category ({', '.join(cats)}), class-balanced",
    )


@register_task("wordnet-topic", "WordNet noun gloss -> category, 6 classes (Debian wordnet-base)")
def wordnet_topic() -> Task:
    return _wordnet_topic()
