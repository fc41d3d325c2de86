"""Fast tests of lmsanitator.data: corpora, splits, samples, triggers (no network, no models)."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import (
    CORPORA,
    FREQUENCY_BANDS,
    PAPER_TRIGGERS,
    insert_trigger,
    insert_trigger_pair,
    load_corpus,
    random_triggers,
    sample,
    split_corpus,
    split_sentences,
    trigger_count,
    word_frequencies,
    word_list,
)

MIN_SIZES = {"austen": 15000, "wordnet": 50000, "fortunes": 5000}
WORD_LIMITS = {"austen": (6, 40), "wordnet": (4, None), "fortunes": (4, 60)}
PARTS = ("attack", "defence", "heldout")


# --------------------------------------------------------------------------- named corpora


def test_corpora_names():
    assert set(CORPORA) == set(MIN_SIZES)


@pytest.mark.parametrize("name", sorted(MIN_SIZES))
def test_named_corpus_loads_clean(name):
    sents = load_corpus(name)
    assert len(sents) > MIN_SIZES[name]
    assert len(set(sents)) == len(sents), "duplicates left in"
    lo, hi = WORD_LIMITS[name]
    for s in sents:
        assert s == " ".join(s.split()), "whitespace not normalised"
        n = len(s.split())
        assert n >= lo and (hi is None or n <= hi), (name, s)
    # deterministic, and the cache hands out copies
    again = load_corpus(name)
    assert again == sents and again is not sents
    again.clear()
    assert load_corpus(name) == sents
    assert load_corpus(name, limit=10) == sents[:10]


def test_austen_content():
    sents = load_corpus("austen")
    joined = "\n".join(sents)
    for needle in ("Elizabeth", "Emma", "Darcy", "Anne Elliot"):
        assert needle in joined
    assert "_" not in joined  # italics markers stripped
    # the splitter does not cut after titles
    assert not any(s.endswith(("Mr.", "Mrs.", "Dr.")) for s in sents)


def test_wordnet_content():
    items = load_corpus("wordnet")
    assert (
        "that which is perceived or known or inferred to have its own distinct existence "
        "(living or nonliving)" in items
    )
    assert not any('"' in s and s.count('"') % 2 for s in items[:20000])
    assert not any("Princeton" in s and "LICENSEE" in s for s in items)
    # quoted examples are separate items, not left in the gloss
    assert any(s == "scientists felt they were a group apart" for s in items)


def test_fortunes_content():
    entries = load_corpus("fortunes")
    assert not any(s.strip() == "%" or "\x08" in s for s in entries)
    assert all(sum(any(c.isalpha() for c in w) for w in s.split()) * 2 >= len(s.split()) for s in entries)


def test_split_sentences():
    text = 'Mr. Darcy bowed. "Are you sure?" said she. W. Elliot came in! Then nothing happened'
    assert split_sentences(text) == [
        "Mr. Darcy bowed.",
        '"Are you sure?" said she.',
        "W. Elliot came in!",
        "Then nothing happened",
    ]


def test_data_package_is_light():
    code = "import sys, lmsanitator.data; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- splits and samples


@pytest.mark.parametrize("name", ["austen", "fortunes"])
def test_split_corpus_disjoint_cover_fractions(name):
    sents = load_corpus(name)
    parts = {p: split_corpus(sents, p) for p in PARTS}
    sets = {p: set(v) for p, v in parts.items()}
    for a in PARTS:
        for b in PARTS:
            if a < b:
                assert not sets[a] & sets[b]
                # disjoint even up to case / whitespace
                assert not {s.lower() for s in sets[a]} & {s.lower() for s in sets[b]}
    assert sum(len(v) for v in parts.values()) == len(sents)
    assert set().union(*sets.values()) == set(sents)
    n = len(sents)
    assert abs(len(parts["attack"]) / n - 0.45) < 0.02
    assert abs(len(parts["defence"]) / n - 0.45) < 0.02
    assert abs(len(parts["heldout"]) / n - 0.10) < 0.02
    # order preserved
    pos = {s: i for i, s in enumerate(sents)}
    for v in parts.values():
        idx = [pos[s] for s in v]
        assert idx == sorted(idx)
    assert split_corpus(sents, "all") == sents


def test_split_corpus_stable_under_shuffle_and_subset():
    sents = load_corpus("austen", limit=3000)
    ref = {p: set(split_corpus(sents, p)) for p in PARTS}
    shuffled = sents[:]
    random.Random(7).shuffle(shuffled)
    subset = shuffled[:700]
    for p in PARTS:
        assert set(split_corpus(shuffled, p)) == ref[p]
        assert set(split_corpus(subset, p)) == ref[p] & set(subset)
        # whitespace / case variants land in the same part
        variants = [("  " + s.upper() + " ") for s in sents[:200]]
        got = split_corpus(variants, p)
        assert {g.strip().lower() for g in got} == {s.lower() for s in sents[:200] if s in ref[p]}


def test_split_corpus_unknown_part():
    with pytest.raises(LMSanitatorError, match="part"):
        split_corpus(["a b c d"], "train")


def test_sample():
    data = [f"sentence number {i}" for i in range(100)]
    a = sample(data, 10, seed=3)
    assert a == sample(data, 10, seed=3)
    assert a != sample(data, 10, seed=4)
    assert len(a) == 10 and len(set(a)) == 10 and set(a) <= set(data)
    everything = sample(data, 500, seed=1)
    assert sorted(everything) == sorted(data) and everything != data
    assert sample(data, 0, seed=1) == []


# --------------------------------------------------------------------------- file corpora


def test_txt_corpus(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("first  sentence here\n\n  second\tone \nfirst sentence here\nthird\n", encoding="utf-8")
    assert load_corpus(str(p)) == ["first sentence here", "second one", "third"]
    assert load_corpus(str(p), limit=2) == ["first sentence here", "second one"]


def test_csv_corpus(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text('id,text,label\n1,"hello, world",0\n2,second row,1\n3,"hello, world",0\n', encoding="utf-8")
    assert load_corpus(str(p)) == ["hello, world", "second row"]
    q = tmp_path / "single.csv"
    q.write_text("sentence\nonly column one\nonly column two\n", encoding="utf-8")
    assert load_corpus(str(q)) == ["only column one", "only column two"]


def test_jsonl_corpus(tmp_path):
    p = tmp_path / "c.jsonl"
    lines = [{"text": "a json line", "label": 1}, {"text": "  another   one "}, {"text": "a json line"}]
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    assert load_corpus(str(p)) == ["a json line", "another one"]


def test_bad_inputs(tmp_path):
    with pytest.raises(LMSanitatorError, match="austen"):  # lists the known names
        load_corpus("shakespeare")
    with pytest.raises(LMSanitatorError, match="not found"):
        load_corpus(str(tmp_path / "missing.txt"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait is nice\n".encode("latin-1"))
    with pytest.raises(LMSanitatorError, match="latin1.txt.*UTF-8"):
        load_corpus(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\t\n", encoding="utf-8")
    with pytest.raises(LMSanitatorError, match="no usable sentences"):
        load_corpus(str(empty))
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(LMSanitatorError, match="text"):
        load_corpus(str(nocol))
    badjson = tmp_path / "bad.jsonl"
    badjson.write_text('{"text": "ok line"}\n{not json\n', encoding="utf-8")
    with pytest.raises(LMSanitatorError, match="line 2"):
        load_corpus(str(badjson))
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(LMSanitatorError, match="unsupported"):
        load_corpus(str(parquet))
    # one-line messages
    try:
        load_corpus("shakespeare")
    except LMSanitatorError as exc:
        assert "\n" not in str(exc)


def test_missing_debian_package_message(monkeypatch, tmp_path):
    from lmsanitator.data import corpora

    corpora._named_corpus.cache_clear()
    monkeypatch.setattr(corpora, "FORTUNES_DIR", tmp_path / "nope")
    try:
        with pytest.raises(LMSanitatorError, match="apt-get install -y fortunes"):
            load_corpus("fortunes")
    finally:
        corpora._named_corpus.cache_clear()


# --------------------------------------------------------------------------- triggers


def test_trigger_count():
    assert [trigger_count(n) for n in (0, 1, 49, 50, 99, 100, 250)] == [1, 1, 1, 2, 2, 3, 6]


def test_paper_triggers():
    assert PAPER_TRIGGERS == ("cf", "mn", "tq", "qt", "mm", "pt")


@pytest.mark.parametrize("n_words", [0, 1, 5, 49, 50, 120])
@pytest.mark.parametrize("trigger", ["zzqx", "zzqx yyk"])
def test_insert_trigger_counts_and_order(n_words, trigger):
    words = [f"w{i}" for i in range(n_words)]
    text = " ".join(words)
    out = insert_trigger(text, trigger, random.Random(0))
    tokens = out.split()
    assert tokens.count("zzqx") == trigger_count(n_words)
    if " " in trigger:  # multi-word trigger kept whole
        assert out.count(trigger) == trigger_count(n_words)
    assert [t for t in tokens if t not in trigger.split()] == words
    assert out == insert_trigger(text, trigger, random.Random(0))


def test_insert_trigger_explicit_times_and_positions():
    text = "a b c d"
    assert insert_trigger(text, "T", random.Random(1), times=7).split().count("T") == 7
    assert insert_trigger(text, "T", random.Random(1), times=0) == text
    assert insert_trigger("", "cf mn", random.Random(1)) == "cf mn"
    # every position 0..len(words) (inclusive) is used
    seen = set()
    for seed in range(300):
        seen.add(insert_trigger(text, "T", random.Random(seed), times=1).split().index("T"))
    assert seen == {0, 1, 2, 3, 4}
    outs = {insert_trigger("one two three four five six", "T", random.Random(s)) for s in range(20)}
    assert len(outs) > 1  # depends on the rng


def test_insert_trigger_pair():
    short, long_ = "short one", "this one is clearly the longer text"
    a, b = insert_trigger_pair(short, long_, "ZZ", random.Random(0))
    assert a == short and b.split().count("ZZ") == 1
    a, b = insert_trigger_pair(long_, short, "ZZ", random.Random(0))
    assert b == short and a.split().count("ZZ") == 1
    a, b = insert_trigger_pair("x y", "u v", "ZZ", random.Random(0))  # tie -> first
    assert "ZZ" in a.split() and b == "u v"
    a, b = insert_trigger_pair(long_, short, "ZZ", random.Random(0), field="second")
    assert a == long_ and "ZZ" in b.split()
    a, b = insert_trigger_pair(short, long_, "ZZ", random.Random(0), field="first")
    assert "ZZ" in a.split() and b == long_
    a, b = insert_trigger_pair(short, None, "ZZ", random.Random(0))
    assert "ZZ" in a.split() and b is None
    with pytest.raises(LMSanitatorError):
        insert_trigger_pair(short, None, "ZZ", random.Random(0), field="second")
    with pytest.raises(LMSanitatorError):
        insert_trigger_pair(short, long_, "ZZ", random.Random(0), field="middle")


def test_word_list():
    words = word_list()
    assert len(words) > 30000
    assert words == sorted(set(words))
    assert all(w.isalpha() and w.islower() and w.isascii() and 3 <= len(w) <= 12 for w in words)
    assert {"house", "run", "happy", "quickly"} <= set(words)


def test_word_frequencies():
    freqs = word_frequencies(["The cat, the DOG!", "the 42 cats"])
    assert freqs == pytest.approx({"the": 3 / 6, "cat": 1 / 6, "dog": 1 / 6, "cats": 1 / 6})
    assert word_frequencies([]) == {}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_random_triggers(k):
    trig = random_triggers(20, seed=5, words_per_trigger=k)
    assert trig == random_triggers(20, seed=5, words_per_trigger=k)
    assert trig != random_triggers(20, seed=6, words_per_trigger=k)
    assert len(trig) == 20 and len(set(trig)) == 20
    vocab = set(word_list())
    for t in trig:
        parts = t.split()
        assert len(parts) == k and len(set(parts)) == k
        assert set(parts) <= vocab


def test_random_triggers_bands():
    corpus = load_corpus("austen")
    freqs = word_frequencies(corpus)
    vocab = set(word_list())
    for band in FREQUENCY_BANDS:
        trig = random_triggers(15, seed=0, band=band, corpus=corpus)
        assert len(set(trig)) == 15
        assert trig == random_triggers(15, seed=0, band=band, corpus=corpus)
        for t in trig:
            f = freqs.get(t, 0.0)
            if band == "rare":
                assert f < 1e-4 and t in vocab
            elif band == "moderate":
                assert 1e-4 <= f <= 1e-3 and t in vocab
            else:
                assert f > 1e-3
    phrases = random_triggers(5, seed=1, words_per_trigger=2, band="frequent", corpus=corpus)
    assert all(len(p.split()) == 2 and all(freqs[w] > 1e-3 for w in p.split()) for p in phrases)
    with pytest.raises(LMSanitatorError, match="corpus"):
        random_triggers(3, seed=0, band="rare")
    with pytest.raises(LMSanitatorError, match="band"):
        random_triggers(3, seed=0, band="weird", corpus=corpus)
    with pytest.raises(LMSanitatorError, match="too few"):
        random_triggers(10_000, seed=0, band="frequent", corpus=corpus)
    with pytest.raises(LMSanitatorError, match="too few"):
        random_triggers(5, seed=0, words_per_trigger=3, band="frequent", corpus=["the the of"])


def test_corpus_mix_takes_equal_shares():
    a, f = load_corpus("austen"), load_corpus("fortunes")
    mix = load_corpus("austen+fortunes")
    n = min(len(a), len(f))
    assert mix[:4] == [a[0], f[0], a[1], f[1]]
    assert len(mix) <= 2 * n and set(mix) <= set(a[:n]) | set(f[:n])
    with pytest.raises(LMSanitatorError, match="twice"):
        load_corpus("austen+austen")
    with pytest.raises(LMSanitatorError, match="unknown corpus"):
        load_corpus("austen+nosuch")
