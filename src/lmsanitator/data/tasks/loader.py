"""``load_task``: a registered built-in task, a Hugging Face preset or ``hf:NAME[:CONFIG]``, or a file."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.tasks.base import TASKS, Task, build_task
from lmsanitator.data.tasks.files import read_file_records, task_from_records
from lmsanitator.data.tasks.hub import HF_PRESETS, hf_task


def load_task(
    spec: str,
    *,
    train_size: int | None = None,
    text_column: str | None = None,
    pair_column: str | None = None,
    label_column: str | None = None,
    labels: Sequence[str] | None = None,
    min_confidence: float | None = None,
) -> Task:
    """Load a built-in task (:data:`TASKS`), a local file, a preset or ``hf:NAME[:CONFIG]``."""
    spec = str(spec).strip()
    if train_size is not None and train_size < 1:
        raise LMSanitatorError(f"--train-size must be >= 1, got {train_size}")
    if spec in TASKS:
        task = build_task(spec, min_confidence)
        task = dataclasses.replace(  # the built task is cached: a caller may edit its own lists
            task, train=list(task.train), validation=list(task.validation), test=list(task.test)
        )
    elif spec in HF_PRESETS or spec.startswith("hf:"):
        task = hf_task(spec, text_column, pair_column, label_column, labels)
    else:
        task = _file_task(spec, text_column, pair_column, label_column, labels)
    return task.with_train_size(train_size)


def _file_task(spec: str, text_column, pair_column, label_column, labels) -> Task:
    path = Path(spec).expanduser()
    if not path.exists():
        if "/" in spec or path.suffix:
            raise LMSanitatorError(f"task file not found: {spec}")
        raise LMSanitatorError(
            f"unknown task '{spec}': choose one of {', '.join(TASKS)}, a preset "
            f"({', '.join(HF_PRESETS)}), hf:NAME[:CONFIG], or a .csv/.tsv/.jsonl file"
        )
    if not path.is_file():
        raise LMSanitatorError(f"task path is not a file: {spec}")
    records = read_file_records(path)
    return task_from_records(
        path.stem,
        records,
        text_column=text_column or "text",
        pair_column=pair_column,
        label_column=label_column or "label",
        labels=labels,
        source=str(path),
    )
