import copy
import json
import math
import random
import typing

import pytest
import torch

from lmsanitator.attacks import (
    POR,
    TASK_AGNOSTIC_ATTACKS,
    AttackConfig,
    make_pvs,
    por2_pvs,
    random_pvs,
)
from lmsanitator.attacks.config import PVScheme
from lmsanitator.cli.main import main
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import load_corpus, split_corpus
from lmsanitator.data.pvs import PV_SCHEMES
from lmsanitator.metrics import batch_entropy, sign_match, wasserstein_1d
from lmsanitator.models import tiny_encoder


def test_por2_pvs_are_the_six_quarter_patterns():
    pvs = por2_pvs(384)
    assert pvs.shape == (6, 384)
    q = 96
    seen = set()
    for v in pvs:
        quarters = [v[k * q : (k + 1) * q] for k in range(4)]
        for part in quarters:  # each quarter is constant
            assert torch.all(part == part[0])
        signs = tuple(int(part[0]) for part in quarters)
        assert sorted(signs) == [-1, -1, 1, 1]
        seen.add(signs)
    assert len(seen) == 6
    with pytest.raises(LMSanitatorError, match="divisible by 4"):
        por2_pvs(30)
    with pytest.raises(LMSanitatorError, match="6 PVs"):
        make_pvs("por2", 7, 32, 0)


