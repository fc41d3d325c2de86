"""The data model of a downstream task, its deterministic split helpers and the ONE task registry.

A built-in task is a builder registered under its name with :func:`register_task`; ``load_task``
finds it there (and only there). Splits are deterministic and disjoint (texts are de-duplicated
before splitting); built-in tasks are class-balanced at paper scale where the data allows.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lmsanitator.core.errors import LMSanitatorError

SPLITS: tuple[str, ...] = ("train", "validation", "test")
TRAIN_SIZE, VALIDATION_SIZE, TEST_SIZE = 6000, 1000, 2000
KINDS = ("sequence", "token")
SPLIT_SALT = "lmsanitator-task-split-v1"  # changing it re-draws every split


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
def stable_key(text: str, salt: str = SPLIT_SALT) -> bytes:
    return hashlib.sha256(f"{salt}\x00{text}".encode()).digest()


def dedupe_labelled(items: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Drop exact duplicate texts; a text seen with two different labels is dropped altogether."""
    first: dict[str, int] = {}
    conflict: set[str] = set()
    for text, label in items:
        if text in first and first[text] != label:
            conflict.add(text)
        first.setdefault(text, label)
    return [(t, y) for t, y in first.items() if t not in conflict]


def balanced_splits(
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
        texts.sort(key=lambda t: stable_key(t, salt))
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
        out.append(interleave(per_class))
    test, val, train = out
    return train, val, test


def interleave(lists: list[list]) -> list:
    out = []
    for i in range(max((len(x) for x in lists), default=0)):
        for lst in lists:
            if i < len(lst):
                out.append(lst[i])
    return out


def examples_of(pairs: Iterable[tuple[str, int]]) -> list[Example]:
    return [Example(text=t, label=y) for t, y in pairs]


# ============================================================================ the registry
@dataclass(frozen=True)
class TaskEntry:
    """A built-in task: its builder and the one-line description shown in listings."""

    name: str
    builder: Callable[..., Task]
    description: str
    min_confidence: bool = False  # the builder takes ``min_confidence`` (label-agreement filter)


TASKS: dict[str, TaskEntry] = {}  # name -> entry, in registration order (the order listings show)


def register_task(name: str, description: str, *, min_confidence: bool = False):
    """Decorator: register ``builder() -> Task`` (``builder(min_confidence)`` with the flag) as ``name``."""

    def wrap(builder: Callable[..., Task]) -> Callable[..., Task]:
        if name in TASKS:
            raise LMSanitatorError(f"task '{name}' is registered twice")
        TASKS[name] = TaskEntry(name, builder, description, min_confidence)
        return builder

    return wrap


@functools.lru_cache(maxsize=16)
def build_task(name: str, min_confidence: float | None = None) -> Task:
    """The registered task ``name``, built once per process (callers copy its split lists)."""
    entry = TASKS[name]
    if entry.min_confidence:
        return entry.builder(min_confidence)
    if min_confidence is not None:
        raise LMSanitatorError("min_confidence applies to the tweets tasks only")
    return entry.builder()
