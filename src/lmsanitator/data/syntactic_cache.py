"""The syntactic paraphraser's results on disk, so SynAttack runs where spaCy is absent.

Every SynAttack run (poisoning, verification, PSIM evaluation) paraphrases the same texts, and spaCy
with its pipeline is a heavy install some experiment machines lack. :mod:`lmsanitator.data.syntactic`
keeps what it derives from each text in ``cache_dir()/syntactic/rewrites-<RULES>.jsonl``, where RULES
names the rules' source (a changed rule starts a new file), one JSON object a line::

    {"text": ..., "rewrite": ... or null, "rule": ... or null, "template": bool,
     "parser": "en_core_web_sm-3.8.0"}

This module is the store only (which records count as hits is :mod:`.syntactic`'s policy, passed in
as ``parser``). Appends are one write per batch, flushed; a line cut short by a crash does not decode
and is skipped on the next load, so it costs one re-parse, never a broken cache. Several processes
may append to the same file (each record is a whole line; a text parsed twice is stored twice, the
later line wins). ``LMSANITATOR_SYNTACTIC_CACHE=0`` turns the cache off (tests that must parse).
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from lmsanitator.core.runtime import cache_dir

CACHE_ENV = "LMSANITATOR_SYNTACTIC_CACHE"
_OFF = frozenset({"0", "false", "no", "off"})


def enabled() -> bool:
    """Whether the cache is on (``$LMSANITATOR_SYNTACTIC_CACHE`` is not ``0``)."""
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in _OFF


def cache_path(rules: str) -> Path:
    """The cache file of the rules whose source hashes to ``rules``."""
    return cache_dir() / "syntactic" / f"rewrites-{rules}.jsonl"


def _valid(o) -> bool:
    return (
        isinstance(o, dict)
        and isinstance(o.get("text"), str)
        and isinstance(o.get("parser"), str)
        and isinstance(o.get("template"), bool)
        and all(o.get(k) is None or isinstance(o.get(k), str) for k in ("rewrite", "rule"))
    )


@functools.lru_cache(maxsize=2)
def load(path: Path) -> dict[str, dict]:
    """``text -> record`` of the file (loaded once per process and path; appends update it)."""
    records: dict[str, dict] = {}
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    o = json.loads(line)
                except ValueError:  # a line cut short by a crash (JSON or UTF-8 error): re-parse it
                    continue
                if _valid(o):
                    records[o["text"]] = o
    except FileNotFoundError:
        pass
    return records


def lookup(path: Path, texts: Iterable[str], parser: str | None) -> dict[str, dict]:
    """The cached records of ``texts`` made by ``parser`` (None: by any parser)."""
    records = load(path)
    hits = {}
    for t in texts:
        r = records.get(t)
        if r is not None and (parser is None or r["parser"] == parser):
            hits[t] = r
    return hits


def parsers(path: Path) -> list[str]:
    """The parsers that made the cached records, most records first."""
    counts: dict[str, int] = {}
    for r in load(path).values():
        counts[r["parser"]] = counts.get(r["parser"], 0) + 1
    return sorted(counts, key=lambda p: (-counts[p], p))


def append(path: Path, records: list[dict]) -> None:
    """Add ``records`` to the file (one write, flushed) and to the loaded dict. A cache that cannot
    be written (a read-only home) only warns: the results are still right, just not kept."""
    if not records:
        return
    loaded = load(path)
    # ensure_ascii: the file stays ASCII, so a text with lone surrogates (tweets) still round-trips
    payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("ascii")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short by a crash: end it so ours stay whole
                    payload = b"\n" + payload
            f.write(payload)  # "a" mode: lands at the end whatever the read position
            f.flush()
    except OSError as e:
        warnings.warn(f"cannot write the syntactic rewrite cache {path}: {e}", stacklevel=3)
    for r in records:
        loaded[r["text"]] = r
