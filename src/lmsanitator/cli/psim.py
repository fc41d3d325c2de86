"""``lmsanitator psim train|detect`` and ``lmsanitator evaluate psim``."""

from __future__ import annotations

import argparse
import json
import sys

from lmsanitator.cli.common import (
    MODEL_HELP,
    Parser,
    add_device,
    add_overwrite,
    add_task_options,
    check_max_examples,
    check_output_file,
    check_output_folder,
    config_choices,
    load_task_arg,
    load_tuned,
    write_text_atomic,
)
from lmsanitator.core.config import option_default
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import atomic_output_dir
from lmsanitator.core.runtime import set_threads
from lmsanitator.data.inputs import read_jsonl_inputs
from lmsanitator.data.tasks import load_task
from lmsanitator.metrics.poisoning import PoisonSpec
from lmsanitator.models import load_encoder
from lmsanitator.psim.evaluate import evaluate_psim
from lmsanitator.psim.psim import HEAD_INITS, PSIM, PSIMConfig
from lmsanitator.tuning.methods import METHODS

PSIM_VAL_SIZE = 1000  # clean validation inputs kept by `psim train` for its statistics/calibration
EVALUATE_VAL_SIZE = 300  # validation inputs `evaluate psim --calibrate-frr` calibrates on


def _peft_methods() -> list:
    fallback = [name for name, m in METHODS.items() if m.peft_type is not None]
    return config_choices(PSIMConfig, "method", fallback)


def add_commands(sub) -> None:
    """``psim train`` and ``psim detect`` (``evaluate psim`` is :func:`add_evaluate_psim`)."""
    p = sub.add_parser(
        "psim",
        help="PSIM: flag inputs that trigger a weight-poisoning backdoor",
        description="Poisoned Sample Identification Module: a PEFT module trained on randomly reset "
        "labels; inputs on which it is extremely confident (max softmax > gamma) are flagged.",
    )
    ps = p.add_subparsers(dest="psim_command", required=True, parser_class=Parser)
    _add_train(ps)

    q = ps.add_parser(
        "detect",
        help="flag poisoned inputs (JSONL in, JSONL out)",
        description='Input lines {"text": ..., "text_pair": ...}; output lines {"flagged", '
        '"confidence", "psim_label", "gamma"} in the same order.',
    )
    q.add_argument("--psim", required=True, help="folder written by `lmsanitator psim train`")
    q.add_argument("--input", required=True)
    q.add_argument("--output", required=True)
    add_overwrite(q, "--output")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--gamma", type=float, help="threshold (default: the one stored in the PSIM folder)")
    g.add_argument(
        "--calibrate-frr",
        type=float,
        metavar="R",
        help="set gamma from the PSIM task's clean validation split at false-rejection rate R",
    )
    add_device(q)
    q.set_defaults(handler=cmd_detect)


