"""Evaluate a guard: clean accuracy and ASR without and with it, FRR / FAR as T_match varies, and
the match-rate histogram of clean vs triggered inputs (the paper's Figure 14).

Triggers are inserted exactly as :func:`lmsanitator.metrics.asr.evaluate_asr` does (same seeds,
same positions), so "ASR without the guard" here equals ``lmsanitator evaluate asr``. Without the
guard, predictions are the tuned model's own (the monitor's pass); with it, they are the guard's
(purged input when flagged). A rejected input (``--on-unresolved reject``) counts as wrong when
clean and as a failed attack when triggered.

* FRR(T) = share of clean inputs whose match rate exceeds T (they would be purged);
* FAR(T) = share of triggered inputs whose match rate is <= T (the backdoor passes unnoticed).

``flagged_input_seconds``: p50 / p99 / max seconds the guard takes for one flagged triggered input
sent alone (up to 100 of them, a seeded sample), trigger removal included.

``variants`` adds the adaptive attacker's obvious moves, each measured like the plain triggers
(ASR without and with the guard, share flagged, share left unresolved): the trigger inserted once
more (``repeated``), in another case (``case``), glued to punctuation (``punctuation``), split
across the two fields of a pair (``split-pair``; pair tasks only), joined with the next trigger
into a two-word phrase (``phrase``), and the next trigger inserted somewhere else too
(``two-apart``: two PVs at once, out of reach of one window).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import numpy as np

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.triggers import insert_trigger
from lmsanitator.metrics.asr import (
    example_inputs,
    insert_trigger_tokens,
    normalize_triggers,
    triggered_inputs,
)
from lmsanitator.metrics.classification import attack_success, token_attack_success

T_GRID = [round(0.5 + 0.01 * k, 2) for k in range(51)]
TIMED_FLAGGED = 100  # flagged triggered inputs timed one at a time (the purge's per-input latency)
VARIANTS = ("repeated", "case", "punctuation", "split-pair", "phrase", "two-apart")


def _labels(records, key: str, fallback):
    return [fallback(i) if r[key] is None else r[key] for i, r in enumerate(records)]


def rate_curves(clean_rates: Sequence[float], trig_rates: Sequence[float], grid=T_GRID) -> list[dict]:
    c, t = np.asarray(clean_rates, float), np.asarray(trig_rates, float)
    return [
        {
            "t_match": g,
            "frr": float((c > g).mean()) if c.size else float("nan"),
            "far": float((t <= g).mean()) if t.size else float("nan"),
        }
        for g in grid
    ]


def _attack(guard, inputs, correct, clean_plain, clean_guard, token):
    """``(plain, guarded, records)``: predictions with the triggered ``inputs`` (texts, pairs, word
    maps) of rows ``correct``, without and with the guard, the others keeping their clean ones."""
    ts, ps, wheres = inputs
    plain, guarded = list(clean_plain), list(clean_guard)
    recs = guard.predict(ts, ps) if correct else []
    if token:
        for i, (r, where) in enumerate(zip(recs, wheres)):
            plain[i] = [r["unguarded_label"][j] for j in where]
            guarded[i] = [r["label"][j] for j in where] if r["label"] is not None else clean_guard[i]
    else:
        for i, r in zip(correct, recs):
            plain[i] = r["unguarded_label"]
            # a rejected triggered input is a failed attack: it keeps the clean prediction
            guarded[i] = clean_guard[i] if r["label"] is None else r["label"]
    return plain, guarded, recs


def evaluate_guard(
    guard,
    examples,
    triggers: Sequence[str],
    *,
    seed: int = 0,
    field: str = "longer",
    variants: Sequence[str] = (),
) -> dict:
    """Every number of the guard evaluation (see the module docstring) on labelled ``examples``.
    Long: most of it is the result record, one key per number, kept in one place."""
    model = guard.model
    triggers = normalize_triggers(triggers)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise LMSanitatorError(
            f"unknown trigger variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}"
        )
    if not examples:
        raise LMSanitatorError("no examples to evaluate the guard on")
    C = model.num_labels
    token = model.task.kind == "token"
    texts, pairs, y = example_inputs(examples, token)
    clean_rec = guard.predict(texts, pairs)
    wrong = (lambda i: [-1] * len(y[i])) if token else (lambda i: -1)
    clean_plain = [r["unguarded_label"] for r in clean_rec]
    clean_guard = _labels(clean_rec, "label", wrong)
    if token:
        correct = list(range(len(texts)))
    else:
        correct = [i for i in range(len(y)) if y[i] == clean_plain[i]]
    trig_plain, trig_guard, trig_recs, removed_hits, flagged_inputs = {}, {}, [], {}, []
    for k, t in enumerate(triggers):
        inputs = triggered_inputs(texts, pairs, correct, t, k, seed=seed, field=field, token=token)
        trig_plain[t], trig_guard[t], recs = _attack(guard, inputs, correct, clean_plain, clean_guard, token)
        trig_recs.extend(recs)
        ts, ps, _ = inputs
        flagged_inputs += [(ts[j], ps[j] if ps else None) for j, r in enumerate(recs) if r["flagged"]]
        removed_hits[t] = _trigger_removed_share(recs, t)
    score = token_attack_success if token else attack_success
    without = score(y, clean_plain, trig_plain, C)
    with_guard = score(y, clean_guard, trig_guard, C)
    clean_rates = [r["match_rate"] for r in clean_rec]
    trig_rates = [r["match_rate"] for r in trig_recs]
    flagged_trig = [r for r in trig_recs if r["flagged"]]
    res = {
        "n": len(examples),
        "triggers": triggers,
        "seed": seed,
        "config": guard.info(),
        "clean_accuracy": without["clean_accuracy"],
        "clean_accuracy_guarded": with_guard["clean_accuracy"],
        "asr": without["asr"],
        "asr_guarded": with_guard["asr"],
        "weighted_asr": without["weighted_asr"],
        "weighted_asr_guarded": with_guard["weighted_asr"],
        "per_trigger": {
            t: {
                "asr": without["per_trigger"][t],
                "asr_guarded": with_guard["per_trigger"][t],
                "trigger_removed": removed_hits[t],
            }
            for t in triggers
        },
        "clean_flagged": float(np.mean([r["flagged"] for r in clean_rec])),
        "triggered_flagged": len(flagged_trig) / len(trig_recs) if trig_recs else float("nan"),
        "unresolved_triggered": _unresolved(flagged_trig),
        "rates": rate_curves(clean_rates, trig_rates),
        "match_rates": {"clean": clean_rates, "triggered": trig_rates},
        "flagged_input_seconds": flagged_latency(guard, flagged_inputs, seed=seed),
    }
    if token:
        res["f1_drop"] = without.get("f1_drop")
        res["f1_drop_guarded"] = with_guard.get("f1_drop")
    if variants:
        state = (texts, pairs, y, correct, clean_plain, clean_guard)
        res["variants"] = {
            v: out
            for v in variants
            if (out := _variant(guard, v, triggers, state, seed=seed, field=field)) is not None
        }
    return res


def flagged_latency(guard, flagged: list, *, seed: int = 0, n: int = TIMED_FLAGGED) -> dict:
    """Seconds :meth:`Guard.predict` takes for one flagged input alone (the monitor's pass and the
    trigger removal, as a service request of one pays them), over up to ``n`` of ``flagged``
    (``(text, pair)``; a seeded sample): p50, p99 and max, and how many were timed."""
    if not flagged:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    chosen = random.Random(f"{seed}:latency").sample(flagged, min(n, len(flagged)))
    times = []
    for text, pair in chosen:
        t0 = time.perf_counter()
        guard.predict([text], [pair] if pair is not None else None)
        times.append(time.perf_counter() - t0)
    times.sort()
    q = lambda p: round(times[min(len(times) - 1, int(p * len(times)))], 4)  # noqa: E731
    return {"n": len(times), "p50": q(0.5), "p99": q(0.99), "max": round(times[-1], 4)}


def _unresolved(flagged: list) -> float:
    return sum(not r["resolved"] for r in flagged) / len(flagged) if flagged else float("nan")


def variant_inputs(
    texts, pairs, rows, triggers: list[str], k: int, variant: str, *, seed: int, field: str, token: bool
):
    """Rows ``rows`` with trigger ``k`` inserted the ``variant`` way (seeded as
    :func:`~lmsanitator.metrics.asr.triggered_inputs`): ``(texts, pairs, word maps)``, or None when
    the variant does not apply (``split-pair`` without pairs)."""
    t = triggers[k]
    if variant == "split-pair":
        if token or pairs is None:
            return None
        rng = random.Random(f"{seed}:{k}:{t}:split")
        words = t.split()
        half = max(1, len(words) // 2)
        first, second = " ".join(words[:half]), " ".join(words[half:] or words)
        return (
            [insert_trigger(texts[i], first, rng) for i in rows],
            [insert_trigger(pairs[i], second, rng) for i in rows],
            None,
        )
    shown = {
        "repeated": t,
        "case": t.upper() if t.upper() != t else t.lower(),
        "punctuation": t + ",",
        "phrase": f"{t} {triggers[(k + 1) % len(triggers)]}",
        "two-apart": t,
    }[variant]
    ts, ps, wheres = triggered_inputs(texts, pairs, rows, shown, k, seed=seed, field=field, token=token)
    if variant not in ("repeated", "two-apart"):
        return ts, ps, wheres
    # once more anywhere: the same trigger, or the next one
    t2 = t if variant == "repeated" else triggers[(k + 1) % len(triggers)]
    rng = random.Random(f"{seed}:{k}:{t}:again" if variant == "repeated" else f"{seed}:{k}:{t}:{t2}:apart")
    if token:
        again = [insert_trigger_tokens(w, t2, rng) for w in ts]
        return [w for w, _ in again], None, [[m[j] for j in where] for (_, m), where in zip(again, wheres)]
    return [insert_trigger(x, t2, rng, times=1) for x in ts], ps, None


def _variant(guard, variant: str, triggers: list[str], state, *, seed: int, field: str) -> dict | None:
    """ASR without and with the guard, share flagged and unresolved, of one variant over all triggers."""
    texts, pairs, y, correct, clean_plain, clean_guard = state
    token = guard.model.task.kind == "token"
    plain, guarded, recs = {}, {}, []
    for k, t in enumerate(triggers):
        inputs = variant_inputs(
            texts, pairs, correct, triggers, k, variant, seed=seed, field=field, token=token
        )
        if inputs is None:
            return None
        plain[t], guarded[t], r = _attack(guard, inputs, correct, clean_plain, clean_guard, token)
        recs.extend(r)
    score = token_attack_success if token else attack_success
    C = guard.model.num_labels
    without, with_guard = score(y, clean_plain, plain, C), score(y, clean_guard, guarded, C)
    flagged = [r for r in recs if r["flagged"]]
    return {
        "asr": without["asr"],
        "asr_guarded": with_guard["asr"],
        "triggered_flagged": len(flagged) / len(recs) if recs else float("nan"),
        "unresolved_triggered": _unresolved(flagged),
        "rejected": sum(r["rejected"] for r in recs) / len(recs) if recs else float("nan"),
    }


def _trigger_removed_share(records, trigger: str) -> float:
    """Among flagged triggered inputs, how often the removed words are exactly the trigger's."""
    flagged = [r for r in records if r["flagged"]]
    if not flagged:
        return float("nan")
    return sum(" ".join(r["removed"]) == trigger for r in flagged) / len(flagged)


def plot_match_rates(res: dict, path, title: str = "") -> None:
    """Histogram of clean vs triggered match rates with the T_match line (Figure 14)."""
    import matplotlib  # noqa: PLC0415  heavy: optional plotting dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  heavy: optional plotting dependency

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    bins = np.linspace(0.0, 1.0, 51)
    ax.hist(
        res["match_rates"]["clean"],
        bins=bins,
        alpha=0.7,
        label=f"clean (n={len(res['match_rates']['clean'])})",
        color="tab:blue",
    )
    ax.hist(
        res["match_rates"]["triggered"],
        bins=bins,
        alpha=0.7,
        label=f"triggered (n={len(res['match_rates']['triggered'])})",
        color="tab:red",
    )
    t = res["config"]["t_match"]
    ax.axvline(t, color="k", ls="--", lw=1, label=f"T_match = {t:.2f} d")
    ax.set_xlabel("PV sign match rate (share of d)")
    ax.set_ylabel("inputs")
    ax.set_title(title or f"{res['config']['method']} on {res['config']['model']}, {res['config']['task']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")  # the path may be a temporary name without .png
    plt.close(fig)
