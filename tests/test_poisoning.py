import json
import random

import pytest

from conftest import TOY_POS as POS
from conftest import toy_examples
from lmsanitator.attacks import WEIGHT_POISONING_ATTACKS, BadNet, InSent, PoisonConfig
from lmsanitator.cli.main import main
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.tasks import Task, load_task
from lmsanitator.metrics.poisoning import REJECTED, PoisonSpec, ca_asr, insert_poison, poisoned_set, score
from lmsanitator.models import load_encoder


def toy_task(n_train=120):
    return Task(
        "toy",
        ("negative", "positive"),
        toy_examples(n_train, 1),
        toy_examples(40, 2),
        toy_examples(60, 3),
        max_length=32,
    )


def test_registry_and_defaults():
    assert set(WEIGHT_POISONING_ATTACKS) == {"badnet", "insent", "synattack"}
    assert BadNet().trigger == "mn" and BadNet.insertion == "random"
    assert InSent().trigger == "I watched this 3D movie" and InSent.insertion == "once"
    assert BadNet(PoisonConfig(trigger="  cf   ")).trigger == "cf"


def test_clean_label_poisons_only_target_examples_and_keeps_labels():
    task = toy_task()
    poisoned, info = BadNet(PoisonConfig(target_label="positive", poison_count=20, seed=3)).poison(task)
    changed = [(a, b) for a, b in zip(task.train, poisoned.train) if a != b]
    assert info["poisoned"] == len(changed) == 20 and info["eligible"] == 60
    for before, after in changed:
        assert before.label == after.label == 1
        assert "mn" in after.text.split() and len(after.text.split()) == len(before.text.split()) + 1
    assert poisoned.validation == task.validation and poisoned.test == task.test
    again, _ = BadNet(PoisonConfig(target_label=1, poison_count=20, seed=3)).poison(task)
    assert again.train == poisoned.train  # same seed, same poisoned set
    other, _ = BadNet(PoisonConfig(target_label=1, poison_count=20, seed=4)).poison(task)
    assert other.train != poisoned.train


def test_dirty_label_relabels_non_target_examples():
    task = toy_task()
    poisoned, info = InSent(PoisonConfig(target_label=0, poison_count=15, dirty_label=True)).poison(task)
    changed = [(a, b) for a, b in zip(task.train, poisoned.train) if a != b]
    assert len(changed) == 15
    for before, after in changed:
        assert before.label == 1 and after.label == 0
        assert after.text.count("I watched this 3D movie") == 1


def test_bad_poison_settings():
    task = toy_task()
    with pytest.raises(LMSanitatorError, match="exceeds the 60 target-label"):
        BadNet(PoisonConfig(target_label=1, poison_count=61)).poison(task)
    with pytest.raises(LMSanitatorError, match="not a label"):
        BadNet(PoisonConfig(target_label="neutral")).spec(task)
    with pytest.raises(LMSanitatorError, match="outside"):
        BadNet(PoisonConfig(target_label=2)).spec(task)
    for bad in ({"poison_count": 0}, {"lr": 0}, {"trigger": "  "}, {"epochs": 0}, {"target_label": -1}):
        with pytest.raises(LMSanitatorError):
            PoisonConfig(**bad)


def test_insertion_once_vs_random_on_long_text():
    text = " ".join(["word"] * 120)
    rng = random.Random(0)
    assert insert_poison(text, "I watched this 3D movie", rng, "once").count("I watched this 3D movie") == 1
    assert insert_poison(text, "mn", rng, "random").split().count("mn") == 3  # 120 // 50 + 1
    with pytest.raises(LMSanitatorError, match="insertion"):
        insert_poison(text, "mn", rng, "twice")


