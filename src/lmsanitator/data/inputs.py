"""Input and output records shared by ``predict``, ``guard`` and the HTTP service.

An input record is ``{"text": str, "text_pair": str?}`` (sentence tasks) or ``{"tokens": [str, ...]}``
(token tasks; a ``text`` is split on whitespace). An output record has at least ``label`` and ``probs``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import jsonl_objects


def parse_input_records(
    objects: Iterable[tuple[object, dict]], model, where: str
) -> tuple[list, list | None]:
    """``(texts, pairs)`` from ``(position, object)`` pairs; ``pairs`` is None for single-text tasks.

    ``position`` names the record in errors (a line number, a list index).
    """
    token = model.task.kind == "token"
    texts, pairs = [], []
    for n, obj in objects:
        at = f"{where} record {n}"
        if not isinstance(obj, dict):
            raise LMSanitatorError(f"{at} is not a JSON object")
        if token:
            toks = obj.get("tokens")
            if toks is None and isinstance(obj.get("text"), str):
                toks = obj["text"].split()
            if (
                not isinstance(toks, list)
                or not toks
                or not all(isinstance(t, str) and t.strip() for t in toks)
            ):
                raise LMSanitatorError(
                    f"{at}: a token task needs a non-empty 'tokens' list of non-empty strings"
                )
            _check_encodable(at, toks)
            texts.append(toks)
            continue
        text = obj.get("text")
        if not isinstance(text, str):
            raise LMSanitatorError(f"{at} has no string 'text'")
        if not text.strip():
            raise LMSanitatorError(f"{at} has an empty 'text'")
        pair = obj.get("text_pair")
        if pair is not None and not isinstance(pair, str):
            raise LMSanitatorError(f"{at}: 'text_pair' must be a string")
        if model.task.pair and (pair is None or not pair.strip()):
            raise LMSanitatorError(
                f"{at}: the model was trained on sentence pairs; give a non-empty 'text_pair'"
            )
        if not model.task.pair and pair is not None:
            raise LMSanitatorError(f"{at}: the model takes one text; drop 'text_pair'")
        _check_encodable(at, [text] if pair is None else [text, pair])
        texts.append(text)
        pairs.append(pair)
    return texts, (pairs if model.task.pair else None)


def _check_encodable(at: str, strings: list[str]) -> None:
    """Strings must be writable back as UTF-8 (a lone surrogate from a ``"\\ud800"`` escape is not;
    records that came through :func:`lmsanitator.core.io.parse_json` never carry one)."""
    for s in strings:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise LMSanitatorError(f"{at} holds a lone UTF-16 surrogate (e.g. \\ud800)") from None


def prediction_record(model, probs) -> dict:
    """``{"label", "label_name", "probs"}`` for one input's probabilities (a row, or words x labels)."""
    if model.task.kind == "token":
        labels = probs.argmax(-1).tolist()
        return {
            "label": labels,
            "label_name": [model.labels[i] for i in labels],
            "probs": [[round(float(x), 6) for x in r] for r in probs],
        }
    k = int(probs.argmax())
    return {"label": k, "label_name": model.labels[k], "probs": [round(float(x), 6) for x in probs]}


def read_jsonl_inputs(path, model) -> tuple[list, list | None]:
    """Read and check a JSONL input file (one-line errors for a missing, non-UTF-8, malformed,
    over-limit or empty file; see :func:`lmsanitator.core.io.jsonl_objects`)."""
    p = Path(path)
    if not p.is_file():
        raise LMSanitatorError(f"input file not found: {path}")
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LMSanitatorError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    texts, pairs = parse_input_records(jsonl_objects(raw, str(path)), model, str(path))
    if not texts:
        raise LMSanitatorError(f"no inputs in {path}")
    return texts, pairs
