"""The ``lmsanitator`` command as a whole: choices the library accepts, defaults read from the
config classes, the exit-code contract, the output policy and help texts that name real commands."""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from lmsanitator.attacks import TASK_AGNOSTIC_ATTACKS, WEIGHT_POISONING_ATTACKS, AttackConfig, PoisonConfig
from lmsanitator.baselines.onion import ONIONConfig
from lmsanitator.cli import models as models_cli
from lmsanitator.cli import scan as scan_cli
from lmsanitator.cli.main import build_parser, main
from lmsanitator.core.config import option_default
from lmsanitator.data.pvset import PVSet
from lmsanitator.data.tasks import load_task
from lmsanitator.data.triggers import insert_trigger_pair
from lmsanitator.experiments import get_experiment
from lmsanitator.guard.guard import GuardConfig
from lmsanitator.psim.psim import PSIMConfig
from lmsanitator.scan.config import ScanConfig
from lmsanitator.tuning import TuneConfig, TunedModel


# ============================================================================ walking the parsers
def _commands(parser, path=()):
    """``(path, parser)`` for every command and sub-command (``("evaluate", "asr")``...)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _options(parser):
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction, argparse._VersionAction))
    ]


def _leaves():
    return {" ".join(p): q for p, q in _commands(build_parser()) if p}


# ============================================================================ choices and defaults
def _trigger_field(v):
    insert_trigger_pair("one two", "three four five", "cf", random.Random(0), v)


def _split(v, task):
    task.split(v)


# (command, option dest) -> a call that raises unless the library accepts the value
VALIDATORS = {
    ("attack", "attack"): lambda v, t: {**TASK_AGNOSTIC_ATTACKS, **WEIGHT_POISONING_ATTACKS}[v],
    ("attack", "trigger_band"): lambda v, t: AttackConfig(trigger_band=v),
    ("attack", "pv_scheme"): lambda v, t: AttackConfig(pv_scheme=v),
    ("attack", "utility_scope"): lambda v, t: AttackConfig(utility_scope=v),
    ("tune", "method"): lambda v, t: TuneConfig(method=v),
    ("evaluate asr", "split"): lambda v, t: _split(v, t),
    ("evaluate asr", "field"): lambda v, t: _trigger_field(v),
    ("evaluate guard", "split"): lambda v, t: _split(v, t),
    ("evaluate guard", "field"): lambda v, t: _trigger_field(v),
    ("experiment", "name"): lambda v, t: get_experiment(v),
    ("psim train", "method"): lambda v, t: PSIMConfig(method=v),
    ("psim train", "head_init"): lambda v, t: PSIMConfig(head_init=v),
}
for _cmd in ("scan", "search", "zoo"):
    VALIDATORS[(_cmd, "target")] = lambda v, t: ScanConfig(target=v)
for _cmd in ("guard", "serve", "evaluate guard"):
    VALIDATORS[(_cmd, "on_unresolved")] = lambda v, t: GuardConfig(on_unresolved=v)
    VALIDATORS[(_cmd, "purge_order")] = lambda v, t: GuardConfig(purge_order=v)


def test_every_choice_is_one_the_library_accepts(toy_task_file):
    task = load_task(str(toy_task_file))
    seen = set()
    for cmd, parser in _leaves().items():
        for action in _options(parser):
            if action.choices is None:
                continue
            key = (cmd, action.dest)
            assert key in VALIDATORS, f"`lmsanitator {cmd}` option {action.dest} has choices: add a validator"
            for value in action.choices:
                VALIDATORS[key](value, task)
            seen.add(key)
    assert seen == set(VALIDATORS)  # no validator left for an option that lost its choices


def test_evaluate_guard_and_asr_offer_the_same_trigger_fields():
    leaves = _leaves()
    fields = [
        next(a.choices for a in _options(leaves[c]) if a.dest == "field")
        for c in ("evaluate asr", "evaluate guard")
    ]
    assert fields[0] == fields[1] and set(fields[0]) == {"longer", "first", "second"}


# (command, option dest) -> (config class, field): the CLI default is the config's
DEFAULTS = {
    ("scan", "max_length"): (ScanConfig, "max_length"),
    ("scan", "sentences"): (ScanConfig, "sentences"),
    ("scan", "batch_size"): (ScanConfig, "batch_size"),
    ("scan", "loops"): (ScanConfig, "loops"),
    ("scan", "target"): (ScanConfig, "target"),
    ("search", "max_length"): (ScanConfig, "max_length"),
    ("zoo", "loops"): (ScanConfig, "loops"),
    ("zoo", "max_length"): (ScanConfig, "max_length"),
    ("guard", "max_candidates"): (GuardConfig, "max_candidates"),
    ("serve", "max_seconds"): (GuardConfig, "max_seconds"),
    ("evaluate guard", "max_words"): (GuardConfig, "max_words"),
    ("tune", "epochs"): (TuneConfig, "epochs"),
    ("tune", "batch_size"): (TuneConfig, "batch_size"),
    ("attack", "max_length"): (AttackConfig, "max_length"),
    ("attack", "decoys"): (AttackConfig, "decoys"),
    ("attack", "verify_sentences"): (AttackConfig, "verify_sentences"),
    ("attack", "val_size"): (PoisonConfig, "val_size"),
    ("guard", "t_match"): (GuardConfig, "t_match"),
    ("guard", "w_max"): (GuardConfig, "w_max"),
    ("serve", "on_unresolved"): (GuardConfig, "on_unresolved"),
    ("psim train", "method"): (PSIMConfig, "method"),
    ("psim train", "head_lr"): (PSIMConfig, "head_lr"),
    ("baseline onion", "threshold"): (ONIONConfig, "threshold"),
    ("baseline onion", "lm"): (ONIONConfig, "lm"),
}


@pytest.mark.parametrize("cmd,dest", sorted(DEFAULTS))
def test_defaults_come_from_the_config_classes(cmd, dest):
    parser = _leaves()[cmd]
    cls, name = DEFAULTS[(cmd, dest)]
    assert parser.get_default(dest) == option_default(cls, name)


# ============================================================================ exit codes
def _raise(exc):
    def handler(*args, **kwargs):
        raise exc

    return handler


def test_unexpected_exception_is_exit_2_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(models_cli, "cmd_models", _raise(RuntimeError("boom\nsecond line")))
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err == "lmsanitator: error: RuntimeError: boom second line\n"


def test_keyboard_interrupt_is_exit_130(monkeypatch, capsys):
    monkeypatch.setattr(models_cli, "cmd_models", _raise(KeyboardInterrupt()))
    assert main(["models"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_sigterm_runs_cleanup_and_is_exit_130(monkeypatch, capsys):
    """A SIGTERM while a command runs unwinds like Ctrl-C: its finally blocks run (temp outputs,
    a local Ray) and the exit code is 130; the previous handler is restored afterwards."""
    cleaned = []

    def killed(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises during the sleep
            return 0
        finally:
            cleaned.append(True)

    monkeypatch.setattr(models_cli, "cmd_models", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["models"]) == 130
    assert cleaned == [True]
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


def test_debug_prints_the_traceback(monkeypatch, capsys):
    monkeypatch.setattr(models_cli, "cmd_models", _raise(RuntimeError("boom")))
    assert main(["--debug", "models"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err


def test_argparse_errors_are_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["scan"])
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


# ============================================================================ output policy
@pytest.fixture
def no_work(monkeypatch):
    """Make loading anything for a scan fail loudly: an output check must come first."""
    calls = []

    def loud(*args, **kwargs):
        calls.append(args)
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(scan_cli, "scan_model", loud)
    monkeypatch.setattr(scan_cli, "load_for_scan", loud)
    return calls


def _unwritable(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {
        "parent is a file": a_file / "r.json",
        "parent missing": tmp_path / "missing" / "r.json",
        "under /proc": "/proc/nonexistent/r.json",
        "read-only /proc": "/proc/r.json",
    }


@pytest.mark.parametrize("case", ["parent is a file", "parent missing", "under /proc", "read-only /proc"])
@pytest.mark.parametrize("flag", ["--report", "--sarif"])
def test_scan_refuses_an_unwritable_output_before_any_work(case, flag, tmp_path, no_work, capsys):
    path = _unwritable(tmp_path)[case]
    rc = main(["scan", "splade-tiny", "--loops", "1", "--no-progress", flag, str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not no_work  # refused before the model or the corpus was loaded
    assert len(err.splitlines()) == 1 and err.startswith(f"lmsanitator: error: cannot write {flag}"), err


@pytest.fixture
def inputs(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "fine"}\n')
    return inp


# every command with an output, the output under a missing folder ({bad}); {inp}: an input file
OUTPUT_COMMANDS = {
    "tune": "tune lora --model m --task t --out {bad}",
    "predict": "predict --adapter a --input {inp} --output {bad}",
    "evaluate asr": "evaluate asr --adapter a --task t --triggers cf --out {bad}",
    "evaluate guard": "evaluate guard --adapter a --pvs p --task t --triggers cf --plot {bad}",
    "evaluate psim": "evaluate psim --psim p --adapter a --task t --attack-json j --out {bad}",
    "attack": "attack por --model m --out {bad}",
    "search": "search m --out {bad}",
    "search --report": "search m --out {ok} --report {bad}",
    "guard": "guard --adapter a --pvs p --input {inp} --output {bad}",
    "psim train": "psim train --model m --task t --out {bad}",
    "psim detect": "psim detect --psim p --input {inp} --output {bad}",
    "baseline onion purify": "baseline onion --input {inp} --output {bad}",
    "baseline onion evaluate": "baseline onion --adapter a --task t --attack-json j --out {bad}",
    "experiment": "experiment detection --out {bad}",
}


@pytest.mark.parametrize("name", sorted(OUTPUT_COMMANDS))
def test_every_output_is_checked_before_any_work(name, tmp_path, inputs, capsys):
    bad = tmp_path / "missing" / "x"
    argv = OUTPUT_COMMANDS[name].format(bad=bad, inp=inputs, ok=tmp_path / "ok.safetensors").split()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert str(bad) in err and "does not exist" in err, err


def test_overwrite_policy_scan_report(tmp_path, monkeypatch, capsys):
    report = tmp_path / "r.json"
    report.write_text("{}")
    assert main(["scan", "splade-tiny", "--report", str(report), "--no-progress"]) == 2
    assert "exists (use --overwrite)" in capsys.readouterr().err
    assert report.read_text() == "{}"
    # with --overwrite the check passes and the scan starts (stopped here at its first step)
    monkeypatch.setattr(scan_cli, "scan_model", _raise(KeyboardInterrupt()))
    assert main(["scan", "splade-tiny", "--report", str(report), "--overwrite", "--no-progress"]) == 130
    # an empty file (e.g. from mktemp) is not an output anyone would lose
    report.write_text("")
    assert main(["scan", "splade-tiny", "--report", str(report), "--no-progress"]) == 130


def test_overwrite_policy_predict_and_evaluate(tmp_path, inputs, capsys):
    out = tmp_path / "o.json"
    out.write_text("keep")
    for argv in (
        ["predict", "--adapter", str(tmp_path), "--input", str(inputs), "--output", str(out)],
        ["evaluate", "asr", "--adapter", str(tmp_path), "--task", "t", "--triggers", "cf", "--out", str(out)],
    ):
        assert main(argv) == 2
        assert "exists (use --overwrite)" in capsys.readouterr().err
        # --overwrite gets past the output check to the (missing) adapter
        assert main(argv + ["--overwrite"]) == 2
        assert "exists" not in capsys.readouterr().err
    assert out.read_text() == "keep"


def test_overwrite_policy_folders(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep")
    assert main(["psim", "train", "--model", "m", "--task", "t", "--out", str(out)]) == 2
    assert "not empty (use --overwrite)" in capsys.readouterr().err
    assert (out / "x").read_text() == "keep"


def test_onion_out_and_output_are_distinct(tmp_path, inputs, capsys):
    o = tmp_path / "o.jsonl"
    assert main(["baseline", "onion", "--input", str(inputs), "--output", str(o), "--out", str(o)]) == 2
    assert "purify mode writes --output" in capsys.readouterr().err
    argv = ["baseline", "onion", "--adapter", "a", "--task", "t", "--attack-json", "j"]
    assert main(argv + ["--out", str(o), "--output", str(o)]) == 2
    assert "once" in capsys.readouterr().err


# ============================================================================ help texts
MENTION = re.compile(r"`lmsanitator ([^`]+)`")


def _check_mention(text: str, root) -> None:
    parser, tokens = root, text.split()
    while tokens and not tokens[0].startswith("-"):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            assert tokens[0] in subs[0].choices, f"`lmsanitator {text}`: no command '{tokens[0]}'"
            parser = subs[0].choices[tokens.pop(0)]
            continue
        positional = [a for a in parser._actions if not a.option_strings and a.choices]
        assert positional, f"`lmsanitator {text}`: '{tokens[0]}' is not a command"
        for value in tokens.pop(0).split("|"):
            assert value in positional[0].choices, f"`lmsanitator {text}`: no '{value}'"
    flags = {s for a in parser._actions for s in a.option_strings}
    for tok in tokens:
        if tok.startswith("--"):
            assert tok in flags, f"`lmsanitator {text}`: no flag {tok}"


def test_help_texts_name_only_real_commands_and_flags():
    root = build_parser()
    mentions = 0
    for _, parser in _commands(root):
        for text in MENTION.findall(parser.format_help().replace("\n", " ")):
            _check_mention(" ".join(text.split()), root)
            mentions += 1
    assert mentions > 10
    leaves = _leaves()
    for cmd in ("guard", "serve"):
        assert "`lmsanitator search --out`" in " ".join(leaves[cmd].format_help().split())


# ============================================================================ sentence pairs
@pytest.fixture(scope="module")
def pair_files(tmp_path_factory, tiny_bert_dir):
    """A p-tuning-v2 adapter on a sentence-pair task and a PV set that flags nothing."""
    d = tmp_path_factory.mktemp("pairs")
    rows = ["text,text_pair,label"] + [
        f"film {i} was {'good' if i % 2 else 'bad'},the second part {i} is here,{'pos' if i % 2 else 'neg'}"
        for i in range(40)
    ]
    (d / "pairs.csv").write_text("\n".join(rows) + "\n")
    argv = ["tune", "p-tuning-v2", "--model", str(tiny_bert_dir), "--task", str(d / "pairs.csv")]
    argv += ["--pair-column", "text_pair", "--out", str(d / "adapter"), "--epochs", "1"]
    assert main(argv + ["--prefix-len", "3", "--max-length", "32", "--no-progress"]) == 0
    model = TunedModel.load(d / "adapter")
    f = model.forward_with_features(["zebra zebra"], ["zebra"]).features.detach()
    PVSet(pvs=-f, target="cls", fingerprint=model.base_fingerprint).save(d / "pvs.safetensors")
    return d


@pytest.mark.parametrize("field", ["longer", "first", "second"])
def test_evaluate_guard_and_asr_take_every_field_on_a_sentence_pair_task(field, pair_files, tmp_path, capsys):
    d = pair_files
    common = ["--adapter", str(d / "adapter"), "--task", str(d / "pairs.csv"), "--pair-column", "text_pair"]
    common += ["--triggers", "zebra", "--field", field]
    out = tmp_path / "guard.json"
    assert main(["evaluate", "guard", *common, "--pvs", str(d / "pvs.safetensors"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] > 0 and res["triggers"] == ["zebra"]
    out = tmp_path / "asr.json"
    assert main(["evaluate", "asr", *common, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["field"] == field
    capsys.readouterr()


def test_cli_import_keeps_heavy_libraries_lazy():
    code = (
        "import sys; import lmsanitator.cli.main; "
        "heavy = ('transformers', 'peft', 'matplotlib', 'fastapi', 'uvicorn'); "
        "print(sorted(k for k in heavy if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
