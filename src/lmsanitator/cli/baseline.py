"""``lmsanitator baseline onion``: evaluate ONION against a weight-poisoning attack, or purify JSONL."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from lmsanitator.baselines.onion import ONION, ONIONConfig
from lmsanitator.cli.common import (
    Parser,
    add_device,
    add_overwrite,
    add_task_options,
    check_max_examples,
    check_output_file,
    load_task_arg,
    load_tuned,
    write_text_atomic,
)
from lmsanitator.core.config import option_default
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import jsonl_objects
from lmsanitator.core.runtime import set_threads
from lmsanitator.metrics.poisoning import PoisonSpec, poisoned_set, score


def add_commands(sub) -> None:
    p = sub.add_parser("baseline", help="baseline defences (onion)", description="Baseline defences.")
    bs = p.add_subparsers(dest="baseline_command", required=True, parser_class=Parser)
    q = bs.add_parser(
        "onion",
        help="ONION: remove words whose removal lowers perplexity",
        description="Evaluate mode (--adapter, --task, --attack-json [--out RESULT.json]): CA and targeted "
        "ASR of tuned models on raw and on ONION-purified test inputs. Purify mode (--input, --output "
        'PURIFIED.jsonl): JSONL lines {"text", "text_pair"?} -> {"text", "text_pair"?, "removed"}. '
        "(Evaluate mode still takes --output for its result, the spelling before --out.)",
    )
    q.add_argument(
        "--adapter", action="append", help="evaluate mode: tuned model folder (repeat for several)"
    )
    q.add_argument("--task", help="evaluate mode: the task to take test inputs from")
    q.add_argument(
        "--attack-json",
        help="evaluate mode: attack.json (or its folder) of `lmsanitator attack badnet|insent`",
    )
    q.add_argument("--max-examples", type=int, help="evaluate mode: use the first N test examples")
    q.add_argument("--out", help="evaluate mode: the JSON result")
    q.add_argument("--input", help="purify mode: JSONL input")
    q.add_argument("--output", help="purify mode: the purified JSONL (evaluate mode: same as --out)")
    add_overwrite(q, "--out/--output")
    q.add_argument(
        "--threshold",
        type=float,
        default=option_default(ONIONConfig, "threshold"),
        help="suspicion threshold in perplexity (default %(default)s)",
    )
    q.add_argument(
        "--lm",
        default=option_default(ONIONConfig, "lm"),
        help="causal LM: smollm2 (bundled, default), a .gguf file, a folder or hub id",
    )
    q.add_argument(
        "--batch-size",
        type=int,
        default=option_default(ONIONConfig, "batch_size"),
        help="LM sequences per forward pass (default %(default)s)",
    )
    q.add_argument("--seed", type=int, default=0, help="seed of the trigger positions")
    q.add_argument("--no-progress", action="store_true")
    add_task_options(q)
    add_device(q)
    q.set_defaults(handler=cmd_onion)


def _onion(a) -> ONION:
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


def _read_records(path: str) -> list[dict]:
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LMSanitatorError(f"cannot read {path}: {exc}") from None
    records = []
    for n, obj in jsonl_objects(raw, path):
        for k in ("text", "text_pair"):
            if (k == "text" or obj.get(k) is not None) and not isinstance(obj.get(k), str):
                raise LMSanitatorError(f"line {n} of {path}: '{k}' must be a string")
        records.append(obj)
    if not records:
        raise LMSanitatorError(f"no inputs in {path}")
    return records


def _purify(a) -> int:
    if not a.output:
        raise LMSanitatorError("purify mode needs --output")
    if a.out:
        raise LMSanitatorError("--out is evaluate mode's result file; purify mode writes --output")
    out = check_output_file(a.output, a.overwrite, "--output")
    records = _read_records(a.input)
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
    write_text_atomic(out, "".join(json.dumps(r) + "\n" for r in rows))
    print(
        f"onion: removed {sum(len(r['removed']) for r in rows)} words from {len(rows)} inputs -> {a.output}"
    )
    return 0


def _result_path(a) -> tuple[str | None, Path | None]:
    """Evaluate mode's result file: ``--out`` (``--output``, its old spelling, still works)."""
    if a.out and a.output:
        raise LMSanitatorError("give the evaluate result file once: --out (or its old spelling --output)")
    name = a.out or a.output
    return name, check_output_file(name, a.overwrite, "--out" if a.out else "--output")


def _scores(models, ps, clean) -> list[dict]:
    """CA and ASR of every model on the raw (``ps``) and the purified (``clean``) inputs."""
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
            f"{100 * after['clean_accuracy']:.1f}%, "
            f"ASR {100 * before['asr']:.1f}% -> {100 * after['asr']:.1f}%"
        )
    return results


def _evaluate(a) -> int:
    name, out = _result_path(a)
    check_max_examples(a)
    spec, report = PoisonSpec.from_attack_json(a.attack_json)
    task = load_task_arg(a)
    spec.check_task(task)
    models = []
    for adapter in a.adapter:  # every adapter loads (and fails) before minutes of purification
        m = load_tuned(adapter, a.device)
        if tuple(m.labels) != tuple(task.labels):
            raise LMSanitatorError(f"adapter '{adapter}' labels differ from task '{task.name}'")
        models.append((adapter, m))
    ps = poisoned_set(task.test[: a.max_examples], spec, seed=a.seed)
    onion = _onion(a)

    def purify(xs):
        return onion.purify(xs, progress=not a.no_progress) if xs is not None else None

    clean = dataclasses.replace(
        ps,
        texts=purify(ps.texts),
        pairs=purify(ps.pairs),
        poisoned_texts=purify(ps.poisoned_texts),
        poisoned_pairs=purify(ps.poisoned_pairs),
    )
    results = _scores(models, ps, clean)
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
        f"onion threshold {a.threshold}: trigger fully kept in "
        f"{100 * (res['trigger_kept_rate'] or 0):.1f}% of poisoned inputs; "
        f"{res['words_removed_clean']} words removed from {len(ps.texts)} clean inputs"
        + (f" -> {name}" if out else ""),
        file=sys.stderr,
    )
    if out is not None:
        write_text_atomic(out, json.dumps(res, indent=2) + "\n")
    return 0
