"""What every command group shares: the parser class, common options, the output policy, helpers.

Output policy (the same for every command): an output that exists and is not empty (a file with
bytes in it, a folder with entries) is refused with one line unless ``--overwrite`` is given, and
every output is checked *before* any work starts: its folder must exist and a temporary file must
be creatable in it (outputs are written to a temporary sibling and renamed, so that is exactly
what the final write needs).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from lmsanitator.core.config import option_choices
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import atomic_file, check_output_dir
from lmsanitator.data.tasks import load_task
from lmsanitator.metrics.asr import triggers_from_attack_json
from lmsanitator.models import load_encoder
from lmsanitator.tuning import TunedModel, read_tune_json

# where ``--field`` puts a trigger in a sentence pair: exactly what
# :func:`lmsanitator.data.triggers.insert_trigger_pair` accepts (tests/test_cli.py checks it)
TRIGGER_FIELDS = ("longer", "first", "second")
MODEL_HELP = "bundled name (minilm, minilm-sre, splade-tiny), hub id or folder"


class Parser(argparse.ArgumentParser):
    """argparse's own errors (unknown flag, bad choice): one line and exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def config_choices(cls, name: str, fallback) -> list:
    """The values a config field accepts: its ``Literal`` options once the class declares them,
    else ``fallback`` (the library's own constant, for a class not yet converted to ``Config``)."""
    return option_choices(cls, name) or list(fallback)


# ============================================================================ options
def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")


def add_overwrite(p: argparse.ArgumentParser, what: str = "outputs") -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace existing non-empty {what}")


def add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-column", help="local/HF tasks: column of the first text field (default text)")
    p.add_argument("--pair-column", help="local/HF tasks: column of the second text field (sentence pairs)")
    p.add_argument("--label-column", help="local/HF tasks: label column (default label)")
    p.add_argument("--labels", help="comma-separated label names in index order (fixes the label set)")
    p.add_argument(
        "--min-confidence", type=float, help="tweets tasks: keep labels with at least this confidence"
    )


def add_trigger_field(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--field",
        default="longer",
        choices=list(TRIGGER_FIELDS),
        help="sentence pairs: which field gets the trigger: the longer (default), first or second",
    )


# ============================================================================ output policy
def _check_writable(path: Path, flag: str) -> None:
    """The folder of ``path`` exists and takes a temporary file (root ignores permission bits,
    so only trying tells a read-only or virtual file system apart)."""
    parent = path.absolute().parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise LMSanitatorError(f"cannot write {flag} '{path}': its folder '{parent}' {what}")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=parent)
    except OSError as exc:
        raise LMSanitatorError(
            f"cannot write {flag} '{path}': cannot create a file in '{parent}' ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_output_file(path: str | Path | None, overwrite: bool, flag: str, hint: str = "") -> Path | None:
    """Refuse (one line) an output file that cannot be written, or one that exists with content
    and no ``--overwrite``; ``None`` (an optional output not asked for) passes through."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise LMSanitatorError(f"{flag} '{path}' is a folder, expected a file")
    if p.exists() and p.stat().st_size > 0 and not overwrite:
        raise LMSanitatorError(f"{flag} '{path}' exists ({hint or 'use --overwrite'})")
    _check_writable(p, flag)
    return p


def check_output_folder(path: str | Path, overwrite: bool, flag: str = "--out") -> Path:
    """Refuse an output folder that exists with entries (no ``--overwrite``) or cannot be created."""
    out = check_output_dir(path, overwrite)
    _check_writable(out, flag)
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """Write into a temporary sibling and rename (:func:`lmsanitator.core.io.atomic_file`: the user's
    umask, stale temporaries cleaned): a crash leaves the old file or none, never half."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ============================================================================ shared steps
def load_task_arg(a, train_size: int | None = None):
    """The task of ``--task`` with the column/label options of :func:`add_task_options`."""
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


def load_tuned(adapter, device: str, model: str | None = None) -> TunedModel:
    """A tuned-model folder, on ``model`` as base when given (else the one it was trained on)."""
    read_tune_json(adapter)  # a clear error before loading any model
    enc = load_encoder(model, device=device) if model else None
    return TunedModel.load(adapter, enc, device=device)


def check_max_examples(a) -> None:
    if a.max_examples is not None and a.max_examples < 1:
        raise LMSanitatorError("--max-examples must be >= 1")


def triggers_arg(a) -> tuple[list[str], dict | None]:
    """Triggers of ``--attack-json`` (with its report) or of ``--triggers`` (report None)."""
    if a.attack_json:
        triggers, report = triggers_from_attack_json(a.attack_json)
        if report.get("insertion") == "syntactic":
            # a syntactic template is not a word to insert: use `evaluate psim` (it paraphrases)
            raise LMSanitatorError(
                f"{a.attack_json}: a syntactic (SynAttack) trigger cannot be inserted as words; "
                "measure it with `lmsanitator evaluate psim --attack-json`"
            )
        return triggers, report
    triggers = [t.strip() for t in a.triggers.split(",")]
    if not all(triggers):
        raise LMSanitatorError("--triggers has an empty trigger")
    return triggers, None


def check_task_matches(task, model) -> None:
    """The task's labels and kind must be the adapter's."""
    if tuple(task.labels) != tuple(model.labels) or task.kind != model.task.kind:
        raise LMSanitatorError(
            f"task '{task.name}' (labels {', '.join(task.labels)}) does not match the adapter's "
            f"labels ({', '.join(model.labels)})"
        )


def pct(x) -> str:
    """A rate as a percentage with one decimal; n/a for NaN or a missing value."""
    return f"{100 * x:.1f}%" if isinstance(x, float) and x == x else "n/a"
