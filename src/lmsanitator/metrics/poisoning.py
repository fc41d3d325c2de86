"""Clean accuracy (CA) and *targeted* attack success rate (ASR) of weight-poisoning backdoors.

As in the PSIM paper: ASR is the share of test inputs whose true label is NOT the attack's target
label that the model classifies as the target label once the trigger is inserted. A defence may
reject an input (predicted label ``REJECTED``): a rejected clean input counts as a CA error, a
rejected poisoned input as a failed attack. (The LMSanitator-style "prediction changes" ASR of
``lmsanitator evaluate asr`` is a different metric and stays where it is.)

Trigger insertion: ``random`` puts a trigger ``len(words) // 50 + 1`` times at random word positions
(BadNet, :func:`lmsanitator.data.insert_trigger`); ``once`` puts it once at one random word position
(InSent's sentence); ``syntactic`` has no trigger words: the input is paraphrased into the syntactic
template the trigger names (SynAttack, :mod:`lmsanitator.data.syntactic`), and an input the
paraphraser cannot rewrite is left out of the poisoned set (ASR is measured on the rewritable
non-target inputs; ``rewrite_share`` says how many those are). Sentence pairs get the trigger in the
longer field.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.syntactic import TEMPLATE, paraphrase, paraphrase_many
from lmsanitator.data.triggers import insert_trigger
from lmsanitator.metrics.asr import triggers_from_attack_json

__all__ = [
    "INSERTIONS",
    "REJECTED",
    "PoisonSpec",
    "PoisonedSet",
    "insert_poison",
    "poisoned_set",
    "score",
    "ca_asr",
]

INSERTIONS = ("random", "once", "syntactic")
REJECTED = -1  # the label a defence gives an input it refuses

Predictor = Callable[[list[str], list[str] | None], Sequence[int]]


def insert_poison(text: str, trigger: str, rng: random.Random, insertion: str = "random") -> str | None:
    """``text`` with the trigger; for ``syntactic`` the text paraphrased into the template, or None
    when the paraphraser cannot rewrite it (``rng`` unused: the paraphrase is deterministic)."""
    if insertion not in INSERTIONS:
        raise LMSanitatorError(f"unknown trigger insertion '{insertion}': choose {' or '.join(INSERTIONS)}")
    if insertion == "syntactic":
        return paraphrase(text)
    return insert_trigger(text, trigger, rng, times=1 if insertion == "once" else None)


@dataclass(frozen=True)
class PoisonSpec:
    """What a weight-poisoning attack implanted: trigger, how it is inserted, the target label.
    A ``syntactic`` trigger is the template's name, :data:`lmsanitator.data.syntactic.TEMPLATE`."""

    trigger: str
    target_label: int
    insertion: str = "random"

    def __post_init__(self) -> None:
        if not " ".join(self.trigger.split()):
            raise LMSanitatorError("trigger must not be empty")
        if self.insertion not in INSERTIONS:
            raise LMSanitatorError(
                f"unknown trigger insertion '{self.insertion}': choose {' or '.join(INSERTIONS)}"
            )
        if self.syntactic and self.trigger != TEMPLATE:
            raise LMSanitatorError(
                f"a syntactic trigger is the template {TEMPLATE} (the only one the paraphraser "
                f"writes), got '{self.trigger}'"
            )
        if (
            isinstance(self.target_label, bool)
            or not isinstance(self.target_label, int)
            or self.target_label < 0
        ):
            raise LMSanitatorError(f"target label must be a label index >= 0, got {self.target_label!r}")

    @property
    def syntactic(self) -> bool:
        return self.insertion == "syntactic"

    def insert(self, text: str, rng: random.Random) -> str | None:
        """``text`` with the trigger (None: a syntactic trigger that cannot rewrite ``text``)."""
        return insert_poison(text, self.trigger, rng, self.insertion)

    def insert_many(self, texts: list[str], rng: random.Random) -> list[str | None]:
        """:meth:`insert` on each text in order (one batched parse for a syntactic trigger)."""
        if self.syntactic:
            return paraphrase_many(texts)
        return [self.insert(t, rng) for t in texts]

    @classmethod
    def from_attack_json(cls, path: str | Path) -> tuple[PoisonSpec, dict]:
        """The spec of an ``attack.json`` written by ``lmsanitator attack badnet|insent|synattack``."""
        triggers, report = triggers_from_attack_json(path)
        if "target_label" not in report:
            raise LMSanitatorError(
                f"attack file {path} has no 'target_label': not a weight-poisoning attack (badnet, insent)"
            )
        if len(triggers) != 1:
            raise LMSanitatorError(f"attack file {path} has {len(triggers)} triggers; expected one")
        return cls(triggers[0], report["target_label"], report.get("insertion", "random")), report

    def check_task(self, task) -> None:
        if not 0 <= self.target_label < task.num_labels:
            raise LMSanitatorError(
                f"attack target label {self.target_label} is not a label of task '{task.name}'"
            )


