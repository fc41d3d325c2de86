"""Clean accuracy, macro-F1 and attack success rate (ASR) from predictions (pure Python).

ASR as in the LMSanitator paper and its authors' code: among the clean test inputs the model
classifies *correctly*, the share whose prediction *changes* when one trigger is inserted (at
random word positions). With several triggers an input counts as attacked when any of them
changes its prediction; the per-trigger ASR counts each trigger alone. The weighted ASR is the
mean of the per-class ASRs (classes by true label, classes without a correct input skipped), so
a large class does not dominate.

Token classification (NER): the unit is a word of the clean input; a correctly labelled word is
attacked when its label changes once a trigger is inserted somewhere in the sentence (the
inserted trigger words themselves are not scored). The F1 drop is clean macro-F1 minus the
macro-F1 on triggered inputs (mean over triggers, and per trigger).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lmsanitator.core.errors import LMSanitatorError

__all__ = ["accuracy", "macro_f1", "per_class_f1", "attack_success", "token_attack_success", "flatten"]


def _check_same_length(*seqs: Sequence, what: str = "predictions") -> int:
    n = len(seqs[0])
    for s in seqs[1:]:
        if len(s) != n:
            raise LMSanitatorError(f"{what}: lengths differ ({n} vs {len(s)})")
    return n


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    n = _check_same_length(y_true, y_pred)
    if n == 0:
        return float("nan")
    return sum(int(a == b) for a, b in zip(y_true, y_pred)) / n


def per_class_f1(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None
) -> dict[int, float]:
    """F1 of each label (labels default to those in ``y_true`` or ``y_pred``)."""
    _check_same_length(y_true, y_pred)
    if labels is None:
        labels = sorted(set(y_true) | set(y_pred))
    out = {}
    for c in labels:
        tp = sum(1 for a, b in zip(y_true, y_pred) if a == c and b == c)
        fp = sum(1 for a, b in zip(y_true, y_pred) if a != c and b == c)
        fn = sum(1 for a, b in zip(y_true, y_pred) if a == c and b != c)
        denom = 2 * tp + fp + fn
        out[c] = 2 * tp / denom if denom else 0.0
    return out


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int] | None = None) -> float:
    """Unweighted mean F1 over labels (by default those occurring in ``y_true`` or ``y_pred``)."""
    f = per_class_f1(y_true, y_pred, labels)
    return sum(f.values()) / len(f) if f else float("nan")


def flatten(seqs: Sequence[Sequence[int]]) -> list[int]:
    return [x for s in seqs for x in s]


def attack_success(
    y_true: Sequence[int],
    clean_pred: Sequence[int],
    triggered_pred: Mapping[str, Sequence[int]],
    num_labels: int | None = None,
) -> dict:
    """ASR of sequence classification.

    ``triggered_pred[trigger][i]`` is the prediction for input ``i`` with ``trigger`` inserted.
    Returns ``clean_accuracy``, ``n``, ``n_correct``, ``asr``, ``weighted_asr``, ``per_trigger``
    (trigger -> ASR) and ``per_class`` (label -> {n_correct, asr}).
    """
    n = _check_same_length(y_true, clean_pred, what="clean predictions")
    if not triggered_pred:
        raise LMSanitatorError("no triggers to measure the attack success rate with")
    for t, p in triggered_pred.items():
        if len(p) != n:
            raise LMSanitatorError(f"predictions for trigger '{t}': {len(p)} for {n} inputs")
    correct = [i for i in range(n) if y_true[i] == clean_pred[i]]
    flipped = {t: [p[i] != clean_pred[i] for i in correct] for t, p in triggered_pred.items()}
    any_flip = [any(flipped[t][k] for t in flipped) for k in range(len(correct))]

    def rate(xs) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    labels = range(num_labels) if num_labels is not None else sorted(set(y_true))
    per_class = {}
    for c in labels:
        ks = [k for k, i in enumerate(correct) if y_true[i] == c]
        per_class[int(c)] = {"n_correct": len(ks), "asr": rate([any_flip[k] for k in ks])}
    class_rates = [v["asr"] for v in per_class.values() if v["n_correct"]]
    return {
        "n": n,
        "n_correct": len(correct),
        "clean_accuracy": len(correct) / n if n else float("nan"),
        "asr": rate(any_flip),
        "weighted_asr": sum(class_rates) / len(class_rates) if class_rates else float("nan"),
        "per_trigger": {t: rate(v) for t, v in flipped.items()},
        "per_class": per_class,
    }


def token_attack_success(
    y_true: Sequence[Sequence[int]],
    clean_pred: Sequence[Sequence[int]],
    triggered_pred: Mapping[str, Sequence[Sequence[int]]],
    num_labels: int | None = None,
) -> dict:
    """ASR and F1 drop of token classification.

    Each ``triggered_pred[trigger][i]`` holds the predictions for the *original* words of
    sentence ``i`` (inserted trigger words removed), so it lines up with ``y_true[i]``.
    """
    _check_same_length(y_true, clean_pred, what="clean predictions")
    for i, (a, b) in enumerate(zip(y_true, clean_pred)):
        if len(a) != len(b):
            raise LMSanitatorError(f"sentence {i}: {len(a)} gold tags but {len(b)} predictions")
    for t, p in triggered_pred.items():
        if len(p) != len(y_true) or any(len(a) != len(b) for a, b in zip(y_true, p)):
            raise LMSanitatorError(f"predictions for trigger '{t}' do not line up with the clean words")
    flat_true, flat_clean = flatten(y_true), flatten(clean_pred)
    flat_trig = {t: flatten(p) for t, p in triggered_pred.items()}
    labels = list(range(num_labels)) if num_labels is not None else None
    seq = attack_success(flat_true, flat_clean, flat_trig, num_labels)
    clean_f1 = macro_f1(flat_true, flat_clean, _present(flat_true, labels))
    per_trigger_f1 = {t: macro_f1(flat_true, p, _present(flat_true, labels)) for t, p in flat_trig.items()}
    drops = {t: clean_f1 - f for t, f in per_trigger_f1.items()}
    seq.update(
        {
            "unit": "word",
            "clean_macro_f1": clean_f1,
            "triggered_macro_f1": per_trigger_f1,
            "f1_drop": sum(drops.values()) / len(drops),
            "per_trigger_f1_drop": drops,
        }
    )
    return seq


def _present(y_true: Sequence[int], labels: list[int] | None) -> list[int]:
    """Labels scored by the NER macro-F1: those with at least one gold word."""
    present = sorted(set(y_true))
    return [c for c in labels if c in present] if labels is not None else present