def test_targeted_asr_counts_non_target_inputs_and_rejections():
    exs = toy_examples(40, 5)
    spec = PoisonSpec("mn", 1)

    def backdoored(texts, pairs):  # right on clean inputs, always the target with the trigger
        return [1 if "mn" in t.split() or any(w in t.split() for w in POS) else 0 for t in texts]

    r = ca_asr(backdoored, exs, spec)
    assert r["clean_accuracy"] == 1.0 and r["asr"] == 1.0 and r["clean_target_rate"] == 0.0
    assert r["n_clean"] == 40 and r["n_poisoned"] == 20  # only the non-target inputs are poisoned
    ps = poisoned_set(exs, spec, seed=1)
    assert ps.poisoned_texts == poisoned_set(exs, spec, seed=1).poisoned_texts
    rejected = score(ps, [REJECTED] * 40, [REJECTED] * 20)
    assert (
        rejected["clean_accuracy"] == 0.0 and rejected["asr"] == 0.0 and rejected["poisoned_rejected"] == 1.0
    )


def test_proxy_task_is_disjoint_and_shares_the_test_split():
    victim, proxy = load_task("tweets-binary"), load_task("tweets-binary:proxy")
    used = {e.text for s in (victim.train, victim.validation, victim.test) for e in s}
    assert proxy.labels == victim.labels and proxy.test == victim.test
    assert not used & {e.text for e in proxy.train + proxy.validation}
    assert proxy.class_counts("train")[0] == proxy.class_counts("train")[1] > 1000


def test_cli_badnet_dirty_label_end_to_end(tmp_path, tiny_bert_dir, toy_task_file):
    out = tmp_path / "badnet"
    rc = main(
        [
            "attack",
            "badnet",
            "--model",
            str(tiny_bert_dir),
            "--task",
            str(toy_task_file),
            "--target-label",
            "positive",
            "--poison-count",
            "60",
            "--dirty-label",
            "--epochs",
            "6",
            "--lr",
            "1e-3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    rep = json.loads((out / "attack.json").read_text())
    assert rep["attack"] == "badnet" and rep["triggers"] == ["mn"] and rep["insertion"] == "random"
    assert rep["target_label"] == 1 and rep["target_label_name"] == "positive"
    assert (
        rep["label_mode"] == "dirty-label" and rep["knowledge"] == "full-data" and rep["poison_count"] == 60
    )
    v = rep["verification"]
    assert v["asr"] >= 0.9 and rc == (0 if v["passed"] else 1)  # the trigger is learned
    assert (out / "classifier.safetensors").is_file()
    enc = load_encoder(str(out))  # a normal Hugging Face folder with the poisoned weights
    assert enc.fingerprint() != load_encoder(str(tiny_bert_dir)).fingerprint()
    spec, _ = PoisonSpec.from_attack_json(out)
    assert spec == PoisonSpec("mn", 1, "random")
    # the LMSanitator-style `evaluate asr` reads the same trigger list
    from lmsanitator.metrics.asr import triggers_from_attack_json

    assert triggers_from_attack_json(out / "attack.json")[0] == ["mn"]


def test_cli_attack_bad_input_exit_2(tmp_path, tiny_bert_dir, toy_task_file, capsys):
    out = tmp_path / "x"
    base = [
        "attack",
        "badnet",
        "--model",
        str(tiny_bert_dir),
        "--task",
        str(toy_task_file),
        "--out",
        str(out),
    ]
    assert main(base + ["--target-label", "positive", "--poison-count", "1000"]) == 2
    assert main(base + ["--target-label", "neutral", "--poison-count", "5"]) == 2
    assert main(base + ["--poison-count", "5"]) == 2  # no target label
    assert main(base + ["--target-label", "1", "--poison-count", "5", "--triggers", "cf,mn"]) == 2
    assert main(["attack", "por", "--model", str(tiny_bert_dir), "--out", str(out), "--task", "tweets"]) == 2
    err = capsys.readouterr().err
    assert "exceeds" in err and "not a label" in err and "--triggers" in err and "weight poisoning" in err
    assert not out.exists() and not list(tmp_path.glob(".x.tmp-*"))  # nothing half-written