@dataclass
class PoisonedSet:
    """Clean test inputs and, for the non-target ones, the same inputs with the trigger."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[int]
    poisoned_texts: list[str]
    poisoned_pairs: list[str] | None
    source: list[int]  # index into texts of each poisoned input
    spec: PoisonSpec
    # syntactic triggers: the share of the non-target inputs the paraphraser could rewrite (the
    # others are not in the poisoned set); None for inserted triggers, which fit every input
    rewrite_share: float | None = None


def poisoned_set(examples, spec: PoisonSpec, *, seed: int = 0) -> PoisonedSet:
    """Build the clean and the poisoned inputs of ``examples`` (seeded trigger positions)."""
    if not examples:
        raise LMSanitatorError("no examples to measure CA and ASR on")
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if any(e.text_pair is not None for e in examples) else None
    labels = [int(e.label) for e in examples]
    rng = random.Random(f"poison:{seed}:{spec.trigger}")
    candidates = [i for i, y in enumerate(labels) if y != spec.target_label]
    # the trigger goes into the longer field of a pair
    second = [
        bool(pairs and pairs[i] is not None and len(pairs[i].split()) > len(texts[i].split()))
        for i in candidates
    ]
    fields = [pairs[i] if s else texts[i] for i, s in zip(candidates, second)]
    triggered = spec.insert_many(fields, rng)
    source, p_texts, p_pairs = [], [], []
    for i, s, t in zip(candidates, second, triggered):
        if t is None:  # a syntactic trigger that cannot rewrite this input: not measured
            continue
        source.append(i)
        p_texts.append(texts[i] if s else t)
        p_pairs.append((t if s else pairs[i]) if pairs else None)
    share = len(source) / len(candidates) if candidates else float("nan")
    return PoisonedSet(
        texts,
        pairs,
        labels,
        p_texts,
        p_pairs if pairs else None,
        source,
        spec,
        rewrite_share=share if spec.syntactic else None,
    )


def score(ps: PoisonedSet, clean_pred: Sequence[int], poisoned_pred: Sequence[int]) -> dict:
    """CA and targeted ASR from predictions (``REJECTED`` for refused inputs)."""
    t = ps.spec.target_label
    n, m = len(ps.labels), len(ps.source)
    clean_pred, poisoned_pred = [int(x) for x in clean_pred], [int(x) for x in poisoned_pred]
    if len(clean_pred) != n or len(poisoned_pred) != m:
        raise LMSanitatorError("prediction count does not match the inputs")
    return {
        "clean_accuracy": sum(p == y for p, y in zip(clean_pred, ps.labels)) / n,
        "asr": sum(p == t for p in poisoned_pred) / m if m else float("nan"),
        # the floor: non-target inputs already predicted as the target without any trigger
        "clean_target_rate": sum(clean_pred[i] == t for i in ps.source) / m if m else float("nan"),
        "clean_rejected": sum(p == REJECTED for p in clean_pred) / n,
        "poisoned_rejected": sum(p == REJECTED for p in poisoned_pred) / m if m else float("nan"),
        "n_clean": n,
        "n_poisoned": m,
        "target_label": t,
        "trigger": ps.spec.trigger,
        "insertion": ps.spec.insertion,
        # syntactic triggers only: ASR is over the rewritable non-target inputs (n_poisoned of them)
        **({"rewrite_share": round(ps.rewrite_share, 4)} if ps.rewrite_share is not None else {}),
    }


def ca_asr(predict: Predictor, examples, spec: PoisonSpec, *, seed: int = 0) -> dict:
    """CA and targeted ASR of ``predict(texts, pairs) -> labels`` (``REJECTED`` allowed)."""
    ps = poisoned_set(examples, spec, seed=seed)
    return score(
        ps, predict(ps.texts, ps.pairs), predict(ps.poisoned_texts, ps.poisoned_pairs) if ps.source else []
    )
