"""``lmsanitator baseline onion``: evaluate ONION against a weight-poisoning attack, or purify JSONL."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError


def register(sub) -> dict:
    from lmsanitator.cli import tune as tcli

    parser_class = getattr(sub, "_parser_class", None)
    p = sub.add_parser("baseline", help="baseline defences (onion)", description="Baseline defences.")
    kw = {"parser_class": parser_class} if parser_class else {}
    bs = p.add_subparsers(dest="baseline_command", required=True, **kw)
    q = bs.add_parser(
        "onion",
        help="ONION: remove words whose removal lowers perplexity",
        description="Evaluate mode (--adapter, --task, --attack-json): CA and targeted ASR of tuned "
        "models on raw and on ONION-purified test inputs. Purify mode (--input, --output): JSONL "
        'lines {"text", "text_pair"?} -> {"text", "text_pair"?, "removed"}.',
    )
    q.add_argument("--adapter", action="append", help="tuned model folder (repeat for several)")
    q.add_argument("--task")
    q.add_argument("--attack-json", help="attack.json (or its folder) of `lmsanitator attack badnet|insent`")
    q.add_argument("--max-examples", type=int, help="use the first N test examples")
    q.add_argument("--input", help="purify mode: JSONL input")
    q.add_argument("--output", help="purify mode: JSONL output (evaluate mode: the JSON result)")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument(
        "--threshold", type=float, default=0.0, help="suspicion threshold in perplexity (default 0)"
    )
    q.add_argument(
        "--lm", default="smollm2", help="causal LM: smollm2 (bundled), a .gguf file, a folder or hub id"
    )
    q.add_argument("--batch-size", type=int, default=32, help="LM sequences per forward pass")
    q.add_argument("--seed", type=int, default=0, help="seed of the trigger positions")
    q.add_argument("--no-progress", action="store_true")
    tcli._task_options(q)
    q.add_argument("--device", default="cpu")
    return {"baseline": cmd_baseline}


def cmd_baseline(a) -> int:
    return {"onion": cmd_onion}[a.baseline_command](a)


def _onion(a):
    from lmsanitator.baselines.onion import ONION, ONIONConfig
    from lmsanitator.core.runtime import set_threads

    cfg = ONIONConfig(threshold=a.threshold, lm=a.lm, batch_size=a.batch_size, device=a.device)
    set_threads()
    return ONION(cfg)


def cmd_onion(a) -> int:
    evaluate = a.adapter or a.task or a.attack_json
    if a.input and evaluate:
        raise LMSanitatorError(
            "give either --input/--output (purify) or --adapter/--task/--attack-json (evaluate)"
        )
    if a.input:
        return _purify(a)
    if not (a.adapter and a.task and a.attack_json):
        raise LMSanitatorError(
            "evaluate mode needs --adapter, --task and --attack-json (or purify with --input/--output)"
        )
    return _evaluate(a)


def _purify(a) -> int:
    from lmsanitator.cli.tune import _check_new_file, _write_atomic
    from lmsanitator.core.io import jsonl_objects

    if not a.output:
        raise LMSanitatorError("purify mode needs --output")
    out = _check_new_file(a.output, a.overwrite)
    inp = Path(a.input)
    try:
        raw = inp.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LMSanitatorError(f"cannot read {a.input}: {exc}") from None
    records = []
    for n, obj in jsonl_objects(raw, a.input):
        for k in ("text", "text_pair"):
            if (k == "text" or obj.get(k) is not None) and not isinstance(obj.get(k), str):
                raise LMSanitatorError(f"line {n} of {a.input}: '{k}' must be a string")
        records.append(obj)
    if not records:
        raise LMSanitatorError(f"no inputs in {a.input}")
    onion = _onion(a)
    rows = []
    for obj in records:
        text, removed = onion.purify_one(obj["text"])
        row = {"text": text}
        if obj.get("text_pair") is not None:
            row["text_pair"], more = onion.purify_one(obj["text_pair"])
            removed = removed + more
        row["removed"] = removed
        rows.append(row)
    _write_atomic(out, "".join(json.dumps(r) + "\n" for r in rows))
    print(
        f"onion: removed {sum(len(r['removed']) for r in rows)} words from {len(rows)} inputs -> {a.output}"
    )
    return 0


def _evaluate(a) -> int:
    import dataclasses

    from lmsanitator.cli.tune import (
        _check_max_examples,
        _check_new_file,
        _load_task,
        _load_tuned,
        _write_atomic,
    )
    from lmsanitator.metrics.poisoning import PoisonSpec, poisoned_set, score

    out = _check_new_file(a.output, a.overwrite) if a.output else None
    _check_max_examples(a)
    spec, report = PoisonSpec.from_attack_json(a.attack_json)
    task = _load_task(a)
    spec.check_task(task)
    models = []
    for adapter in a.adapter:  # every adapter loads (and fails) before minutes of purification
        m = _load_tuned(argparse.Namespace(adapter=adapter, device=a.device, model=None))
        if tuple(m.labels) != tuple(task.labels):
            raise LMSanitatorError(f"adapter '{adapter}' labels differ from task '{task.name}'")
        models.append((adapter, m))
    ps = poisoned_set(task.test[: a.max_examples], spec, seed=a.seed)
    onion = _onion(a)
    prog = not a.no_progress

    def purify(xs):
        return onion.purify(xs, progress=prog) if xs is not None else None

    clean = dataclasses.replace(
        ps,
        texts=purify(ps.texts),
        pairs=purify(ps.pairs),
        poisoned_texts=purify(ps.poisoned_texts),
        poisoned_pairs=purify(ps.poisoned_pairs),
    )
    results = []
    for adapter, m in models:
        before = score(
            ps, m.predict_labels(ps.texts, ps.pairs), m.predict_labels(ps.poisoned_texts, ps.poisoned_pairs)
        )
        after = score(
            ps,
            m.predict_labels(clean.texts, clean.pairs),
            m.predict_labels(clean.poisoned_texts, clean.poisoned_pairs),
        )
        info = m.info()
        results.append(
            {
                "adapter": adapter,
                "method": info["method"],
                "model": info["model"],
                "before": before,
                "after": after,
            }
        )
        print(
            f"{info['method']:>13} {adapter}: CA {100 * before['clean_accuracy']:.1f}% -> "
            f"{100 * after['clean_accuracy']:.1f}%, ASR {100 * before['asr']:.1f}% -> {100 * after['asr']:.1f}%"
        )
    trig = spec.trigger.lower().split()
    kept = sum(all(w in t.lower().split() for w in trig) for t in clean.poisoned_texts)
    res = {
        "defence": "onion",
        "threshold": a.threshold,
        "lm": a.lm,
        "task": task.name,
        "split": "test",
        "n": len(ps.texts),
        "attack": {
            "file": a.attack_json,
            "attack": report.get("attack"),
            "trigger": spec.trigger,
            "target_label": spec.target_label,
            "insertion": spec.insertion,
        },
        "trigger_kept_rate": kept / len(ps.source) if ps.source else None,
        "words_removed_clean": sum(len(x.split()) for x in ps.texts)
        - sum(len(x.split()) for x in clean.texts),
        "results": results,
    }
    print(
        f"onion threshold {a.threshold}: trigger fully kept in {100 * (res['trigger_kept_rate'] or 0):.1f}% of "
        f"poisoned inputs; {res['words_removed_clean']} words removed from {len(ps.texts)} clean inputs"
        + (f" -> {a.output}" if out else ""),
        file=sys.stderr,
    )
    if out is not None:
        _write_atomic(out, json.dumps(res, indent=2) + "\n")
    return 0
