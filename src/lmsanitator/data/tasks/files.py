"""Tasks from records: rows of a local ``.csv`` / ``.tsv`` / ``.jsonl`` file (or of a hub dataset).

Columns ``text``, optional ``text_pair``, ``label`` -- or ``tokens`` + ``tags`` for token
classification -- and an optional ``split`` column (``dev`` / ``val`` / ``valid`` mean validation).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import jsonl_objects
from lmsanitator.data.tasks.base import (
    SPLIT_SALT,
    SPLITS,
    TEST_SIZE,
    TRAIN_SIZE,
    VALIDATION_SIZE,
    Example,
    Task,
    stable_key,
)


def task_from_records(
    name: str,
    records: dict[str, list[dict]],
    *,
    text_column: str = "text",
    pair_column: str | None = None,
    label_column: str = "label",
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    labels: Sequence[str] | None = None,
    kind: str | None = None,
    source: str = "",
    caps: tuple[int, int, int] = (TRAIN_SIZE, VALIDATION_SIZE, TEST_SIZE),
) -> Task:
    """A task from rows split into ``train`` / ``validation`` / ``test`` (dicts of column -> value).

    Labels may be names or integer indices. With ``labels`` given, every label must be one of
    them (or an index into them); otherwise the label set is inferred (sorted names, or 0..max).
    A missing ``validation`` split is carved from train (10%, deterministic); a missing ``test``
    split from train too (20%). Oversized splits are cut to ``caps`` in a deterministic order.
    """
    all_rows = [r for rows in records.values() for r in rows]
    if not all_rows:
        raise LMSanitatorError(f"task '{name}' has no rows")
    first = all_rows[0]
    if kind is None:
        kind = (
            "token"
            if tokens_column in first and tags_column in first and text_column not in first
            else "sequence"
        )
    if pair_column is None and kind == "sequence" and "text_pair" in first:
        pair_column = "text_pair"  # the documented column: a pair file needs no --pair-column
    need = (
        [tokens_column, tags_column]
        if kind == "token"
        else [text_column, label_column] + ([pair_column] if pair_column else [])
    )
    _check_columns(name, records, need)
    raw_labels = [y for r in all_rows for y in (r[tags_column] if kind == "token" else [r[label_column]])]
    index = _label_index(name, raw_labels, labels)
    label_names = tuple(labels) if labels else tuple(sorted(index, key=index.get))

    columns = (text_column, pair_column, label_column, tokens_column, tags_column)
    convert = _row_converter(name, kind, index, columns)
    splits = {s: [convert(r, f"{s} row {i + 1}") for i, r in enumerate(rows)] for s, rows in records.items()}
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise LMSanitatorError(
            f"task '{name}': unknown split(s) {', '.join(sorted(unknown))}; use {', '.join(SPLITS)}"
        )
    train, val, test = _disjoint_splits(splits, f"{SPLIT_SALT}:{name}", caps)
    return Task(
        name=name,
        labels=label_names,
        train=train,
        validation=val,
        test=test,
        kind=kind,
        verbalizer=None,
        source=source,
        max_length=128,
        description=f"{kind} classification from {source or 'records'}",
    )


def _row_converter(name, kind, index, columns):
    """``convert(row, where) -> Example`` for this task's columns (text, pair, label, tokens, tags)."""
    text_column, pair_column, label_column, tokens_column, tags_column = columns

    def convert(r, where) -> Example:
        if kind == "token":
            toks = r[tokens_column]
            tags = r[tags_column]
            if isinstance(toks, str):
                toks = toks.split()
            if not isinstance(tags, (list, tuple)) or len(tags) != len(toks):
                raise LMSanitatorError(f"task '{name}': {where}: tokens and tags differ in length")
            toks = tuple(str(t) for t in toks)
            return Example(text=" ".join(toks), label=tuple(index[_key(y)] for y in tags), tokens=toks)
        text = " ".join(str(r[text_column]).split())
        pair = " ".join(str(r[pair_column]).split()) if pair_column else None
        return Example(text=text, label=index[_key(r[label_column])], text_pair=pair)

    return convert


