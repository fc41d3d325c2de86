"""Text corpora and trigger utilities (pure Python: no torch/transformers imports here)."""

from lmsanitator.data.corpora import (
    CORPORA,
    PARTS,
    load_corpus,
    normalize,
    part_of,
    sample,
    split_corpus,
    split_sentences,
)
from lmsanitator.data.tasks import TASKS, Example, Task, load_task  # noqa: F401  downstream tasks (no torch)
from lmsanitator.data.triggers import (
    FREQUENCY_BANDS,
    PAPER_TRIGGERS,
    insert_trigger,
    insert_trigger_pair,
    random_triggers,
    trigger_count,
    word_frequencies,
    word_list,
)

__all__ = [
    "CORPORA",
    "PARTS",
    "load_corpus",
    "normalize",
    "part_of",
    "sample",
    "split_corpus",
    "split_sentences",
    "FREQUENCY_BANDS",
    "PAPER_TRIGGERS",
    "insert_trigger",
    "insert_trigger_pair",
    "random_triggers",
    "trigger_count",
    "word_frequencies",
    "word_list",
]
