"""Sub-commands ``guard``, ``serve`` and ``evaluate guard``."""

from __future__ import annotations

import json
import sys

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.guard.monitor import DEFAULT_T_MATCH


def _guard_options(p) -> None:
    p.add_argument("--adapter", required=True, help="folder written by `lmsanitator tune`")
    p.add_argument(
        "--pvs", required=True, help="PV set written by `lmsanitator search` (or `scan --pvs-out`)"
    )
    p.add_argument(
        "--t-match",
        type=float,
        default=DEFAULT_T_MATCH,
        help="flag when this share of the output's signs agree with a PV (default 0.8)",
    )
    p.add_argument("--w-max", type=int, default=3, help="widest trigger window removed, in words (default 3)")
    p.add_argument(
        "--on-unresolved",
        choices=["best", "predict", "reject"],
        default="best",
        help="when no window of <= w-max words unflags an input: predict on the candidate that matched "
        "the PVs least (best, default), on the input as it is (predict), or reject it",
    )
    p.add_argument(
        "--purge-order",
        choices=["saliency", "reading"],
        default="saliency",
        help="which window of a width trigger removal tries first: the words with the largest gradient "
        "towards the matched PV (default; one extra backward pass) or reading order (the paper)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--calibrate-input",
        metavar="CLEAN.jsonl",
        help="clean inputs (same line format) to raise each PV's threshold above their match rates",
    )
    p.add_argument(
        "--calibrate-frr",
        type=float,
        default=0.01,
        help="with a calibration set: the share of it allowed above each PV's threshold (default 0.01)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")


def _make_guard(a):
    from lmsanitator.cli.tune import _load_tuned
    from lmsanitator.core.runtime import set_threads
    from lmsanitator.data.pvset import PVSet
    from lmsanitator.guard.guard import Guard, GuardConfig
    from lmsanitator.tuning.model import read_tune_json

    cfg = GuardConfig(
        t_match=a.t_match,
        w_max=a.w_max,
        on_unresolved=a.on_unresolved,
        batch_size=a.batch_size,
        purge_order=a.purge_order,
    )
    read_tune_json(a.adapter)  # clear errors before loading anything heavy
    pvset = PVSet.load(a.pvs)
    set_threads()
    guard = Guard(_load_tuned(a), pvset, cfg)
    if getattr(a, "calibrate_input", None):
        from lmsanitator.data.inputs import read_jsonl_inputs

        guard.calibrate(*read_jsonl_inputs(a.calibrate_input, guard.model), frr=a.calibrate_frr)
    return guard


def register(sub) -> dict:
    p = sub.add_parser(
        "guard",
        help="classify inputs behind the PV monitor and trigger removal",
        description="Run a tuned model with LMSanitator's guard: flag inputs whose output matches a "
        "PV, remove the trigger words (sliding window), and predict on the purged text. Input and "
        "output lines as for `lmsanitator predict`; each output record adds flagged, match_rate, "
        "purged_text, removed.",
    )
    _guard_options(p)
    p.add_argument(
        "--input", required=True, help='JSONL: {"text": ..., "text_pair": ...} or {"tokens": [...]}'
    )
    p.add_argument("--output", required=True, help="JSONL output, one record per input line, same order")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser(
        "serve",
        help="serve the guarded model over HTTP (POST /predict, GET /health)",
        description="Serve a guarded tuned model with FastAPI + uvicorn. POST /predict takes "
        '{"inputs": [{"text": ...}, ...]} and answers {"results": [...]} with the records '
        "`lmsanitator guard` writes.",
    )
    _guard_options(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=64, help="most inputs per request (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")

    from lmsanitator.cli import tune as tcli

    e = tcli.add_evaluate_command(
        "guard",
        cmd_evaluate_guard,
        help="clean accuracy and ASR without and with the guard, FRR/FAR vs T_match",
        description="Measure the guard on a task's test split: clean accuracy and ASR without and with the guard "
        "(triggers inserted as `evaluate asr` does), FRR and FAR as T_match varies, and a PNG histogram of clean "
        "vs triggered match rates.",
    )
    _guard_options(e)
    e.add_argument("--task", required=True, help="task the adapter was trained on")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--triggers", help='comma-separated triggers, e.g. "cf,mn"')
    g.add_argument("--attack-json", help="attack.json of `lmsanitator attack` (its triggers are used)")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"])
    e.add_argument("--max-examples", type=int, help="first N examples of the split")
    e.add_argument("--seed", type=int, default=0, help="trigger positions")
    e.add_argument(
        "--field", default="longer", choices=["longer", "text", "text_pair"], help="pairs: where triggers go"
    )
    e.add_argument(
        "--calibrate-validation",
        type=int,
        metavar="N",
        help="calibrate per-PV thresholds on the texts of the first N validation examples (labels unused)",
    )
    e.add_argument("--out", help="results JSON")
    e.add_argument("--plot", help="match-rate histogram PNG (Figure 14)")
    e.add_argument("--overwrite", action="store_true")
    tcli._task_options(e)
    return {"guard": cmd_guard, "serve": cmd_serve}


