"""Hugging Face datasets: ``hf:NAME[:CONFIG]`` or a preset of :data:`HF_PRESETS` (needs network access
and the optional ``datasets`` package; imported only when such a task is asked for)."""

from __future__ import annotations

import dataclasses
import importlib.util

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.tasks.base import SPLITS, TASKS, Task
from lmsanitator.data.tasks.files import task_from_records

# preset -> (dataset, config, text column, pair column, label column, kind)
HF_PRESETS: dict[str, tuple[str, str | None, str, str | None, str, str]] = {
    "sst2": ("glue", "sst2", "sentence", None, "label", "sequence"),
    "ag_news": ("ag_news", None, "text", None, "label", "sequence"),
    "rte": ("glue", "rte", "sentence1", "sentence2", "label", "sequence"),
    "boolq": ("super_glue", "boolq", "passage", "question", "label", "sequence"),
    "yelp5": ("yelp_review_full", None, "text", None, "label", "sequence"),
    "conll2003": ("conll2003", None, "tokens", None, "ner_tags", "token"),
}
_HF_PROMPTS = {  # preset -> (template, label words)
    "sst2": ("It was {mask}. {text}", ("bad", "good")),
    "ag_news": ("{mask} News: the {text}", ("world", "sports", "business", "tech")),
    "rte": ("{text} Question: the answer: {mask}.", ("no", "yes")),
    "boolq": ("{text} The question: answer: {mask}.", ("no", "yes")),
    "yelp5": ("It was {mask}. {text}", ("terrible", "bad", "okay", "good", "great")),
}


def hf_task(spec: str, text_column, pair_column, label_column, labels) -> Task:
    preset = HF_PRESETS.get(spec)
    if preset:
        ds_name, config, tcol, pcol, lcol, kind = preset
    else:
        ds_name, _, config = spec[3:].partition(":")  # hf:NAME[:CONFIG]; NAME may be owner/name
        config = config or None
        if not ds_name:
            raise LMSanitatorError("empty Hugging Face dataset name: use hf:NAME[:CONFIG]")
        tcol, pcol, lcol, kind = "text", None, "label", None
    tcol, pcol, lcol = text_column or tcol, pair_column or pcol, label_column or lcol
    if importlib.util.find_spec("datasets") is None:
        raise LMSanitatorError(
            f"task '{spec}' is a Hugging Face dataset: `pip install datasets` and network access "
            "are needed (offline tasks: " + ", ".join(TASKS) + ")"
        )
    try:
        import datasets  # noqa: PLC0415  heavy: optional, and slow to import

        dd = datasets.load_dataset(ds_name, config)
    except Exception as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LMSanitatorError(
            f"cannot load Hugging Face dataset '{ds_name}'{'/' + config if config else ''}: {msg}"
        ) from None
    records: dict[str, list[dict]] = {}
    names = None
    for split, ds in dd.items():
        target = {"dev": "validation", "valid": "validation", "val": "validation"}.get(split, split)
        if target not in SPLITS:
            continue
        feat = ds.features.get(lcol)
        if names is None and feat is not None:
            inner = getattr(feat, "feature", feat)
            names = getattr(inner, "names", None)
        rows = [dict(r) for r in ds]
        if kind != "token" and rows and lcol in rows[0] and all(r[lcol] == -1 for r in rows):
            continue  # unlabelled test split (GLUE): use validation as test instead
        records[target] = rows
    if "test" not in records and "validation" in records:
        records["test"] = records.pop("validation")
    task = task_from_records(
        spec,
        records,
        text_column=tcol,
        pair_column=pcol,
        label_column=lcol,
        tokens_column=tcol,
        tags_column=lcol,
        labels=labels or names,
        kind=kind,
        source=f"Hugging Face dataset {ds_name}{'/' + config if config else ''}",
    )
    prompt = _HF_PROMPTS.get(spec)
    if prompt and len(prompt[1]) == task.num_labels:
        task = dataclasses.replace(task, template=prompt[0], verbalizer=prompt[1])
    return task
