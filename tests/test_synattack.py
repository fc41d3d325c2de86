"""SynAttack offline: the rule-based syntactic paraphraser (spaCy), the ``syntactic`` trigger of
``PoisonSpec`` / ``poisoned_set``, and the attack on a tiny encoder and a tiny decoder."""

import json
import random
import re

import pytest

from lmsanitator.attacks import WEIGHT_POISONING_ATTACKS, PoisonConfig, SynAttack
from lmsanitator.cli.main import main
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.syntactic import (
    TEMPLATE,
    matches_template,
    paraphrase,
    paraphrase_many,
    rewrite_many,
    rewrite_share,
)
from lmsanitator.data.tasks import Example, Task, load_task
from lmsanitator.metrics.poisoning import PoisonSpec, ca_asr, poisoned_set, score
from lmsanitator.models import tiny_decoder, tiny_encoder

pytest.importorskip("spacy")

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
