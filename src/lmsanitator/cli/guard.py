"""``lmsanitator guard``, ``lmsanitator serve`` and ``lmsanitator evaluate guard``."""

from __future__ import annotations

import json
import sys

from lmsanitator.cli.common import (
    add_device,
    add_overwrite,
    add_task_options,
    add_trigger_field,
    check_max_examples,
    check_output_file,
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
from lmsanitator.core.io import atomic_file
from lmsanitator.core.runtime import set_threads
from lmsanitator.data.inputs import read_jsonl_inputs
from lmsanitator.data.pvset import PVSet
from lmsanitator.data.tasks import SPLITS
from lmsanitator.guard.evaluate import VARIANTS, evaluate_guard, plot_match_rates
from lmsanitator.guard.guard import POLICIES, Guard, GuardConfig
from lmsanitator.guard.purge import ORDERS
from lmsanitator.guard.service import (
    DEFAULT_DEADLINE_S,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_WAITING,
    DEFAULT_QUEUE_WAIT_S,
    DEFAULT_READ_TIMEOUT_S,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    serve,
)
from lmsanitator.tuning import read_tune_json


def _guard_options(p) -> None:
    p.add_argument("--adapter", required=True, help="folder written by `lmsanitator tune`")
    p.add_argument("--pvs", required=True, help="PV set written by `lmsanitator search --out`")
    p.add_argument(
        "--t-match",
        type=float,
        default=option_default(GuardConfig, "t_match"),
        help="flag when this share of the output's signs agree with a PV (default %(default)s)",
    )
    p.add_argument(
        "--t-mixture",
        type=float,
        default=option_default(GuardConfig, "t_mixture"),
        help=GuardConfig.help("t_mixture") + " (default %(default)s)",
    )
    p.add_argument(
        "--no-mixtures",
        action="store_true",
        help="flag on single PVs only (the paper's monitor): no mixture columns",
    )
    p.add_argument(
        "--w-max",
        type=int,
        default=option_default(GuardConfig, "w_max"),
        help="widest trigger window removed, in words (default %(default)s)",
    )
    p.add_argument(
        "--on-unresolved",
        choices=config_choices(GuardConfig, "on_unresolved", POLICIES),
        default=option_default(GuardConfig, "on_unresolved"),
        help="when no window of <= w-max words unflags an input (or the removal budget is spent): reject "
        "it (default: a backdoor's input is never answered as if clean), predict on the candidate that "
        "matched the PVs least (best; the record says answered_unresolved), or on the input as it is",
    )
    p.add_argument(
        "--purge-order",
        choices=config_choices(GuardConfig, "purge_order", ORDERS),
        default=option_default(GuardConfig, "purge_order"),
        help="which window of a width trigger removal tries first: the words with the largest gradient "
        "towards the matched PV (saliency, default; one extra backward pass) or reading order (the paper)",
    )
    p.add_argument("--batch-size", type=int, default=option_default(GuardConfig, "batch_size"))
    for flag, kind in (
        ("max_candidates", int),
        ("max_seconds", float),
        ("max_words", int),
        ("grow_margin", float),
        ("accept_margin", float),
    ):
        p.add_argument(
            "--" + flag.replace("_", "-"),
            type=kind,
            default=option_default(GuardConfig, flag),
            help=GuardConfig.help(flag) + " (default %(default)s)",
        )
    p.add_argument(
        "--no-stability-check",
        action="store_true",
        help="answer a purged input even when removing a word next to the removed ones (or undoing the "
        "window's growth) changes its prediction (default: such an input is unresolved, 'unstable')",
    )
    p.add_argument(
        "--calibrate-input",
        metavar="CLEAN.jsonl",
        help="clean inputs (same line format) to raise each PV's threshold above their match rates",
    )
    p.add_argument(
        "--calibrate-frr",
        type=float,
        default=0.01,
        help="with a calibration set: the share of it allowed above each PV's threshold "
        "(default %(default)s)",
    )
    add_device(p)


def add_commands(sub) -> None:
    """``guard`` and ``serve`` (``evaluate guard`` is :func:`add_evaluate_guard`)."""
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
    add_overwrite(p, "--output")
    p.set_defaults(handler=cmd_guard)

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
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help="most inputs per request (default %(default)s)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body in bytes (default %(default)s)",
    )
    limits = (
        ("--read-timeout", DEFAULT_READ_TIMEOUT_S, "seconds a client has to send its whole body (else 408)"),
        ("--queue-wait", DEFAULT_QUEUE_WAIT_S, "seconds a request waits for the busy model (else 503)"),
        ("--max-waiting", DEFAULT_MAX_WAITING, "requests allowed to wait for the model (more: 503 at once)"),
        ("--deadline", DEFAULT_DEADLINE_S, "seconds one batch may run (else 504)"),
        ("--shutdown-timeout", DEFAULT_SHUTDOWN_TIMEOUT_S, "seconds a running batch gets after SIGTERM"),
    )
    for flag, default, text in limits:
        p.add_argument(flag, type=type(default), default=default, help=f"{text} (default %(default)s)")
    p.set_defaults(handler=cmd_serve)


