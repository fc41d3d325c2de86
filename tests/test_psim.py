import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from conftest import toy_examples
from lmsanitator.cli.main import main
from lmsanitator.core.config import option_choices, option_default
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.tasks import load_task
from lmsanitator.metrics.poisoning import REJECTED
from lmsanitator.models import load_encoder
from lmsanitator.psim import (
    PSIM,
    PSIMConfig,
    PSIMPipeline,
    PSIMWarning,
    budget,
    calibrate_gamma,
    confidence_stats,
    default_gamma,
    reset_labels,
    self_check,
)
from lmsanitator.psim.psim import HEAD_INITS


def test_default_gamma_rule():
    assert default_gamma(2) == pytest.approx(0.7)  # the paper's value for binary tasks
    assert default_gamma(3) == pytest.approx(0.6)
    assert default_gamma(6) == pytest.approx(0.5)
    assert all(1 / k < default_gamma(k) < 1 for k in range(2, 20))
    with pytest.raises(LMSanitatorError):
        default_gamma(1)


def test_calibrate_gamma_meets_the_false_rejection_rate():
    conf = np.linspace(0.5, 0.99, 100)
    for frr in (0.0, 0.01, 0.05, 0.2):
        g = calibrate_gamma(conf, frr)
        assert (conf > g).mean() <= frr + 1e-9
        assert (conf >= g).mean() > frr  # and it is the smallest such threshold
    with pytest.raises(LMSanitatorError):
        calibrate_gamma(conf, 1.0)
    with pytest.raises(LMSanitatorError):
        calibrate_gamma([], 0.1)


def test_reset_labels_uniform_over_all_classes_and_seeded():
    exs = toy_examples(3000, 0)
    a, b, c = reset_labels(exs, 3, 0), reset_labels(exs, 3, 0), reset_labels(exs, 3, 1)
    assert a == b and a != c
    counts = Counter(e.label for e in a)
    assert set(counts) == {0, 1, 2} and all(900 < n < 1100 for n in counts.values())
    assert [e.text for e in a] == [e.text for e in exs]
    agree = sum(x.label == y.label for x, y in zip(a, exs)) / len(exs)
    assert 0.28 < agree < 0.39  # independent of the true labels


def test_config_validation():
    with pytest.raises(LMSanitatorError, match="method: 'full' is not one of p-tuning, p-tuning-v2"):
        PSIMConfig(method="full")
    with pytest.raises(LMSanitatorError, match="head_init: 'zeros' is not one of auto, model, probe, random"):
        PSIMConfig(head_init="zeros")
    with pytest.raises(LMSanitatorError, match="gamma"):
        PSIMConfig(gamma=1.2)
    with pytest.raises(LMSanitatorError, match="probe steps"):
        PSIMConfig(probe_steps=-1)
    with pytest.raises(LMSanitatorError, match="train examples"):
        PSIMConfig(train_examples=0)
    with pytest.raises(LMSanitatorError, match="head lr"):
        PSIMConfig(head_lr=-1e-3)
    with pytest.raises(LMSanitatorError, match="false-rejection rate"):
        PSIMConfig(frr=1.0)
    assert PSIMConfig(train_examples=None).train_examples is None
    with pytest.raises(LMSanitatorError, match="unknown option"):
        PSIMConfig.from_dict({"gama": 0.5})


def test_config_defaults_help_and_changed():
    c = PSIMConfig()
    # issue 23: a step budget, gamma at 1% false rejections of clean validation inputs
    assert (c.method, c.head_init, c.head_lr, c.epochs, c.train_examples, c.frr, c.probe_steps, c.gamma) == (
        "lora",
        "auto",
        1e-3,
        1,
        1000,
        0.01,
        200,
        None,
    )
    frozen = PSIMConfig(head_lr=0)
    assert frozen.head_frozen and not c.head_frozen and not PSIMConfig(head_lr=None).head_frozen
    assert frozen.tune_config().head_lr > 0  # TuneConfig wants a rate; the frozen head gets none
    assert c.changed() == [] and PSIMConfig(head_init="probe", seed=3).changed() == ["head_init", "seed"]
    assert option_choices(PSIMConfig, "head_init") == list(HEAD_INITS) == ["auto", "model", "probe", "random"]
    assert option_default(PSIMConfig, "method") == "lora"
    assert all(PSIMConfig.help(f.name) for f in dataclasses.fields(PSIMConfig))
    assert PSIMConfig.from_dict(c.to_dict()) == c
    assert PSIM(c, seed=4).config.seed == 4
    assert not hasattr(PSIM(c), "model_")  # learned attributes appear only in fit
    with pytest.raises(LMSanitatorError, match="not fitted"):
        PSIM(c).confidence(["x"])


@pytest.fixture(scope="module")
def toy_task(toy_task_file):
    return load_task(str(toy_task_file))