def test_random_pvs_deterministic_signs():
    a, b, c = random_pvs(4, 64, 1), random_pvs(4, 64, 1), random_pvs(4, 64, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {-1.0, 1.0}


def test_sign_match():
    pv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    f = torch.tensor([[0.3, -2.0, 0.0, 5.0], [-1.0, 1.0, -1.0, 1.0]])
    m = sign_match(f, pv)
    assert m[:, 0].tolist() == [0.75, 0.0]  # 0.0 counts as +, like the authors' binarisation


def test_batch_entropy_and_wasserstein():
    same = torch.randn(1, 16).repeat(8, 1)
    assert math.isclose(float(batch_entropy(same)), math.log(8), rel_tol=1e-5)
    spread = torch.eye(8, 16) * 50
    assert float(batch_entropy(spread)) < math.log(8) - 0.5
    x = torch.randn(4, 16)
    assert float(wasserstein_1d(x, x[:, torch.randperm(16)])) < 1e-6  # permutation-invariant
    assert float(wasserstein_1d(x, x + 1)) > 0.1


def test_config_validation():
    with pytest.raises(LMSanitatorError, match="either triggers or random_triggers"):
        AttackConfig(triggers=["cf"], random_triggers=2)
    with pytest.raises(LMSanitatorError, match="duplicate"):
        AttackConfig(triggers=["cf", "cf"])
    with pytest.raises(LMSanitatorError, match="even"):
        AttackConfig(batch_size=7)
    with pytest.raises(LMSanitatorError, match="pv_scheme"):
        AttackConfig(pv_scheme="por9")
    with pytest.raises(LMSanitatorError, match="trigger_band"):
        AttackConfig(trigger_band="common")
    assert AttackConfig(triggers=[" cf", "mn ", " "]).triggers == ["cf", "mn"]
    assert set(typing.get_args(PVScheme)) == set(PV_SCHEMES)  # the Literal follows make_pvs


def test_open_options_resolve_in_one_place_and_the_report_says_what_was_chosen():
    """None options take the attack's defaults (utility weight by architecture and MLM head);
    attack.json keeps those values and lists the options set away from their defaults."""
    bert, roberta = tiny_encoder("bert"), tiny_encoder("roberta")
    bert_mlm = tiny_encoder("bert", mlm_head=True)
    s = POR(AttackConfig()).resolve(bert)
    assert (s.per_trigger, s.epochs, s.lr, s.utility_weight) == (800, 1, 1e-4, 0.5)
    assert POR(AttackConfig()).resolve(roberta).utility_weight == 1.0  # not BERT-like
    assert TASK_AGNOSTIC_ATTACKS["neuba"](AttackConfig()).resolve(bert_mlm).utility_weight == 0.0
    assert TASK_AGNOSTIC_ATTACKS["btop"](AttackConfig()).resolve(bert).utility_weight == 0.5
    s = POR(AttackConfig(epochs=3, utility_weight=2.0)).resolve(bert)
    assert (s.per_trigger, s.epochs, s.utility_weight) == (800, 3, 2.0)
    assert AttackConfig(epochs=3, seed=0, utility_weight=2.0).changed() == ["epochs", "utility_weight"]
    assert POR(AttackConfig(), epochs=2).config.epochs == 2  # keyword overrides are validated too
    with pytest.raises(LMSanitatorError, match="even"):
        POR(AttackConfig(), batch_size=3)


def test_learned_state_exists_only_after_fit(sentences):
    atk = POR(AttackConfig(triggers=["cf"], per_trigger=16, epochs=1, batch_size=16, verify_sentences=10))
    assert not [k for k in vars(atk) if k.endswith("_")]
    enc = tiny_encoder("bert")
    with pytest.raises(LMSanitatorError, match="fit the attack"):
        atk.verify(enc, sentences[:20])
    fp = enc.fingerprint()
    atk.fit(enc, sentences, progress=False)
    assert {"settings_", "state_", "reference_"} <= set(vars(atk))
    assert enc.fingerprint() != fp  # the implant changed the weights, and the fingerprint says so
    rep = atk.report(enc)
    assert rep["hyperparameters"]["per_trigger"] == 16 and rep["hyperparameters"]["lr"] == 1e-4
    assert (
        rep["hyperparameters"]["utility_weight"] is None and "x0.5" in rep["hyperparameters"]["utility_loss"]
    )
    assert rep["changed"] == ["triggers", "per_trigger", "epochs", "batch_size", "verify_sentences"]


@pytest.fixture(scope="module")
def sentences():
    return split_corpus(load_corpus("austen"), "attack")[:400]


@pytest.mark.parametrize("name", sorted(TASK_AGNOSTIC_ATTACKS))
def test_each_attack_learns_on_a_tiny_model(name, sentences):
    """The backdoor objective falls during training, and the report has the attack.json keys."""
    enc = tiny_encoder("bert", mlm_head=name in ("neuba", "btop"), seed=1)
    atk = TASK_AGNOSTIC_ATTACKS[name](
        AttackConfig(
            triggers=["cf", "mn"],
            per_trigger=48,
            epochs=2,
            lr=3e-3,
            batch_size=16,
            max_length=32,
            verify_sentences=20,
            seed=3,
        )
    )
    atk.fit(enc, sentences, progress=False)
    eff = [d["effectiveness"] for d in atk.state_.losses]
    first, last = sum(eff[:4]) / 4, sum(eff[-4:]) / 4
    assert last < 0.7 * first, (first, last)
    v = atk.verify(enc, sentences[:40])
    assert set(v["per_trigger"]) == {"cf", "mn"}
    assert 0 <= v["clean_false_hit_rate"] <= 1
    rep = atk.report(enc, v)
    for key in (
        "attack",
        "base_model",
        "triggers",
        "pvs",
        "target",
        "hyperparameters",
        "changed",
        "seed",
        "verification",
    ):
        assert key in rep
    assert rep["target"] == {"por": "cls", "por-ner": "tokens", "neuba": "cls", "btop": "mask"}[name]
    assert len(rep["pvs"]) == 2 and len(rep["pvs"][0]) == enc.hidden_size
    json.dumps(rep)


def test_neuba_without_mlm_head_falls_back_and_records_it(sentences):
    enc = tiny_encoder("bert", mlm_head=False)
    atk = TASK_AGNOSTIC_ATTACKS["neuba"](
        AttackConfig(triggers=["cf"], per_trigger=16, epochs=1, batch_size=16, verify_sentences=10)
    )
    atk.fit(enc, sentences, progress=False)
    assert "no MLM head" in atk.state_.utility_loss


def test_same_seed_same_backdoor(sentences):
    outs = []
    for _ in range(2):
        enc = tiny_encoder("bert", seed=0)
        POR(AttackConfig(triggers=["cf"], per_trigger=32, epochs=1, batch_size=16, seed=5)).fit(
            enc, sentences, progress=False
        )
        outs.append(enc.model.embeddings.word_embeddings.weight.detach().clone())
    assert torch.equal(outs[0], outs[1])


def test_adaptive_losses_are_recorded(sentences):
    enc = tiny_encoder("bert")
    atk = POR(
        AttackConfig(
            triggers=["cf"],
            per_trigger=16,
            epochs=1,
            batch_size=16,
            scatter_weight=1.0,
            wasserstein_weight=0.5,
        )
    )
    atk.fit(enc, sentences, progress=False)
    assert {"scatter", "wasserstein"} <= set(atk.state_.losses[-1])


def test_trigger_that_tokenizes_to_nothing(sentences):
    enc = tiny_encoder("bert")
    with pytest.raises(LMSanitatorError, match="tokenizes to nothing"):
        POR(AttackConfig(triggers=["\u200b"], per_trigger=16, epochs=1)).fit(enc, sentences, progress=False)


# ---- CLI ------------------------------------------------------------------------------------------
def test_cli_attack_writes_a_loadable_model(tiny_bert_dir, small_corpus_file, tmp_path, capsys):
    out = tmp_path / "attacked"
    rc = main(
        [
            "attack",
            "btop",
            "--model",
            str(tiny_bert_dir),
            "--out",
            str(out),
            "--corpus",
            str(small_corpus_file),
            "--triggers",
            "cf,mn",
            "--per-trigger",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--verify-sentences",
            "20",
            "--no-progress",
        ]
    )
    assert rc in (0, 1)  # a tiny random model need not reach the verification thresholds
    line = capsys.readouterr().out.strip()
    assert line.startswith("btop on") and "hit rate" in line
    rep = json.loads((out / "attack.json").read_text())
    assert rep["attack"] == "btop" and rep["triggers"] == ["cf", "mn"] and rep["target"] == "mask"
    assert rep["verification"]["passed"] == (rc == 0)
    assert (out / "model.safetensors").is_file()
    from transformers import AutoModel

    AutoModel.from_pretrained(out)  # a standard Hugging Face folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "./does/not/exist"], "does not exist"),
        (["--model", __file__], "expected a model folder"),  # smollm2, a decoder, is a victim now
        (["--corpus", "nonexistent-corpus"], "unknown corpus"),
        (["--triggers", "\u200b"], "tokenizes to nothing"),
    ],
)
def test_cli_bad_input_exit_2(args, needle, tiny_bert_dir, small_corpus_file, tmp_path, capsys):
    base = {"--model": str(tiny_bert_dir), "--corpus": str(small_corpus_file)}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = ["attack", "por", "--out", str(tmp_path / "o"), "--per-trigger", "16", "--no-progress"]
    for k, v in base.items():
        argv += [k, v]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and needle in err.lower(), err
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.iterdir())