def add_evaluate_guard(esub) -> None:
    """``lmsanitator evaluate guard`` (``esub``: the sub-parsers of ``evaluate``)."""
    e = esub.add_parser(
        "guard",
        help="clean accuracy and ASR without and with the guard, FRR/FAR vs T_match",
        description="Measure the guard on a task's test split: clean accuracy and ASR without and with "
        "the guard (triggers inserted as `lmsanitator evaluate asr` does), FRR and FAR as T_match "
        "varies, and a PNG histogram of clean vs triggered match rates.",
    )
    _guard_options(e)
    e.add_argument("--task", required=True, help="task the adapter was trained on")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--triggers", help='comma-separated triggers, e.g. "cf,mn"')
    g.add_argument("--attack-json", help="attack.json of `lmsanitator attack` (its triggers are used)")
    e.add_argument("--split", default="test", choices=list(SPLITS))
    e.add_argument("--max-examples", type=int, help="first N examples of the split")
    e.add_argument("--seed", type=int, default=0, help="trigger positions")
    add_trigger_field(e)
    e.add_argument(
        "--calibrate-validation",
        type=int,
        metavar="N",
        help="calibrate per-PV thresholds on the texts of the first N validation examples (labels unused)",
    )
    e.add_argument(
        "--variants",
        help="comma-separated adaptive trigger variants to measure too: " + ", ".join(VARIANTS),
    )
    e.add_argument("--out", help="results JSON")
    e.add_argument("--plot", help="match-rate histogram PNG (Figure 14)")
    add_overwrite(e, "--out/--plot")
    add_task_options(e)
    e.set_defaults(handler=cmd_evaluate_guard)


def _make_guard(a) -> Guard:
    cfg = GuardConfig(
        t_match=a.t_match,
        t_mixture=None if a.no_mixtures else a.t_mixture,
        w_max=a.w_max,
        on_unresolved=a.on_unresolved,
        batch_size=a.batch_size,
        purge_order=a.purge_order,
        max_candidates=a.max_candidates,
        max_seconds=a.max_seconds,
        max_words=a.max_words,
        grow_margin=a.grow_margin,
        accept_margin=a.accept_margin,
        stable=not a.no_stability_check,
    )
    read_tune_json(a.adapter)  # clear errors before loading anything heavy
    pvset = PVSet.load(a.pvs)
    set_threads()
    guard = Guard(load_tuned(a.adapter, a.device), pvset, cfg)
    if a.calibrate_input:
        guard.calibrate(*read_jsonl_inputs(a.calibrate_input, guard.model), frr=a.calibrate_frr)
    return guard


