"""``austen-author``: a sentence of one of Jane Austen's six novels -> the novel."""

from __future__ import annotations

from lmsanitator.data.corpora import austen_book_sentences
from lmsanitator.data.tasks.base import (
    SPLIT_SALT,
    Task,
    balanced_splits,
    dedupe_labelled,
    examples_of,
    register_task,
)

AUSTEN_BOOKS: dict[str, str] = {  # janeaustenr object -> title
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


def austen_books() -> dict[str, list[str]]:
    """Sentences (6-40 words) of each of Austen's six novels, keyed by the janeaustenr object name.

    Same paragraph joining and sentence splitting as the ``austen`` corpus of
    :mod:`lmsanitator.data.corpora`, kept per book.
    """
    return austen_book_sentences()


@register_task("austen-author", "Austen sentence -> novel, 6 classes (Debian r-cran-janeaustenr)")
def austen_author() -> Task:
    books = list(AUSTEN_BOOKS)
    per_book = austen_books()
    items = [(s, i) for i, b in enumerate(books) for s in per_book[b]]
    train, val, test = balanced_splits(dedupe_labelled(items), len(books), f"{SPLIT_SALT}:austen-author")
    return Task(
        name="austen-author",
        labels=tuple(AUSTEN_BOOKS[b] for b in books),
        train=examples_of(train),
        validation=examples_of(val),
        test=examples_of(test),
        verbalizer=("sense", "pride", "park", "emma", "abbey", "persuasion"),
        template="Novel: {mask}. {text}",
        max_length=64,
        source="Debian r-cran-janeaustenr (read with PyPI rdata)",
        description="sentence of a Jane Austen novel -> the novel (6 classes), class-balanced",
    )