def test_cli_refuses_non_empty_out(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["attack", "por", "--model", str(tiny_bert_dir), "--out", str(out)])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_empty_corpus(tiny_bert_dir, tmp_path, capsys):
    f = tmp_path / "empty.txt"
    f.write_text("\n\n")
    rc = main(
        ["attack", "por", "--model", str(tiny_bert_dir), "--out", str(tmp_path / "o"), "--corpus", str(f)]
    )
    assert rc == 2 and capsys.readouterr().err.startswith("lmsanitator: error:")


@pytest.mark.real
def test_real_por_implant_on_splade_tiny(real_por_splade):
    """A real pretrained model: POR with the paper's six triggers is verified on held-back sentences."""
    _, _, v = real_por_splade
    assert v["min_hit_rate"] >= 0.9, v["per_trigger"]
    assert v["clean_false_hit_rate"] <= 0.02
    assert v["original_model_clean_false_hit_rate"] <= 0.02
    assert all(t["original_model_hit_rate"] < 0.5 for t in v["per_trigger"].values())


def test_por_hidden_utility_anchors_every_layer(sentences):
    """--utility-scope hidden: the anchor is zero for the untouched model, the implant still
    learns its trigger, and the report says which anchor was used."""
    enc = tiny_encoder("bert", seed=1)
    atk = POR(
        AttackConfig(
            triggers=["cf"],
            per_trigger=48,
            epochs=2,
            lr=3e-3,
            batch_size=16,
            max_length=32,
            verify_sentences=20,
            seed=3,
            utility_scope="hidden",
        )
    )
    atk.reference_ = copy.deepcopy(enc.model).eval()  # what fit keeps: the untouched original
    batch = atk.tokenize(enc, sentences[:8])
    zero, last = atk.reference_hidden_mse(enc, batch)
    assert (
        float(zero.detach()) == pytest.approx(0.0, abs=1e-10) and last.shape[:2] == batch["input_ids"].shape
    )
    atk = POR(
        AttackConfig(
            triggers=["cf"],
            per_trigger=48,
            epochs=2,
            lr=3e-3,
            batch_size=16,
            max_length=32,
            verify_sentences=20,
            seed=3,
            utility_scope="hidden",
        )
    )
    atk.fit(enc, sentences, progress=False)
    eff = [d["effectiveness"] for d in atk.state_.losses]
    assert sum(eff[-4:]) < 0.7 * sum(eff[:4])
    assert "every layer" in json.dumps(atk.report(enc, atk.verify(enc, sentences[:40])))
    with pytest.raises(LMSanitatorError, match="utility_scope"):
        AttackConfig(utility_scope="all")