@pytest.fixture(scope="module")
def fitted(tiny_bert_dir, toy_task, tmp_path_factory):
    enc = load_encoder(str(tiny_bert_dir))
    psim = PSIM(PSIMConfig(method="lora", epochs=1, seed=0)).fit(enc, toy_task)
    d = tmp_path_factory.mktemp("psim") / "m"
    d.mkdir()
    psim.save(d)
    return psim, d


def test_fit_save_load_detect(fitted, toy_task):
    psim, d = fitted
    info = json.loads((d / "psim.json").read_text())
    val = psim.val_confidence_
    # default rule: gamma flags at most 1% of the clean validation inputs (here 40: their maximum)
    assert info["gamma"] == pytest.approx(calibrate_gamma(val, 0.01)) == pytest.approx(val.max())
    assert info["gamma_rule"] == "calibrated: false-rejection rate 0.01 on 40 clean validation inputs"
    assert info["head_init"] == "probe" and info["num_labels"] == 2 and info["head_trained"] is True
    assert info["train_examples"] == info["train_examples_available"] == 160 and info["steps"] == 5
    assert info["config"]["method"] == "lora" and info["validation_confidence"]["n"] == len(
        toy_task.validation
    )
    assert set(info["validation_confidence"]) >= {"mean", "std", "median", "p99", "max"}
    assert info["validation_flag_rate"] == 0.0
    # the self-check: 40 validation inputs are too few for a 1% rate; and the tiny random encoder
    # trained on random labels is flat exactly when its clean p99 is within 0.05 of 1/2
    assert any("only 40 clean validation inputs" in w for w in info["warnings"])
    flat = info["validation_confidence"]["p99"] - 0.5 < 0.05
    assert any("learned nothing usable" in w for w in info["warnings"]) == flat
    assert len(info["warnings"]) == 1 + flat
    assert info["changed"] == []  # every option at its default (method, epochs and seed included)
    texts = [e.text for e in toy_task.test]
    loaded = PSIM.load(d)
    np.testing.assert_allclose(loaded.confidence(texts), psim.confidence(texts), atol=1e-5)
    recs = loaded.detect(texts[:5])
    assert all(set(r) >= {"flagged", "confidence"} for r in recs)
    assert all(r["flagged"] == (r["confidence"] > info["gamma"]) for r in recs)
    assert all(0.5 <= r["confidence"] <= 1.0 for r in recs)


def test_pipeline_rejects_flagged_inputs(fitted, toy_task):
    psim, _ = fitted
    texts = [e.text for e in toy_task.test[:8]]
    victim = psim.model_  # any tuned model with the same labels stands in for the user's own
    assert PSIMPipeline(psim, victim, gamma=0.0).predict_labels(texts) == [REJECTED] * 8
    assert PSIMPipeline(psim, victim, gamma=0.999999).predict_labels(texts) == victim.predict_labels(texts)


def test_budget_caps_the_training_examples_seeded():
    exs = toy_examples(300, 0)
    a, b, c = budget(exs, 100, 0), budget(exs, 100, 0), budget(exs, 100, 1)
    assert len(a) == 100 and a == b and a != c and all(e in exs for e in a)
    assert budget(exs, None, 0) == exs and budget(exs, 500, 0) == exs


def test_self_check_rules():
    flat = confidence_stats(np.full(300, 0.505))
    assert set(flat) == {"mean", "std", "min", "median", "p90", "p99", "max", "n"} and flat["std"] == 0.0
    assert "nothing usable" in self_check(flat, 0.505, 2, 0.01)[0]
    spread = confidence_stats(np.linspace(0.5, 0.8, 300))
    assert self_check(spread, 0.797, 2, 0.01) == []
    assert self_check(spread, 0.34, 3, 0.01) == []  # 1/K is 1/3 for K = 3: 0.34 alone is not flat
    assert "stays confident" in self_check(confidence_stats(np.full(300, 0.999)), 0.999, 2, 0.01)[0]
    assert (
        "only 50 clean validation inputs"
        in self_check(confidence_stats(spread_50 := np.linspace(0.5, 0.8, 50)), 0.8, 2, 0.01)[0]
    )
    assert self_check(confidence_stats(spread_50), 0.8, 2, None) == []  # a given gamma: no rate to meet
    assert "no clean validation inputs" in self_check(confidence_stats(np.zeros(0)), 0.7, 2, None)[0]


def _zero_head(monkeypatch):
    """Start every PSIM head at zero: all logits 0, every confidence exactly 1/K (a flat module)."""
    init = PSIM._init_head

    def zero(self, model, task, encoder):
        how = init(self, model, task, encoder)
        for p in model.head.parameters():
            p.data.zero_()
        return how

    monkeypatch.setattr(PSIM, "_init_head", zero)