def _check_columns(name: str, records: dict[str, list[dict]], need: list[str]) -> None:
    for col in need:
        for split, rows in records.items():
            for i, r in enumerate(rows):
                if col not in r:
                    raise LMSanitatorError(
                        f"task '{name}': column '{col}' missing (split {split}, row {i + 1}; "
                        f"columns: {', '.join(map(str, r))})"
                    )


def _disjoint_splits(
    splits: dict[str, list[Example]], salt: str, caps: tuple[int, int, int]
) -> list[list[Example]]:
    """Train / validation / test: missing ones carved from train, de-duplicated, disjoint, capped."""
    train = _dedupe_examples(splits.get("train", []))
    if "test" not in splits:
        train.sort(key=lambda e: stable_key(_ex_key(e), salt))
        k = max(1, len(train) // 5) if len(train) > 1 else 0
        splits["test"], train = train[:k], train[k:]
    if "validation" not in splits:
        train.sort(key=lambda e: stable_key(_ex_key(e), salt + ":val"))
        k = max(1, len(train) // 10) if len(train) > 1 else 0
        splits["validation"], train = train[:k], train[k:]
    test = _dedupe_examples(splits["test"])
    seen = {_ex_key(e) for e in test}
    val = [e for e in _dedupe_examples(splits["validation"]) if _ex_key(e) not in seen]
    seen |= {_ex_key(e) for e in val}
    train = [e for e in train if _ex_key(e) not in seen]  # disjoint, whatever the source says
    out = []
    for items, cap in zip((train, val, test), caps):
        if len(items) > cap:
            items = sorted(items, key=lambda e: stable_key(_ex_key(e), salt + ":cap"))[:cap]
        out.append(items)
    return out


def _key(y):
    if isinstance(y, bool):
        return int(y)
    if isinstance(y, float) and y.is_integer():
        return int(y)
    if isinstance(y, str) and re.fullmatch(r"-?\d+", y.strip()):
        return int(y)
    return y.strip() if isinstance(y, str) else y


def _label_index(name: str, raw: list, labels: Sequence[str] | None) -> dict:
    keys = [_key(y) for y in raw]
    if labels:
        labels = [str(x) for x in labels]
        index: dict = {}
        for i, lab in enumerate(labels):
            index[lab] = i
            index[i] = i
        for y in keys:
            if y not in index:
                raise LMSanitatorError(
                    f"task '{name}': label {y!r} is outside the task's label set ({', '.join(labels)})"
                )
        return index
    if all(isinstance(y, int) for y in keys):
        bad = [y for y in keys if y < 0]
        if bad:
            raise LMSanitatorError(
                f"task '{name}': label {bad[0]} is outside the task's label set "
                "(integer labels must be 0..K-1)"
            )
        return {i: i for i in range(max(keys) + 1)}
    if any(isinstance(y, int) for y in keys):
        raise LMSanitatorError(f"task '{name}': labels mix names and numbers")
    return {y: i for i, y in enumerate(sorted(set(keys)))}


def _ex_key(e: Example) -> str:
    return e.text if e.text_pair is None else f"{e.text}\x00{e.text_pair}"


def _dedupe_examples(items: list[Example]) -> list[Example]:
    seen, out = set(), []
    for e in items:
        k = _ex_key(e)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out


def read_file_records(path: Path) -> dict[str, list[dict]]:
    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise LMSanitatorError(f"cannot read task file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise LMSanitatorError(f"task file {path} is not UTF-8 (bad byte at offset {exc.start})") from None
    rows: list[dict] = []
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
        if not reader.fieldnames:
            raise LMSanitatorError(f"task file {path} is empty")
        rows = [{k.strip(): v for k, v in r.items() if k is not None} for r in reader]
    elif suffix == ".jsonl":
        rows.extend(obj for _, obj in jsonl_objects(raw, str(path)))
    else:
        raise LMSanitatorError(
            f"unsupported task file type '{path.suffix or '(none)'}': use .csv, .tsv or .jsonl"
        )
    if not rows:
        raise LMSanitatorError(f"task file {path} has no rows")
    out: dict[str, list[dict]] = {}
    if all("split" in r for r in rows):
        for r in rows:
            s = {"dev": "validation", "val": "validation", "valid": "validation"}.get(
                str(r["split"]).strip().lower(), str(r["split"]).strip().lower()
            )
            out.setdefault(s, []).append(r)
    else:
        out["train"] = rows
    return out
