"""Outputs written atomically, and JSON read with limits.

Atomic outputs: write into a temporary sibling (``.NAME.tmp-PID-XXXX``), rename at the end, so
nothing half-written remains. The temporary is removed on every exit path the process controls
(an exception, Ctrl-C, ``SystemExit``, a failed rename); one left by a process that was killed
(SIGKILL, power loss) is removed by the next write to the same output once its process is gone, or
named in a warning when its owner cannot be told. Outputs get the user's umask, not the 0600 / 0700
of :mod:`tempfile`.

JSON in: :func:`parse_json` and :func:`jsonl_objects` never raise anything but
:class:`LMSanitatorError` for bad input: nesting depth, number length, string length and record
size are bounded (:class:`JsonLimits`), lone surrogates (``"\\ud800"``) and ``NaN`` / ``Infinity``
are refused, and JSONL splits on ``\\n`` only (a raw U+2028 or U+0085 inside a string is valid
JSON and stays in its line).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError

log = logging.getLogger("lmsanitator")


# ============================================================================ atomic outputs
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


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``);
    elsewhere set and restored at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def _tmp_prefix(name: str) -> str:
    # the pid lets a later run tell a temporary of a dead process from one still being written
    return f".{name}.tmp-{os.getpid()}-"


_STALE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)?")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings of ``path`` whose process is gone (a run that
    was killed before it could clean up); warn about those whose owner cannot be told (no pid in the
    name: an older version wrote them). Returns what was removed."""
    path = Path(path)
    parent = path.resolve().parent
    removed = []
    with contextlib.suppress(OSError):
        siblings = [
            p for p in parent.iterdir() if p.name.startswith((f".{path.name}.tmp-", f".{path.name}.old-"))
        ]
        for p in siblings:
            m = _STALE.match(p.name)
            pid = int(m["pid"]) if m and m["pid"] else None
            if pid is not None and (pid == os.getpid() or _pid_alive(pid)):
                continue
            if pid is None:
                log.warning("stale temporary '%s' left by an earlier run next to '%s'; remove it", p, path)
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            removed.append(p)
    return removed


def _umask_tree(root: Path) -> None:
    """Give what the writers put in ``root`` the user's umask: some save through their own temporary
    file and rename it (0600 whatever the umask: safetensors weights of a tuned model were)."""
    mask = current_umask()
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in filenames:
            path = os.path.join(dirpath, f)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False):
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` in one rename."""
    out = check_output_dir(out, overwrite)
    parent = out.resolve().parent
    clean_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out.name), dir=parent))
    old = None
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        _umask_tree(tmp)
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():  # put the previous output back
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path):
    """Yield a temporary path next to ``path`` to write; on success it replaces ``path`` in one rename
    (with the user's umask), on any error it is removed."""
    path = Path(path)
    clean_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), dir=path.resolve().parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # after the writer: some (safetensors) replace the file and bring their own mode
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, obj) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ============================================================================ JSON with limits
@dataclass(frozen=True)
class JsonLimits:
    """Bounds on one JSON document (a request body, a JSONL line). Python's parser recurses per
    nesting level (100k nested arrays: RecursionError) and converts integers of any length (quadratic;
    5000 digits: ValueError), so both are checked before or while parsing."""

    max_depth: int = 32
    max_number_chars: int = 100
    max_string_chars: int = 4 << 20
    max_record_chars: int = 16 << 20


DEFAULT_LIMITS = JsonLimits()

# strings (skipped whole, escapes included) and the brackets outside them
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _check_depth(text: str, limits: JsonLimits) -> None:
    depth = 0
    for m in _TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > limits.max_depth:
                raise ValueError(f"nesting deeper than {limits.max_depth} levels")
        elif c in "]}":
            depth -= 1


def _check_values(obj, limits: JsonLimits) -> None:
    """Every string (keys too) within the length limit and free of lone surrogates (they cannot be
    written back as UTF-8). Iterative: the depth is already bounded, but no recursion is needed."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, str):
            if len(x) > limits.max_string_chars:
                raise ValueError(f"a string longer than {limits.max_string_chars} characters")
            if _SURROGATE.search(x):
                raise ValueError("a lone UTF-16 surrogate escape (e.g. \\ud800) in a string")


def _number_hook(limits: JsonLimits, convert):
    def parse(s: str):
        if len(s) > limits.max_number_chars:
            raise ValueError(f"a number longer than {limits.max_number_chars} characters")
        x = convert(s)
        if isinstance(x, float) and not math.isfinite(x):  # 1e400: Python reads inf
            raise ValueError(f"the number {s} is out of range")
        return x

    return parse


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _loads(text: str, limits: JsonLimits):
    """``json.loads`` within ``limits``: JSONDecodeError for bad syntax, ValueError for a limit."""
    if len(text) > limits.max_record_chars:
        raise ValueError(f"longer than {limits.max_record_chars} characters")
    _check_depth(text, limits)
    try:
        obj = json.loads(
            text,
            parse_int=_number_hook(limits, int),
            parse_float=_number_hook(limits, float),
            parse_constant=_no_constant,
        )
    except RecursionError:  # cannot happen below max_depth, kept as a last guard
        raise ValueError("nested too deeply") from None
    _check_values(obj, limits)
    return obj


def _limit_message(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_json(data: str | bytes, where: str, limits: JsonLimits = DEFAULT_LIMITS):
    """One JSON document (UTF-8 bytes or text) within ``limits``; any problem is one
    :class:`LMSanitatorError` line naming ``where``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise LMSanitatorError(f"{where} is not UTF-8") from None
    try:
        return _loads(data, limits)
    except json.JSONDecodeError as exc:
        raise LMSanitatorError(f"{where} is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except ValueError as exc:
        raise LMSanitatorError(f"{where} is refused: {_limit_message(exc)}") from None


def jsonl_objects(text: str | bytes, where: str, limits: JsonLimits = DEFAULT_LIMITS):
    """``(line number, object)`` for each non-blank JSONL line; a bad line is a one-line error.

    Lines end at ``\\n`` only (``\\r\\n`` too: ``\\r`` is JSON whitespace): ``str.splitlines`` would
    also split at U+2028, U+0085 and other characters that JSON allows raw inside a string."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LMSanitatorError(f"{where} is not UTF-8 (byte {exc.start})") from None
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip(" \t\r"):
            continue
        try:
            obj = _loads(line, limits)
        except json.JSONDecodeError as exc:
            raise LMSanitatorError(f"invalid JSON on line {n} of {where}: {exc.msg}") from None
        except ValueError as exc:
            raise LMSanitatorError(f"line {n} of {where} is refused: {_limit_message(exc)}") from None
        if not isinstance(obj, dict):
            raise LMSanitatorError(f"line {n} of {where} is not a JSON object")
        yield n, obj
