"""``lmsanitator tune``, ``lmsanitator predict`` and ``lmsanitator evaluate asr``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmsanitator.cli.common import (
    MODEL_HELP,
    add_device,
    add_overwrite,
    add_task_options,
    add_trigger_field,
    check_max_examples,
    check_output_file,
    check_output_folder,
    check_task_matches,
    config_choices,
    load_task_arg,
    load_tuned,
    pct,
    triggers_arg,
    write_text_atomic,
)
from lmsanitator.core.config import option_default
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import atomic_output_dir
from lmsanitator.core.runtime import set_threads
from lmsanitator.data.inputs import prediction_record, read_jsonl_inputs
from lmsanitator.data.tasks import SPLITS, TASKS
from lmsanitator.metrics.asr import evaluate_asr
from lmsanitator.models import load_encoder
from lmsanitator.tuning.config import TuneConfig
from lmsanitator.tuning.methods import METHODS
from lmsanitator.tuning.trainer import Tuner


def add_commands(sub) -> None:
    """``tune`` and ``predict`` (``evaluate asr`` is :func:`add_evaluate_asr`)."""
    _add_tune(sub)
    _add_predict(sub)


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="train a downstream model (P-tuning, P-tuning v2, prompt tuning, LoRA, full)",
        description="Train a downstream classifier on a frozen encoder with peft (or fully fine-tune "
        "it) and write the adapter, the head and tune.json (clean accuracy, macro-F1) into --out.",
    )
    p.add_argument("method", choices=config_choices(TuneConfig, "method", METHODS))
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument(
        "--task",
        required=True,
        help=f"{', '.join(TASKS)}, a .csv/.tsv/.jsonl file, a preset or hf:NAME[:CONFIG]",
    )
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    add_overwrite(p, "--out")
    p.add_argument("--epochs", type=int, default=option_default(TuneConfig, "epochs"))
    p.add_argument("--lr", type=float, help="learning rate (default per method)")
    p.add_argument("--head-lr", type=float, help="learning rate of the linear head (default max(lr, 1e-3))")
    p.add_argument("--batch-size", type=int, default=option_default(TuneConfig, "batch_size"))
    p.add_argument(
        "--prefix-len", type=int, help="virtual tokens (p-tuning 8, p-tuning-v2 16, prompt-tuning 20)"
    )
    p.add_argument("--max-length", type=int, help="tokens per input (default: the task's, 64 or 128)")
    p.add_argument(
        "--train-size", type=int, help="cap the training split (a balanced prefix for built-in tasks)"
    )
    p.add_argument(
        "--val-size", type=int, help="cap the validation split (picks the best epoch; default 1000)"
    )
    p.add_argument("--patience", type=int, help="stop after this many epochs without validation gain")
    p.add_argument(
        "--no-verbalizer",
        action="store_true",
        help="p-tuning: linear head on [MASK] even when the model has an MLM head",
    )
    p.add_argument("--seed", type=int, default=option_default(TuneConfig, "seed"))
    p.add_argument("--no-progress", action="store_true")
    add_task_options(p)
    add_device(p)
    p.set_defaults(handler=cmd_tune)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict with a tuned model (JSONL in, JSONL out)",
        description='Input lines {"text": ..., "text_pair": ...} ({"tokens": [...]} for token '
        'tasks); output lines {"label", "label_name", "probs"} in the same order (token tasks: one '
        "label, name and probability row per input token).",
    )
    p.add_argument("--adapter", required=True, help="folder written by `lmsanitator tune`")
    p.add_argument("--input", required=True, help="JSONL file")
    p.add_argument("--output", required=True, help="JSONL file to write")
    p.add_argument(
        "--model",
        help="base model to apply the adapter to (default: the one it was trained on; "
        "must have the same fingerprint)",
    )
    add_overwrite(p, "--output")
    p.add_argument("--batch-size", type=int, default=option_default(TuneConfig, "eval_batch_size"))
    add_device(p)
    p.set_defaults(handler=cmd_predict)


def add_evaluate_asr(esub) -> None:
    """``lmsanitator evaluate asr`` (``esub``: the sub-parsers of ``evaluate``)."""
    q = esub.add_parser(
        "asr",
        help="attack success rate of triggers on a tuned model",
        description="ASR as in LMSanitator: among clean test inputs the model classifies correctly, the "
        "share whose prediction changes when one trigger is inserted at random word positions (any "
        "trigger counts); also weighted ASR (mean of per-class ASRs), per-trigger ASR, clean accuracy, "
        "and for token tasks the macro-F1 drop.",
    )
    q.add_argument("--adapter", required=True, help="folder written by `lmsanitator tune`")
    q.add_argument("--task", required=True, help="the task to take clean test inputs from")
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--triggers", help='comma-separated triggers, e.g. "cf,mn"')
    g.add_argument("--attack-json", help="attack.json (or its folder) written by `lmsanitator attack`")
    q.add_argument("--out", help="write the full result as JSON here")
    add_overwrite(q, "--out")
    q.add_argument("--split", default="test", choices=list(SPLITS))
    add_trigger_field(q)
    q.add_argument("--max-examples", type=int, help="use only the first N examples of the split")
    q.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    q.add_argument("--seed", type=int, default=0)
    add_task_options(q)
    add_device(q)
    q.set_defaults(handler=cmd_evaluate_asr)


def cmd_tune(a) -> int:
    cfg = TuneConfig(
        method=a.method,
        epochs=a.epochs,
        lr=a.lr,
        head_lr=a.head_lr,
        batch_size=a.batch_size,
        prefix_len=a.prefix_len,
        max_length=a.max_length,
        patience=a.patience,
        use_verbalizer=not a.no_verbalizer,
        seed=a.seed,
        device=a.device,
    )
    check_output_folder(a.out, a.overwrite)  # fail before minutes of work
    set_threads()
    task = load_task_arg(a, a.train_size).with_validation_size(a.val_size)
    encoder = load_encoder(a.model, device=a.device)
    if not a.no_progress:
        print(f"tune {a.method} on {a.model}: task {task.name} {task.sizes()}", file=sys.stderr, flush=True)
    model = Tuner(cfg).fit(encoder, task, progress=not a.no_progress)
    model.report["task_spec"] = a.task
    with atomic_output_dir(a.out, a.overwrite) as tmp:
        model.save(tmp)
    r = model.report
    print(
        f"{a.method} on {a.model}, task {task.name}: clean accuracy {pct(r['accuracy'])}, macro-F1 "
        f"{pct(r['macro_f1'])} (test n={task.sizes()['test']}, best epoch {r['best_epoch']}/{cfg.epochs}), "
        f"{r['seconds']:.0f} s -> {a.out}"
    )
    return 0


def cmd_predict(a) -> int:
    if not Path(a.input).is_file():
        raise LMSanitatorError(f"input file not found: {a.input}")
    if a.batch_size < 1:
        raise LMSanitatorError("--batch-size must be >= 1")
    out = check_output_file(a.output, a.overwrite, "--output")
    set_threads()
    model = load_tuned(a.adapter, a.device, a.model)
    texts, pairs = read_jsonl_inputs(a.input, model)
    probs = model.predict(texts, pairs, batch_size=a.batch_size)
    rows = [prediction_record(model, p) for p in probs]
    write_text_atomic(out, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"predicted {len(rows)} inputs -> {a.output}")
    return 0


def cmd_evaluate_asr(a) -> int:
    triggers, report = triggers_arg(a)
    check_max_examples(a)
    out = check_output_file(a.out, a.overwrite, "--out")
    attack = (
        None
        if report is None
        else {"file": a.attack_json, "attack": report.get("attack"), "base_model": report.get("base_model")}
    )
    set_threads()
    task = load_task_arg(a)
    model = load_tuned(a.adapter, a.device, a.model)
    check_task_matches(task, model)
    examples = task.split(a.split)[: a.max_examples]
    res = evaluate_asr(model, examples, triggers, seed=a.seed, field=a.field)
    info = model.info()
    res = {
        "adapter": str(a.adapter),
        "method": info["method"],
        "model": info["model"],
        "task": task.name,
        "split": a.split,
        "attack": attack,
        **res,
    }
    if out is not None:
        write_text_atomic(out, json.dumps(res, indent=2) + "\n")
    extra = f", macro-F1 drop {pct(res['f1_drop'])}" if "f1_drop" in res else ""
    unit = f" words of {len(examples)} sentences" if "f1_drop" in res else ""
    per = ", ".join(f"{t} {pct(v)}" for t, v in res["per_trigger"].items())
    print(
        f"{info['method']} on {info['model']}, task {task.name}: "
        f"clean accuracy {pct(res['clean_accuracy'])}, "
        f"ASR {pct(res['asr'])}, weighted ASR {pct(res['weighted_asr'])}{extra} (n={res['n']}{unit}, "
        f"correct {res['n_correct']}; per trigger: {per})" + (f" -> {a.out}" if a.out else "")
    )
    return 0