def _add_train(ps) -> None:
    q = ps.add_parser("train", help="train a PSIM module on a task with randomly reset labels")
    q.add_argument("--model", required=True, help=f"the (possibly poisoned) encoder: {MODEL_HELP}")
    q.add_argument("--task", required=True, help="the task whose training set PSIM uses (labels are reset)")
    q.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    add_overwrite(q, "--out")
    q.add_argument(
        "--method",
        default=option_default(PSIMConfig, "method"),
        choices=_peft_methods(),
        help="PEFT method of the module (default %(default)s; the paper's p-tuning reads [MASK] here)",
    )
    q.add_argument("--epochs", type=int, default=option_default(PSIMConfig, "epochs"))
    q.add_argument("--lr", type=float, help="module learning rate (default: the method's)")
    q.add_argument(
        "--head-lr",
        type=float,
        default=option_default(PSIMConfig, "head_lr"),
        help="head learning rate (default %(default)s)",
    )
    q.add_argument(
        "--head-init",
        default=option_default(PSIMConfig, "head_init"),
        choices=config_choices(PSIMConfig, "head_init", HEAD_INITS),
        help="auto: the attacker's classifier.safetensors in the model folder if any, else a linear "
        "probe on the true labels (default); model; probe; random",
    )
    q.add_argument("--prefix-len", type=int, help="virtual tokens (default per method)")
    q.add_argument("--train-size", type=int, help="cap the training split")
    q.add_argument(
        "--val-size",
        type=int,
        default=PSIM_VAL_SIZE,
        help="clean validation inputs for statistics/calibration (default %(default)s)",
    )
    g = q.add_mutually_exclusive_group()
    g.add_argument(
        "--gamma",
        type=float,
        help="threshold (default: calibrated on the clean validation inputs at --calibrate-frr)",
    )
    g.add_argument(
        "--calibrate-frr",
        type=float,
        metavar="R",
        default=option_default(PSIMConfig, "frr"),
        help="set gamma so that a share R of the clean validation inputs is flagged (default %(default)s)",
    )
    q.add_argument(
        "--train-examples",
        type=_examples_or_all,
        default=option_default(PSIMConfig, "train_examples"),
        help="random-label examples PSIM trains on, drawn from the training split (a step budget that does "
        "not grow with the data; 'all': every one; default %(default)s)",
    )
    q.add_argument(
        "--seed",
        type=int,
        default=option_default(PSIMConfig, "seed"),
        help="seed of the label reset and the training",
    )
    q.add_argument("--no-progress", action="store_true")
    add_task_options(q)
    add_device(q)
    q.set_defaults(handler=cmd_train)


