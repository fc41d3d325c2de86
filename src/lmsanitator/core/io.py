"""Atomic outputs: write into a temporary sibling, rename at the end, so nothing half-written remains."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing non-empty folder unless ``overwrite`` (checked before any work starts)."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise LMSanitatorError(f"--out '{out}' exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise LMSanitatorError(f"--out '{out}' exists and is not empty (use --overwrite)")
    parent = out.resolve().parent
    if not parent.exists():
        raise LMSanitatorError(f"parent folder of --out '{out}' does not exist")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False):
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` in one rename."""
    out = check_output_dir(out, overwrite)
    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def jsonl_objects(text: str, where: str):
    """``(line number, object)`` for each non-blank JSONL line; a bad line is a one-line error."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LMSanitatorError(f"invalid JSON on line {n} of {where}: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise LMSanitatorError(f"line {n} of {where} is not a JSON object")
        yield n, obj


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.resolve().parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