def cmd_guard(a) -> int:
    out = check_output_file(a.output, a.overwrite, "--output")
    guard = _make_guard(a)
    texts, pairs = read_jsonl_inputs(a.input, guard.model)
    records = guard.predict(texts, pairs)
    write_text_atomic(out, "".join(json.dumps(r) + "\n" for r in records))
    flagged = sum(r["flagged"] for r in records)
    unresolved = sum(r["flagged"] and not r["resolved"] for r in records)
    trunc = sum(r["truncated"] for r in records)
    print(
        f"guarded {len(records)} inputs: {flagged} flagged, {flagged - unresolved} purged, "
        f"{unresolved} unresolved ({a.on_unresolved}), {trunc} truncated -> {a.output}"
    )
    return 0


def cmd_serve(a) -> int:
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
    if min(a.read_timeout, a.queue_wait, a.deadline, a.shutdown_timeout) <= 0 or a.max_waiting < 0:
        raise LMSanitatorError("--read-timeout, --queue-wait, --deadline, --shutdown-timeout must be > 0")
    serve(
        guard,
        a.host,
        a.port,
        shutdown_timeout=a.shutdown_timeout,
        max_batch=a.max_batch,
        max_body_bytes=a.max_body_bytes,
        read_timeout=a.read_timeout,
        queue_wait=a.queue_wait,
        max_waiting=a.max_waiting,
        deadline=a.deadline,
    )
    return 0


def _calibrate_on_validation(guard: Guard, task, n: int, frr: float) -> None:
    val = task.split("validation")[:n]
    if not val:
        raise LMSanitatorError(f"task '{task.name}' has no validation examples to calibrate on")
    if guard.model.task.kind == "token":
        guard.calibrate([list(e.tokens) for e in val], None, frr=frr)
    else:
        pairs = [e.text_pair for e in val] if guard.model.task.pair else None
        guard.calibrate([e.text for e in val], pairs, frr=frr)


def cmd_evaluate_guard(a) -> int:
    triggers, _ = triggers_arg(a)
    check_max_examples(a)
    if a.calibrate_validation and a.calibrate_input:  # before loading (and calibrating) anything
        raise LMSanitatorError("give --calibrate-validation or --calibrate-input, not both")
    variants = [v.strip() for v in (a.variants or "").split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise LMSanitatorError(
            f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)})"
        )
    out = check_output_file(a.out, a.overwrite, "--out")
    plot = check_output_file(a.plot, a.overwrite, "--plot")
    task = load_task_arg(a)
    guard = _make_guard(a)
    model = guard.model
    check_task_matches(task, model)
    if a.calibrate_validation:
        _calibrate_on_validation(guard, task, a.calibrate_validation, a.calibrate_frr)
    examples = task.split(a.split)[: a.max_examples]
    res = evaluate_guard(guard, examples, triggers, seed=a.seed, field=a.field, variants=variants)
    res = {
        "adapter": str(a.adapter),
        "pvs": str(a.pvs),
        "task": task.name,
        "split": a.split,
        "attack_json": a.attack_json,
        **res,
    }
    if plot is not None:
        with atomic_file(plot) as tmp:
            plot_match_rates(res, tmp)
    if out is not None:
        write_text_atomic(out, json.dumps(res, indent=2) + "\n")
    t = guard.config.t_match
    at = next((r for r in res["rates"] if abs(r["t_match"] - t) < 1e-9), None)
    rates = f", FRR {pct(at['frr'])}, FAR {pct(at['far'])} at T_match {t}" if at else ""
    if guard.calibration:
        rates = (
            f", calibrated on {guard.calibration['inputs']} clean inputs: clean flagged "
            f"{pct(res['clean_flagged'])}, triggered flagged {pct(res['triggered_flagged'])}"
        )
    print(
        f"guard on {model.method.name}/{model.base_name}, task {task.name} (n={res['n']}): clean accuracy "
        f"{pct(res['clean_accuracy'])} -> {pct(res['clean_accuracy_guarded'])}, ASR {pct(res['asr'])} -> "
        f"{pct(res['asr_guarded'])}{rates}" + (f" -> {a.out}" if a.out else "")
    )
    return 0