def cmd_guard(a) -> int:
    from lmsanitator.cli.tune import _check_new_file, _write_atomic
    from lmsanitator.data.inputs import read_jsonl_inputs

    out = _check_new_file(a.output, a.overwrite)
    guard = _make_guard(a)
    texts, pairs = read_jsonl_inputs(a.input, guard.model)
    records = guard.predict(texts, pairs)
    _write_atomic(out, "".join(json.dumps(r) + "\n" for r in records))
    flagged = sum(r["flagged"] for r in records)
    unresolved = sum(r["flagged"] and not r["resolved"] for r in records)
    trunc = sum(r["truncated"] for r in records)
    print(
        f"guarded {len(records)} inputs: {flagged} flagged, {flagged - unresolved} purged, {unresolved} unresolved "
        f"({a.on_unresolved}), {trunc} truncated -> {a.output}"
    )
    return 0


def cmd_serve(a) -> int:
    from lmsanitator.guard.service import serve

    if not 0 < a.port < 65536:
        raise LMSanitatorError(f"--port must be in 1..65535, got {a.port}")
    if a.max_batch < 1 or a.max_body_bytes < 64:
        raise LMSanitatorError("--max-batch must be >= 1 and --max-body-bytes >= 64")
    guard = _make_guard(a)
    print(
        f"serving {guard.model.method.name} on {guard.model.base_name} ({guard.model.task.name}) with "
        f"{len(guard.pvset)} PVs at http://{a.host}:{a.port}",
        file=sys.stderr,
        flush=True,
    )
    serve(guard, a.host, a.port, max_batch=a.max_batch, max_body_bytes=a.max_body_bytes)
    return 0


def cmd_evaluate_guard(a) -> int:
    from lmsanitator.cli.tune import (
        _check_max_examples,
        _check_new_file,
        _check_task_matches,
        _fmt,
        _load_task,
        _triggers_arg,
        _write_atomic,
    )
    from lmsanitator.guard.evaluate import evaluate_guard, plot_match_rates

    out = _check_new_file(a.out, a.overwrite) if a.out else None
    plot = _check_new_file(a.plot, a.overwrite) if a.plot else None
    triggers, _ = _triggers_arg(a)
    _check_max_examples(a)
    if a.calibrate_validation and a.calibrate_input:  # before loading (and calibrating) anything
        raise LMSanitatorError("give --calibrate-validation or --calibrate-input, not both")
    task = _load_task(a)
    guard = _make_guard(a)
    model = guard.model
    _check_task_matches(task, model)
    if a.calibrate_validation:
        val = task.split("validation")[: a.calibrate_validation]
        if not val:
            raise LMSanitatorError(f"task '{task.name}' has no validation examples to calibrate on")
        if model.task.kind == "token":
            guard.calibrate([list(e.tokens) for e in val], None, frr=a.calibrate_frr)
        else:
            guard.calibrate(
                [e.text for e in val],
                [e.text_pair for e in val] if model.task.pair else None,
                frr=a.calibrate_frr,
            )
    examples = task.split(a.split)[: a.max_examples]
    res = evaluate_guard(guard, examples, triggers, seed=a.seed, field=a.field)
    res = {
        "adapter": str(a.adapter),
        "pvs": str(a.pvs),
        "task": task.name,
        "split": a.split,
        "attack_json": a.attack_json,
        **res,
    }
    if plot is not None:
        tmp = plot.with_name(f".{plot.name}.tmp.png")
        plot_match_rates(res, tmp)
        tmp.replace(plot)
    if out is not None:
        _write_atomic(out, json.dumps(res, indent=2) + "\n")
    at = (
        next(r for r in res["rates"] if abs(r["t_match"] - guard.config.t_match) < 1e-9)
        if any(abs(r["t_match"] - guard.config.t_match) < 1e-9 for r in res["rates"])
        else None
    )
    rates = f", FRR {_fmt(at['frr'])}, FAR {_fmt(at['far'])} at T_match {guard.config.t_match}" if at else ""
    if guard.calibration:
        rates = (
            f", calibrated on {guard.calibration['inputs']} clean inputs: clean flagged "
            f"{_fmt(res['clean_flagged'])}, triggered flagged {_fmt(res['triggered_flagged'])}"
        )
    print(
        f"guard on {model.method.name}/{model.base_name}, task {task.name} (n={res['n']}): clean accuracy "
        f"{_fmt(res['clean_accuracy'])} -> {_fmt(res['clean_accuracy_guarded'])}, ASR {_fmt(res['asr'])} -> "
        f"{_fmt(res['asr_guarded'])}{rates}" + (f" -> {a.out}" if a.out else "")
    )
    return 0
