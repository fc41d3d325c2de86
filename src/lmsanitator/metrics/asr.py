"""Measure a tuned model's attack success rate: insert triggers into clean test inputs, compare.

Sequence tasks: each trigger is inserted ``len(words) // 50 + 1`` times at uniformly random word
positions (:func:`lmsanitator.data.insert_trigger`); for sentence pairs into the longer field.
Token tasks: the trigger's words are inserted between the words of the sentence, and the
predictions for the original words are compared with the clean ones (see
:mod:`lmsanitator.metrics.classification`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.triggers import insert_trigger_pair, trigger_count
from lmsanitator.metrics.classification import attack_success, token_attack_success

__all__ = ["triggers_from_attack_json", "insert_trigger_tokens", "evaluate_asr"]


def triggers_from_attack_json(path: str | Path) -> tuple[list[str], dict]:
    """The triggers (and the whole report) of an ``attack.json`` written by ``lmsanitator attack``."""
    p = Path(path)
    if p.is_dir():
        p = p / "attack.json"
    if not p.is_file():
        raise LMSanitatorError(f"attack file not found: {path}")
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LMSanitatorError(f"cannot read attack file {p}: {exc}") from None
    triggers = report.get("triggers") if isinstance(report, dict) else None
    if (
        not isinstance(triggers, list)
        or not triggers
        or not all(isinstance(t, str) and t.strip() for t in triggers)
    ):
        raise LMSanitatorError(f"attack file {p} has no list of trigger strings under 'triggers'")
    return [" ".join(t.split()) for t in triggers], report


def insert_trigger_tokens(
    tokens: Sequence[str], trigger: str, rng: random.Random
) -> tuple[list[str], list[int]]:
    """Insert a trigger's words into a word list; return the new list and where each original word went."""
    words = trigger.split()
    if not words:
        raise LMSanitatorError("trigger must not be empty")
    slots = sorted(rng.randint(0, len(tokens)) for _ in range(trigger_count(len(tokens))))
    out, where, k = [], [], 0
    for i, tok in enumerate(list(tokens) + [None]):
        while k < len(slots) and slots[k] == i:
            out.extend(words)
            k += 1
        if tok is not None:
            where.append(len(out))
            out.append(tok)
    return out, where


def normalize_triggers(triggers: Sequence[str]) -> list[str]:
    triggers = [" ".join(str(t).split()) for t in triggers]
    if not triggers or any(not t for t in triggers):
        raise LMSanitatorError("give at least one non-empty trigger")
    return triggers


def example_inputs(examples, token: bool) -> tuple[list, list | None, list]:
    """``(texts, pairs, labels)`` of labelled examples; token tasks: word lists, no pairs."""
    if token:
        return [list(e.tokens) for e in examples], None, [list(e.label) for e in examples]
    pairs = [e.text_pair for e in examples] if any(e.text_pair is not None for e in examples) else None
    return [e.text for e in examples], pairs, [e.label for e in examples]


def triggered_inputs(
    texts, pairs, rows: Sequence[int], trigger: str, k: int, *, seed: int, field: str, token: bool
) -> tuple[list, list | None, list | None]:
    """Inputs ``rows`` with trigger number ``k`` inserted (seeded per trigger, so every evaluation
    inserts at the same positions): ``(texts, pairs, where)``; ``where`` (token tasks) maps each
    original word to its new position."""
    rng = random.Random(f"{seed}:{k}:{trigger}")
    if token:
        ins = [insert_trigger_tokens(texts[i], trigger, rng) for i in rows]
        return [w for w, _ in ins], None, [w for _, w in ins]
    poisoned = [insert_trigger_pair(texts[i], pairs[i] if pairs else None, trigger, rng, field) for i in rows]
    return [a for a, _ in poisoned], ([b for _, b in poisoned] if pairs else None), None


def evaluate_asr(model, examples, triggers: Sequence[str], *, seed: int = 0, field: str = "longer") -> dict:
    """ASR, weighted ASR, per-trigger ASR, clean accuracy (and F1 drop for token tasks) of ``model``
    (a :class:`~lmsanitator.tuning.TunedModel`) on labelled ``examples``."""
    triggers = normalize_triggers(triggers)
    if len(set(triggers)) != len(triggers):
        raise LMSanitatorError("triggers must be distinct")
    if not examples:
        raise LMSanitatorError("no examples to measure the attack success rate on")
    C = model.num_labels
    token = model.task.kind == "token"
    texts, pairs, y = example_inputs(examples, token)
    clean = model.predict_labels(texts, pairs)
    trig = {}
    if token:
        for k, t in enumerate(triggers):
            words, _, where = triggered_inputs(
                texts, None, range(len(texts)), t, k, seed=seed, field=field, token=True
            )
            pred = model.predict_labels(words)
            trig[t] = [[p[j] for j in w] for p, w in zip(pred, where)]
        res = token_attack_success(y, clean, trig, C)
    else:
        correct = [i for i in range(len(y)) if y[i] == clean[i]]
        for k, t in enumerate(triggers):
            ts, ps, _ = triggered_inputs(texts, pairs, correct, t, k, seed=seed, field=field, token=False)
            pred = model.predict_labels(ts, ps) if correct else []
            full = list(clean)  # inputs the model gets wrong are not scored; keep their clean prediction
            for i, p in zip(correct, pred):
                full[i] = p
            trig[t] = full
        res = attack_success(y, clean, trig, C)
    res["per_class"] = {model.labels[c]: v for c, v in res["per_class"].items()}
    res["triggers"] = list(triggers)
    res["seed"] = seed
    if model.task.kind != "token":
        res["field"] = field if model.task.pair else "text"
    return res