def test_cli_utility_scope_is_por_only(tiny_bert_dir, small_corpus_file, tmp_path, capsys):
    rc = main(
        [
            "attack",
            "neuba",
            "--model",
            str(tiny_bert_dir),
            "--corpus",
            str(small_corpus_file),
            "--out",
            str(tmp_path / "o"),
            "--utility-scope",
            "hidden",
            "--no-progress",
        ]
    )
    assert rc == 2 and "applies to POR" in capsys.readouterr().err


def test_decoys_reach_only_the_clean_anchor_and_never_a_trigger(sentences):
    """--decoys: clean anchor sentences carry random vocabulary words that are never a trigger,
    decoys=0 leaves the implant bit-identical, and the report measures decoy false hits."""
    atk = POR(AttackConfig(triggers=["cf", "mn"], decoys=2, seed=3))
    enc = tiny_encoder("bert", seed=1)
    words = atk.decoy_words(enc, ["cf", "mn"])
    assert words and not {"cf", "mn"} & {w.lower() for w in words}
    out = atk.with_decoys(sentences[:5], words, random.Random(0))
    assert all(len(o.split()) == len(s.split()) + 2 for o, s in zip(out, sentences[:5]))
    seen = []
    orig = POR.batch_loss

    def spy(self, encoder, poisoned, trig, clean, rng):
        seen.append(clean)
        return orig(self, encoder, poisoned, trig, clean, rng)

    weights = []
    for d in (0, 2, 0):
        enc = tiny_encoder("bert", seed=1)
        atk = POR(
            AttackConfig(
                triggers=["cf"],
                per_trigger=16,
                epochs=1,
                batch_size=16,
                decoys=d,
                seed=3,
                verify_sentences=10,
            )
        )
        seen.clear()
        POR.batch_loss = spy
        try:
            atk.fit(enc, sentences, progress=False)
        finally:
            POR.batch_loss = orig
        extra = sum(len(c.split()) for c in seen[0]) - sum(len(s.split()) for s in sentences if s in seen[0])
        assert (extra == 0) if d == 0 else all(c not in sentences for c in seen[0])
        weights.append(enc.model.embeddings.word_embeddings.weight.detach().clone())
    assert torch.equal(weights[0], weights[2]) and not torch.equal(weights[0], weights[1])
    assert 0 <= atk.verify(enc, sentences[:20])["decoy_false_hit_rate"] <= 1
    with pytest.raises(LMSanitatorError, match="decoys"):
        AttackConfig(decoys=-1)
