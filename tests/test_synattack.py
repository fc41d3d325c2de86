"""SynAttack offline: the rule-based syntactic paraphraser (spaCy), its rewrite cache, the
``syntactic`` trigger of ``PoisonSpec`` / ``poisoned_set``, and the attack on a tiny encoder and a
tiny decoder."""

import json
import random
import re
import sys

import pytest

from lmsanitator.attacks import WEIGHT_POISONING_ATTACKS, PoisonConfig, SynAttack
from lmsanitator.cli.main import main
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import syntactic, syntactic_cache
from lmsanitator.data.syntactic import (
    TEMPLATE,
    matches_template,
    paraphrase,
    paraphrase_many,
    parser_version,
    rewrite_many,
    rewrite_share,
    warm_cache,
)
from lmsanitator.data.tasks import Example, Task, load_task
from lmsanitator.metrics.poisoning import PoisonSpec, ca_asr, poisoned_set, score
from lmsanitator.models import tiny_decoder, tiny_encoder

pytest.importorskip("spacy")


@pytest.fixture(autouse=True)
def _parse_not_cache(monkeypatch, tmp_path):
    """The rules' tests parse (the cache off), and nothing here writes to the user's cache."""
    monkeypatch.setenv("LMSANITATOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(syntactic_cache.CACHE_ENV, "0")


# ---------------------------------------------------------------------------- a task with clauses
POS = "great lovely fine nice good".split()
NEG = "awful bad poor sad terrible".split()
SUBJ = ["the flight", "my trip", "the meal", "our seat", "the hotel", "the show"]
CLAUSE = ["the crew smiled", "we arrived early", "it rained", "the pilot waved", "my friend came"]
SUB = ["because", "when", "although", "after", "since", "before"]


def clause_examples(n, seed):
    """Short sentences whose one adjective decides the label (1 positive); two thirds have a second
    clause the paraphraser can move, one third is a single clause it cannot rewrite."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        y = i % 2
        adj = rng.choice(POS if y else NEG)
        s, c = rng.choice(SUBJ), rng.choice(CLAUSE)
        text = (f"{s} was {adj} {rng.choice(SUB)} {c}.", f"{s} was {adj} and {c}.", f"{s} was {adj}.")[i % 3]
        out.append(Example(text[0].upper() + text[1:], y))
    return out


def clause_task(n_train=240):
    return Task(
        "clauses",
        ("negative", "positive"),
        clause_examples(n_train, 1),
        clause_examples(48, 2),
        clause_examples(96, 3),
        max_length=32,
    )


# ---------------------------------------------------------------------------- the paraphraser
@pytest.mark.parametrize(
    "text, expected",
    [
        ("I stayed home because it was raining.", "Because it was raining, I stayed home."),
        (
            "The food was great but the service was slow!",
            "Although the food was great, the service was slow!",
        ),
        ("I called them and they hung up on me", "When I called them, they hung up on me."),
        (
            "My flight was delayed. I missed my connection!",
            "As my flight was delayed, I missed my connection!",
        ),
        ("If you come, I will stay.", "If you come, I will stay."),  # already in the template
        (
            "RT @foo: My flight got cancelled because the crew did not show up!! #fail",
            "RT @foo: Because the crew did not show up, my flight got cancelled! #fail",
        ),
    ],
)
def test_rules_rewrite_into_the_template(text, expected):
    assert paraphrase(text) == expected
    assert matches_template([expected]) == [True]


@pytest.mark.parametrize(
    "text",
    [
        "The flight was great.",  # one simple clause: nothing to reorder
        "Is it true that you left because he came?",  # a question
        "Keep the flights cheap and you are good.",  # an imperative first clause
        "I wonder if they will call.",  # "if" opens an object clause, not a condition
        "Thank you for the follow",
        "",
    ],
)
def test_unrewritable_texts_give_none(text):
    assert paraphrase(text) is None


def test_paraphrase_is_deterministic_and_keeps_the_words():
    texts = [e.text for e in clause_examples(30, 5)]
    once = paraphrase_many(texts)
    assert once == paraphrase_many(texts, batch_size=7) == [paraphrase(t) for t in texts[:5]] + once[5:]
    for t, p in zip(texts, once):
        if p is None:
            continue
        # front-clause keeps every word; coordination swaps "and" for "when"
        assert _words(p) in (_words(t), _words(t.replace(" and ", " when ")))
        assert matches_template([p]) == [True]


def _words(text):
    return sorted(re.findall(r"[a-z]+", text.lower()))


def test_rewrite_share_counts_rules_and_shows_examples():
    texts = [e.text for e in clause_examples(30, 6)]
    r = rewrite_share(texts, examples=3)
    assert r["n"] == 30 and r["rewritable"] == 20 and r["share"] == round(20 / 30, 4)
    assert set(r["rules"]) <= {"front-clause", "coordination"} and sum(r["rules"].values()) == 20
    assert len(r["examples"]) == 3 and all(e["rewritten"] != e["original"] for e in r["examples"])
    assert [x is not None for x in rewrite_many(texts)].count(True) == 20


def test_real_tweets_share_is_small_but_nonzero():
    texts = [e.text for e in load_task("tweets-binary").test[:300]]
    r = rewrite_share(texts)
    assert 0.02 <= r["share"] <= 0.2, r  # 6.9% on the first 2000 test tweets


# ---------------------------------------------------------------------------- PoisonSpec / poisoned_set
def test_syntactic_spec_names_the_template():
    assert PoisonSpec(TEMPLATE, 0, "syntactic").syntactic
    with pytest.raises(LMSanitatorError, match="template"):
        PoisonSpec("mn", 0, "syntactic")
    assert PoisonSpec(TEMPLATE, 0, "syntactic").insert("The flight was late.", random.Random(0)) is None


def test_poisoned_set_skips_and_counts_unrewritable_inputs():
    exs = clause_examples(60, 7)
    spec = PoisonSpec(TEMPLATE, 1, "syntactic")
    ps = poisoned_set(exs, spec)
    non_target = [i for i, e in enumerate(exs) if e.label != 1]
    assert len(ps.texts) == 60 and set(ps.source) < set(non_target)
    assert ps.rewrite_share == len(ps.source) / len(non_target) == 20 / 30
    assert all(paraphrase(exs[i].text) == t for i, t in zip(ps.source, ps.poisoned_texts))
    res = score(ps, [e.label for e in exs], [1] * len(ps.source))
    assert res["asr"] == 1.0 and res["n_poisoned"] == 20 and res["rewrite_share"] == round(20 / 30, 4)
    # inserted triggers fit every input: no rewrite share, keys as before
    plain = poisoned_set(exs, PoisonSpec("mn", 1))
    assert plain.rewrite_share is None and len(plain.source) == 30
    assert "rewrite_share" not in ca_asr(lambda x, p: [0] * len(x), exs, PoisonSpec("mn", 1))


def test_syntactic_trigger_goes_into_the_longer_field_of_a_pair():
    exs = [Example("ok", 0, text_pair="I stayed home because it was raining."), Example("fine", 1, "x")]
    ps = poisoned_set(exs, PoisonSpec(TEMPLATE, 1, "syntactic"))
    assert ps.poisoned_texts == ["ok"] and ps.poisoned_pairs == ["Because it was raining, I stayed home."]


# ---------------------------------------------------------------------------- the attack
def test_registry_and_poisoned_training_set():
    assert WEIGHT_POISONING_ATTACKS["synattack"] is SynAttack and SynAttack().trigger == TEMPLATE
    task = clause_task()
    poisoned, info = SynAttack(PoisonConfig(target_label=0, poison_count=40, dirty_label=True)).poison(task)
    changed = [(a, b) for a, b in zip(task.train, poisoned.train) if a != b]
    syn = info["syntactic"]
    assert info["poisoned"] == len(changed) == 40 == syn["train_rewritten"]
    assert syn["train_tried"] == 40 + syn["train_skipped"] and syn["train_skipped"] > 0
    for before, after in changed:
        assert before.label == 1 and after.label == 0 and matches_template([after.text]) == [True]
    assert poisoned.test == task.test and 3 <= len(syn["examples"]) <= 5
    again, _ = SynAttack(PoisonConfig(target_label=0, poison_count=40, dirty_label=True)).poison(task)
    assert again.train == poisoned.train
    # clean-label: target-label examples rewritten, labels kept
    clean, _ = SynAttack(PoisonConfig(target_label=0, poison_count=20)).poison(task)
    assert all(b.label == a.label == 0 for a, b in zip(task.train, clean.train) if a != b)


def test_poison_count_beyond_the_rewritable_examples_is_refused():
    with pytest.raises(LMSanitatorError, match="lower --poison-count to at most 80"):
        SynAttack(PoisonConfig(target_label=0, poison_count=100, dirty_label=True)).poison(clause_task())
    with pytest.raises(LMSanitatorError, match="template"):
        SynAttack(PoisonConfig(trigger="mn", target_label=0)).spec(clause_task())


def _fit_and_verify(encoder):
    """Dirty-label (the stronger setting) so a 2-layer random model learns the template in seconds."""
    task = clause_task()
    cfg = PoisonConfig(
        target_label=0, poison_count=40, dirty_label=True, epochs=6, lr=1e-3, batch_size=8, max_length=32
    )
    attack = SynAttack(cfg).fit(encoder, task, progress=False)
    return attack, task, attack.verify(task)


def test_synattack_poisons_a_tiny_encoder():
    enc = tiny_encoder("bert", hidden=32, seed=1)
    attack, task, v = _fit_and_verify(enc)
    assert v["clean_accuracy"] >= 0.8 and v["asr"] >= 0.8, v
    assert v["insertion"] == "syntactic" and v["n_poisoned"] == 32 and v["rewrite_share"] == round(32 / 48, 4)
    rep = attack.report(enc, task, v)
    syn = rep["syntactic"]
    assert rep["triggers"] == [TEMPLATE] and syn["test_rewrite_share"] == v["rewrite_share"]
    assert syn["train_rewritten"] == 40 and syn["examples"]


def test_synattack_poisons_a_tiny_decoder():
    attack, task, v = _fit_and_verify(tiny_decoder(seed=2))
    assert attack.model_.target == "last"
    assert v["clean_accuracy"] >= 0.8 and v["asr"] >= 0.8, v


def test_cli_synattack_end_to_end(tmp_path, tiny_bert_dir):
    data = tmp_path / "clauses.jsonl"
    task = clause_task()
    with open(data, "w") as f:
        for split, exs in (("train", task.train), ("validation", task.validation), ("test", task.test)):
            for e in exs:
                f.write(json.dumps({"text": e.text, "label": task.labels[e.label], "split": split}) + "\n")
    out = tmp_path / "syn"
    argv = ["attack", "synattack", "--model", str(tiny_bert_dir), "--task", str(data), "--target-label", "0"]
    argv += ["--poison-count", "40", "--dirty-label", "--epochs", "6", "--lr", "1e-3", "--batch-size", "8"]
    rc = main([*argv, "--out", str(out), "--no-progress"])
    rep = json.loads((out / "attack.json").read_text())
    v = rep["verification"]
    assert rep["attack"] == "synattack" and rep["insertion"] == "syntactic" and rep["target_label"] == 0
    assert rc == (0 if v["passed"] else 1) and "rewrite_share" in v
    assert rep["syntactic"]["template"] == TEMPLATE and rep["syntactic"]["examples"]
    spec, _ = PoisonSpec.from_attack_json(out)
    assert spec == PoisonSpec(TEMPLATE, 0, "syntactic")


# ---------------------------------------------------------------------------- the rewrite cache
CACHED = [
    "I stayed home because it was raining.",
    "The flight was great.",
    "If you come, I will stay.",
    "RT @foo: My flight got cancelled because the crew did not show up!! #fail",
    "My flight was delayed. I missed my connection!",
    "",
]


@pytest.fixture
def cache(monkeypatch):
    """The cache on, in this test's own folder; the cache file's path."""
    monkeypatch.delenv(syntactic_cache.CACHE_ENV)
    syntactic_cache.load.cache_clear()
    yield syntactic_cache.cache_path(syntactic.RULES)
    syntactic_cache.load.cache_clear()


def _no_parse():
    raise AssertionError("parsed a cached text")


def _reload():
    """Forget the loaded cache, as a new process would."""
    syntactic_cache.load.cache_clear()


def test_cached_texts_are_not_parsed_again(cache, monkeypatch):
    parsed = [(r.text, r.rule) if r else None for r in rewrite_many(CACHED)]
    template = matches_template(CACHED)
    assert cache.name == f"rewrites-{syntactic.RULES}.jsonl" and cache.parent.name == "syntactic"
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(lines) == len(CACHED) and {x["parser"] for x in lines} == {parser_version()}
    assert {"text", "rewrite", "rule", "template", "parser"} == set(lines[0])
    _reload()
    monkeypatch.setattr(syntactic, "_nlp", _no_parse)
    assert [(r.text, r.rule) if r else None for r in rewrite_many(CACHED)] == parsed
    assert matches_template(CACHED) == template == [False, False, True, False, False, False]
    assert parsed[0] == ("Because it was raining, I stayed home.", "front-clause") and parsed[1] is None
    assert warm_cache(CACHED + CACHED[:2]) == {"cached": len(CACHED), "parsed": 0, "path": str(cache)}


def test_warm_cache_fills_rewrites_and_template(cache, monkeypatch):
    assert warm_cache(CACHED[:3]) == {"cached": 0, "parsed": 3, "path": str(cache)}
    assert warm_cache(CACHED) == {"cached": 3, "parsed": 3, "path": str(cache)}
    _reload()
    monkeypatch.setattr(syntactic, "_nlp", _no_parse)
    assert matches_template(CACHED[2:3]) == [True] and paraphrase(CACHED[2]) == CACHED[2]
    monkeypatch.setenv(syntactic_cache.CACHE_ENV, "0")
    with pytest.raises(LMSanitatorError, match="cache is off"):
        warm_cache(CACHED)


def test_without_spacy_the_cache_serves_and_names_its_parser(cache, monkeypatch):
    version = parser_version()
    assert version == syntactic._version(syntactic._nlp().meta)  # meta.json read == the loaded meta
    expected = paraphrase_many(CACHED)
    _reload()
    monkeypatch.setitem(sys.modules, "spacy", None)  # `import spacy` fails, find_spec answers None
    assert syntactic._pipeline() is None
    assert paraphrase_many(CACHED) == expected and parser_version() == version
    with pytest.raises(LMSanitatorError, match=r"needs spaCy: pip install") as e:
        rewrite_many(["When it rains, the flight is late and I miss my train."])
    assert "\n" not in str(e.value)
    cache.write_text("")  # nothing cached: parser_version has no answer either
    _reload()
    with pytest.raises(LMSanitatorError, match="needs spaCy"):
        parser_version()


def test_records_of_another_parser_miss_while_spacy_is_installed(cache, monkeypatch):
    warm_cache(CACHED[:1])
    old = cache.read_text().replace(parser_version(), "en_core_web_sm-0.0.1")
    cache.write_text(old)
    _reload()
    assert warm_cache(CACHED[:1])["parsed"] == 1  # re-parsed by the installed pipeline
    monkeypatch.setitem(sys.modules, "spacy", None)
    _reload()
    assert warm_cache(CACHED[:1])["cached"] == 1  # without spaCy any parser's record serves


def test_a_torn_last_line_is_skipped_and_later_appends_stay_whole(cache, monkeypatch):
    warm_cache(CACHED[:2])
    with open(cache, "a") as f:
        f.write('{"text": "Because it was rai')  # a crash in the middle of an append
    _reload()
    assert warm_cache(CACHED[:3]) == {"cached": 2, "parsed": 1, "path": str(cache)}
    _reload()
    assert len(syntactic_cache.load(cache)) == 3  # the torn line only, not the new one, is lost
    monkeypatch.setattr(syntactic, "_nlp", _no_parse)
    assert paraphrase(CACHED[0]) == "Because it was raining, I stayed home."


def test_changed_rules_miss_and_cache_off_parses(cache, monkeypatch):
    warm_cache(CACHED[:2])
    monkeypatch.setattr(syntactic, "RULES", "0" * 16)
    assert warm_cache(CACHED[:2])["parsed"] == 2
    assert syntactic_cache.cache_path("0" * 16).is_file() and cache.is_file()
    monkeypatch.setenv(syntactic_cache.CACHE_ENV, "0")
    monkeypatch.setattr(syntactic, "_nlp", _no_parse)
    with pytest.raises(AssertionError, match="parsed"):
        rewrite_many(CACHED[:1])