def test_fit_warns_when_psim_learned_nothing(tiny_bert_dir, toy_task, tmp_path, monkeypatch):
    _zero_head(monkeypatch)
    enc = load_encoder(str(tiny_bert_dir))
    with pytest.warns(PSIMWarning, match="learned nothing usable") as rec:
        psim = PSIM(PSIMConfig(train_examples=64, frr=0.0, head_lr=0)).fit(enc, toy_task)
    assert len(rec) == 1  # frr 0: 40 validation inputs suffice, the flat module is the one finding
    assert psim.info_["train_examples"] == 64 and psim.info_["steps"] == 2
    assert psim.model_.head.weight.abs().max() == 0  # the frozen head did not move
    np.testing.assert_allclose(psim.val_confidence_, 0.5, atol=1e-6)
    psim.save(tmp_path / "p")
    info = json.loads((tmp_path / "p" / "psim.json").read_text())
    assert info["validation_confidence"]["max"] == pytest.approx(0.5) and info["gamma"] == pytest.approx(0.5)
    assert len(info["warnings"]) == 1 and "learned nothing usable" in info["warnings"][0]
    # a trainable head moves away from zero
    with pytest.warns(PSIMWarning):
        moved = PSIM(PSIMConfig(train_examples=64, head_lr=1e-2)).fit(enc, toy_task)
    assert moved.info_["head_trained"] and moved.model_.head.weight.abs().max() > 0


def test_calibrate_reruns_the_self_check(fitted, toy_task):
    _, d = fitted
    psim = PSIM.load(d)
    for p in psim.model_.head.parameters():
        p.data.zero_()
    with pytest.warns(PSIMWarning, match="learned nothing usable"):
        g = psim.calibrate([e.text for e in toy_task.test], frr=0.0)
    assert g == pytest.approx(0.5) and psim.info_["validation_confidence"]["n"] == len(toy_task.test)
    assert psim.info_["gamma_rule"].startswith("calibrated") and len(psim.info_["warnings"]) == 1


def test_cli_train_detect_evaluate(tmp_path, tiny_bert_dir, toy_task_file, capsys):
    d, victim = tmp_path / "psim", tmp_path / "victim"
    assert (
        main(
            [
                "psim",
                "train",
                "--model",
                str(tiny_bert_dir),
                "--task",
                str(toy_task_file),
                "--out",
                str(d),
                "--method",
                "prompt-tuning",
                "--calibrate-frr",
                "0.1",
                "--no-progress",
            ]
        )
        == 0
    )
    info = json.loads((d / "psim.json").read_text())
    assert info["gamma_rule"].startswith("calibrated")
    assert (
        info["changed"] == ["method", "frr"]
        and info["config"]["frr"] == 0.1
        and info["config"]["method"] == "prompt-tuning"
    )
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": e.text}) + "\n" for e in toy_examples(12, 9)))
    out = tmp_path / "out.jsonl"
    assert (
        main(
            ["psim", "detect", "--psim", str(d), "--input", str(inp), "--output", str(out), "--gamma", "0.5"]
        )
        == 0
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 12 and all(r["flagged"] == (r["confidence"] > 0.5) for r in rows)
    assert (
        main(
            [
                "tune",
                "lora",
                "--model",
                str(tiny_bert_dir),
                "--task",
                str(toy_task_file),
                "--out",
                str(victim),
                "--epochs",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    attack = tmp_path / "attack.json"
    attack.write_text(
        json.dumps({"attack": "badnet", "triggers": ["mn"], "target_label": 1, "insertion": "random"})
    )
    res_file = tmp_path / "res.json"
    assert (
        main(
            [
                "evaluate",
                "psim",
                "--psim",
                str(d),
                "--adapter",
                str(victim),
                "--task",
                str(toy_task_file),
                "--attack-json",
                str(attack),
                "--gamma",
                "0.01",
                "--out",
                str(res_file),
            ]
        )
        == 0
    )
    res = json.loads(res_file.read_text())
    r = res["results"][0]
    assert res["flagged_clean"] == 1.0 and r["after"]["clean_accuracy"] == 0.0 and r["after"]["asr"] == 0.0
    assert r["before"]["n_poisoned"] == 30 and 0.0 <= r["before"]["asr"] <= 1.0


def test_cli_bad_input_exit_2(tmp_path, tiny_bert_dir, toy_task_file, capsys):
    out = tmp_path / "p"
    assert (
        main(
            [
                "psim",
                "train",
                "--model",
                str(tiny_bert_dir),
                "--task",
                str(toy_task_file),
                "--out",
                str(out),
                "--gamma",
                "1.5",
            ]
        )
        == 2
    )
    assert (
        main(["psim", "train", "--model", str(tiny_bert_dir), "--task", "no-such-task", "--out", str(out)])
        == 2
    )
    assert not out.exists()
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "fine"}\n')
    o = tmp_path / "o.jsonl"
    assert main(["psim", "detect", "--psim", str(tmp_path), "--input", str(inp), "--output", str(o)]) == 2
    assert not o.exists()
    err = capsys.readouterr().err
    assert "gamma" in err and "not a PSIM folder" in err and err.count("\n") == 3