def add_evaluate_psim(esub) -> None:
    """``lmsanitator evaluate psim`` (``esub``: the sub-parsers of ``evaluate``)."""
    e = esub.add_parser(
        "psim",
        help="CA and targeted ASR before and after PSIM",
        description="Clean accuracy and targeted ASR (non-target test inputs classified as the target "
        "label once the attack's trigger is inserted) of tuned models, alone and behind PSIM (flagged "
        "inputs rejected: a rejected clean input counts as an error, a rejected poisoned input as a "
        "failed attack).",
    )
    e.add_argument("--psim", required=True, help="folder written by `lmsanitator psim train`")
    e.add_argument(
        "--adapter", required=True, action="append", help="tuned model folder (repeat for several)"
    )
    e.add_argument("--task", required=True)
    e.add_argument(
        "--attack-json",
        required=True,
        help="attack.json (or its folder) of `lmsanitator attack badnet|insent`",
    )
    e.add_argument("--max-examples", type=int, default=None, help="use the first N test examples")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--gamma", type=float, help="threshold (default: the PSIM folder's)")
    g.add_argument(
        "--calibrate-frr",
        type=float,
        metavar="R",
        help="set gamma from the task's clean validation "
        "split (first --val-size inputs) at false-rejection rate R",
    )
    e.add_argument(
        "--val-size",
        type=int,
        default=EVALUATE_VAL_SIZE,
        help="validation inputs for --calibrate-frr (default %(default)s)",
    )
    e.add_argument("--out", help="write the JSON result here")
    add_overwrite(e, "--out")
    e.add_argument("--seed", type=int, default=0, help="seed of the trigger positions")
    add_task_options(e)
    add_device(e)
    e.set_defaults(handler=cmd_evaluate_psim)


def _check_gamma(a) -> None:
    if a.gamma is not None and not 0.0 < a.gamma < 1.0:
        raise LMSanitatorError(f"--gamma must be in (0, 1), got {a.gamma}")
    if a.calibrate_frr is not None and not 0.0 <= a.calibrate_frr < 1.0:
        raise LMSanitatorError(f"--calibrate-frr must be in [0, 1), got {a.calibrate_frr}")


def cmd_train(a) -> int:
    _check_gamma(a)
    cfg = PSIMConfig(
        method=a.method,
        epochs=a.epochs,
        lr=a.lr,
        head_lr=a.head_lr,
        head_init=a.head_init,
        prefix_len=a.prefix_len,
        gamma=a.gamma,
        frr=a.calibrate_frr,
        train_examples=a.train_examples,
        seed=a.seed,
        device=a.device,
    )
    check_output_folder(a.out, a.overwrite)
    set_threads()
    task = load_task_arg(a, a.train_size).with_validation_size(a.val_size)
    encoder = load_encoder(a.model, device=a.device)
    psim = PSIM(cfg).fit(encoder, task, progress=not a.no_progress)
    psim.model_.report["task_spec"] = a.task
    with atomic_output_dir(a.out, a.overwrite) as tmp:
        psim.save(tmp)
    i = psim.info_
    print(
        f"psim {a.method} on {a.model}, task {task.name} (labels reset, head {i['head_init']}): gamma "
        f"{psim.gamma_:.4f} ({i['gamma_rule']}), clean validation confidence median "
        f"{i['validation_confidence'].get('median')}, p99 {i['validation_confidence'].get('p99')}, "
        f"{i['seconds']:.0f} s -> {a.out}"
    )
    return 0


def _examples_or_all(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got '{text}'") from None


def _load_psim(a) -> PSIM:
    set_threads()
    return PSIM.load(a.psim, device=a.device)


def cmd_detect(a) -> int:
    _check_gamma(a)
    out = check_output_file(a.output, a.overwrite, "--output")
    psim = _load_psim(a)
    texts, pairs = read_jsonl_inputs(a.input, psim.model_)
    gamma = a.gamma
    if a.calibrate_frr is not None:
        spec = psim.model_.report.get("task_spec")
        if not spec:
            raise LMSanitatorError(f"'{a.psim}' does not record its task; give --gamma instead")
        val = load_task(spec).validation
        gamma = psim.calibrate(
            [e.text for e in val],
            [e.text_pair for e in val] if psim.model_.task.pair else None,
            frr=a.calibrate_frr,
        )
    rows = psim.detect(texts, pairs, gamma)
    write_text_atomic(out, "".join(json.dumps(r) + "\n" for r in rows))
    n = sum(r["flagged"] for r in rows)
    print(f"psim: {n} of {len(rows)} inputs flagged (gamma {rows[0]['gamma']:.4f}) -> {a.output}")
    return 0


def _victims(a, task) -> list:
    """Every ``--adapter``, loaded (and refused) before minutes of evaluation."""
    victims = []
    for adapter in a.adapter:
        model = load_tuned(adapter, a.device)
        if tuple(model.labels) != tuple(task.labels):
            raise LMSanitatorError(f"adapter '{adapter}' labels differ from task '{task.name}'")
        victims.append((adapter, model))
    return victims


def cmd_evaluate_psim(a) -> int:
    _check_gamma(a)
    check_max_examples(a)
    out = check_output_file(a.out, a.overwrite, "--out")
    spec, report = PoisonSpec.from_attack_json(a.attack_json)
    task = load_task_arg(a)
    spec.check_task(task)
    psim = _load_psim(a)
    if tuple(psim.model_.labels) != tuple(task.labels):
        raise LMSanitatorError(
            f"PSIM labels ({', '.join(psim.model_.labels)}) differ from task '{task.name}'"
        )
    res = evaluate_psim(
        psim,
        _victims(a, task),
        task,
        spec,
        max_examples=a.max_examples,
        gamma=a.gamma,
        calibrate_frr=a.calibrate_frr,
        val_size=a.val_size,
        seed=a.seed,
    )
    for r in res["results"]:
        print(
            f"{r['method']:>13} {r['adapter']}: CA {100 * r['before']['clean_accuracy']:.1f}% -> "
            f"{100 * r['after']['clean_accuracy']:.1f}%, ASR {100 * r['before']['asr']:.1f}% -> "
            f"{100 * r['after']['asr']:.1f}%"
        )
    res = {
        "psim": a.psim,
        **res,
        "attack": {"file": a.attack_json, "attack": report.get("attack"), **res["attack"]},
    }
    print(
        f"psim gamma {res['gamma']:.4f}: flagged {100 * res['flagged_clean']:.1f}% of clean, "
        f"{100 * (res['flagged_poisoned'] or 0):.1f}% of poisoned inputs (n={res['n']}/{res['n_poisoned']})"
        + (f" -> {a.out}" if out else ""),
        file=sys.stderr,
    )
    if out is not None:
        write_text_atomic(out, json.dumps(res, indent=2) + "\n")
    return 0
