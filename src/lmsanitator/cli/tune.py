"""Sub-commands ``tune``, ``predict`` and the ``evaluate`` group (``evaluate asr``).

Other feature modules add ``evaluate`` sub-commands after :func:`register` ran::

    from lmsanitator.cli import tune as tcli
    p = tcli.add_evaluate_command("guard", handler, help="...")   # an argparse parser to fill
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.inputs import prediction_record, read_jsonl_inputs

EVALUATE_SUBPARSERS = None  # the argparse sub-parsers object of `lmsanitator evaluate`
EVALUATE_COMMANDS: dict = {}  # evaluate sub-command -> handler(namespace) -> exit code


def add_evaluate_command(name: str, handler, **parser_kwargs):
    """Add ``lmsanitator evaluate NAME``; returns its parser (add arguments to it)."""
    if EVALUATE_SUBPARSERS is None:
        raise RuntimeError("lmsanitator.cli.tune.register() has not run yet")
    p = EVALUATE_SUBPARSERS.add_parser(name, **parser_kwargs)
    EVALUATE_COMMANDS[name] = handler
    return p


def _task_options(p) -> None:
    p.add_argument("--text-column", help="local/HF tasks: column of the first text field (default text)")
    p.add_argument("--pair-column", help="local/HF tasks: column of the second text field (sentence pairs)")
    p.add_argument("--label-column", help="local/HF tasks: label column (default label)")
    p.add_argument("--labels", help="comma-separated label names in index order (fixes the label set)")
    p.add_argument(
        "--min-confidence", type=float, help="tweets tasks: keep labels with at least this confidence"
    )


def _device(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")


def register(sub) -> dict:
    global EVALUATE_SUBPARSERS
    from lmsanitator.data.tasks import TASKS
    from lmsanitator.tuning.methods import METHODS

    parser_class = getattr(sub, "_parser_class", None)  # the main parser's class: one-line errors, exit 2

    # tune -----------------------------------------------------------------------------------------
    p = sub.add_parser(
        "tune",
        help="train a downstream model (P-tuning, P-tuning v2, prompt tuning, LoRA, full)",
        description="Train a downstream classifier on a frozen encoder with peft (or fully fine-tune "
        "it) and write the adapter, the head and tune.json (clean accuracy, macro-F1) into --out.",
    )
    p.add_argument("method", choices=list(METHODS))
    p.add_argument(
        "--model", required=True, help="bundled name (minilm, minilm-sre, splade-tiny), hub id or folder"
    )
    p.add_argument(
        "--task",
        required=True,
        help=f"{', '.join(TASKS)}, a .csv/.tsv/.jsonl file, a preset or hf:NAME[:CONFIG]",
    )
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, help="learning rate (default per method)")
    p.add_argument("--head-lr", type=float, help="learning rate of the linear head (default max(lr, 1e-3))")
    p.add_argument("--batch-size", type=int, default=32)
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    _task_options(p)
    _device(p)

    # predict --------------------------------------------------------------------------------------
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--batch-size", type=int, default=64)
    _device(p)

    # evaluate -------------------------------------------------------------------------------------
    p = sub.add_parser(
        "evaluate",
        help="measure a tuned model: asr (attack success rate), ...",
        description="Evaluation sub-commands.",
    )
    kw = {"parser_class": parser_class} if parser_class else {}
    EVALUATE_SUBPARSERS = p.add_subparsers(dest="evaluate_command", required=True, **kw)
    q = add_evaluate_command(
        "asr",
        cmd_evaluate_asr,
        help="attack success rate of triggers on a tuned model",
        description="ASR as in LMSanitator: among clean test inputs the model classifies correctly, the share "
        "whose prediction changes when one trigger is inserted at random word positions (any trigger counts); "
        "also weighted ASR (mean of per-class ASRs), per-trigger ASR, clean accuracy, and for token tasks the "
        "macro-F1 drop.",
    )
    q.add_argument("--adapter", required=True, help="folder written by `lmsanitator tune`")
    q.add_argument("--task", required=True, help="the task to take clean test inputs from")
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--triggers", help='comma-separated triggers, e.g. "cf,mn"')
    g.add_argument("--attack-json", help="attack.json (or its folder) written by `lmsanitator attack`")
    q.add_argument("--out", help="write the full result as JSON here")
    q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    q.add_argument("--split", default="test", choices=["test", "validation", "train"])
    q.add_argument(
        "--field",
        default="longer",
        choices=["longer", "first", "second"],
        help="sentence pairs: which field gets the trigger (default: the longer)",
    )
    q.add_argument("--max-examples", type=int, help="use only the first N examples of the split")
    q.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    q.add_argument("--seed", type=int, default=0)
    _task_options(q)
    _device(q)
    return {"tune": cmd_tune, "predict": cmd_predict, "evaluate": cmd_evaluate}


# ================================================================================== helpers
def _load_task(a, train_size=None):
    from lmsanitator.data.tasks import load_task

    labels = [x.strip() for x in a.labels.split(",")] if getattr(a, "labels", None) else None
    return load_task(
        a.task,
        train_size=train_size,
        text_column=a.text_column,
        pair_column=a.pair_column,
        label_column=a.label_column,
        labels=labels,
        min_confidence=a.min_confidence,
    )


def _check_new_file(path: str, overwrite: bool) -> Path:
    p = Path(path)
    if p.exists():
        if p.is_dir():
            raise LMSanitatorError(f"'{path}' is a folder, expected a file")
        if not overwrite:
            raise LMSanitatorError(f"'{path}' exists (use --overwrite)")
    if not p.resolve().parent.is_dir():
        raise LMSanitatorError(f"folder of '{path}' does not exist")
    return p


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_tuned(a):
    from lmsanitator.models import load_encoder
    from lmsanitator.tuning.model import TunedModel, read_tune_json

    read_tune_json(a.adapter)  # a clear error before loading any model
    enc = load_encoder(a.model, device=a.device) if getattr(a, "model", None) else None
    return TunedModel.load(a.adapter, enc, device=a.device)


def _check_max_examples(a) -> None:
    if a.max_examples is not None and a.max_examples < 1:
        raise LMSanitatorError("--max-examples must be >= 1")


def _triggers_arg(a) -> tuple[list[str], dict | None]:
    """Triggers of ``--attack-json`` (with its report) or of ``--triggers`` (report None)."""
    from lmsanitator.metrics.asr import triggers_from_attack_json

    if a.attack_json:
        return triggers_from_attack_json(a.attack_json)
    triggers = [t.strip() for t in a.triggers.split(",")]
    if not all(triggers):
        raise LMSanitatorError("--triggers has an empty trigger")
    return triggers, None


def _check_task_matches(task, model) -> None:
    """The task's labels and kind must be the adapter's."""
    if tuple(task.labels) != tuple(model.labels) or task.kind != model.task.kind:
        raise LMSanitatorError(
            f"task '{task.name}' (labels {', '.join(task.labels)}) does not match the adapter's "
            f"labels ({', '.join(model.labels)})"
        )


def _fmt(x) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, float) and x == x else "n/a"


# ================================================================================== commands
def cmd_tune(a) -> int:
    from lmsanitator.core.io import atomic_output_dir, check_output_dir
    from lmsanitator.core.runtime import set_threads
    from lmsanitator.models import load_encoder
    from lmsanitator.tuning.config import TuneConfig
    from lmsanitator.tuning.trainer import Tuner

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
    check_output_dir(a.out, a.overwrite)  # fail before minutes of work
    set_threads()
    task = _load_task(a, a.train_size).with_validation_size(a.val_size)
    encoder = load_encoder(a.model, device=a.device)
    if not a.no_progress:
        print(f"tune {a.method} on {a.model}: task {task.name} {task.sizes()}", file=sys.stderr, flush=True)
    model = Tuner(cfg).fit(encoder, task, progress=not a.no_progress)
    model.report["task_spec"] = a.task
    with atomic_output_dir(a.out, a.overwrite) as tmp:
        model.save(tmp)
    r = model.report
    print(
        f"{a.method} on {a.model}, task {task.name}: clean accuracy {_fmt(r['accuracy'])}, macro-F1 "
        f"{_fmt(r['macro_f1'])} (test n={task.sizes()['test']}, best epoch {r['best_epoch']}/{cfg.epochs}), "
        f"{r['seconds']:.0f} s -> {a.out}"
    )
    return 0


def cmd_predict(a) -> int:
    from lmsanitator.core.runtime import set_threads

    if not Path(a.input).is_file():
        raise LMSanitatorError(f"input file not found: {a.input}")
    out = _check_new_file(a.output, a.overwrite)
    if a.batch_size < 1:
        raise LMSanitatorError("--batch-size must be >= 1")
    set_threads()
    model = _load_tuned(a)
    texts, pairs = read_jsonl_inputs(a.input, model)
    probs = model.predict(texts, pairs, batch_size=a.batch_size)
    rows = [prediction_record(model, p) for p in probs]
    _write_atomic(out, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"predicted {len(rows)} inputs -> {a.output}")
    return 0


def cmd_evaluate(a) -> int:
    name = getattr(a, "evaluate_command", None)
    if name not in EVALUATE_COMMANDS:
        raise LMSanitatorError(f"unknown evaluate command '{name}'")
    return EVALUATE_COMMANDS[name](a)


def cmd_evaluate_asr(a) -> int:
    from lmsanitator.core.runtime import set_threads
    from lmsanitator.metrics.asr import evaluate_asr

    out = _check_new_file(a.out, a.overwrite) if a.out else None
    triggers, report = _triggers_arg(a)
    attack = (
        None
        if report is None
        else {"file": a.attack_json, "attack": report.get("attack"), "base_model": report.get("base_model")}
    )
    _check_max_examples(a)
    set_threads()
    task = _load_task(a)
    model = _load_tuned(a)
    _check_task_matches(task, model)
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
        _write_atomic(out, json.dumps(res, indent=2) + "\n")
    extra = f", macro-F1 drop {_fmt(res['f1_drop'])}" if "f1_drop" in res else ""
    unit = f" words of {len(examples)} sentences" if "f1_drop" in res else ""
    per = ", ".join(f"{t} {_fmt(v)}" for t, v in res["per_trigger"].items())
    print(
        f"{info['method']} on {info['model']}, task {task.name}: clean accuracy {_fmt(res['clean_accuracy'])}, "
        f"ASR {_fmt(res['asr'])}, weighted ASR {_fmt(res['weighted_asr'])}{extra} (n={res['n']}{unit}, "
        f"correct {res['n_correct']}; per trigger: {per})" + (f" -> {a.out}" if a.out else "")
    )
    return 0
