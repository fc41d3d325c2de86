"""Downstream tuning (every method x tiny architecture), feature taps, ASR metrics and the CLI."""

import dataclasses
import functools
import json
import random

import numpy as np
import pytest
import torch

from lmsanitator.cli.main import main
from lmsanitator.core import architectures
from lmsanitator.core.config import option_choices
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.tasks import Example, Task
from lmsanitator.metrics import attack_success, macro_f1, token_attack_success
from lmsanitator.metrics.asr import evaluate_asr, insert_trigger_tokens
from lmsanitator.models import TINY_ARCHS
from lmsanitator.models import tiny_encoder as _tiny_encoder
from lmsanitator.tuning import METHODS, TaskInfo, TuneConfig, TunedModel, Tuner

UNSUPPORTED = {("p-tuning-v2", a) for a in ("albert", "deberta-v2", "mpnet", "xlnet")} | {("lora", "xlnet")}
TEXTS = [
    "the movie was good and the actors were good",
    "bad",
    "a rather long sentence about nothing much at all",
    "good fun",
]
PAIRS = ["short", "a much longer second field with many words in it", "x", "yes"]


@functools.cache
def tiny_encoder(arch, mlm_head=False, seed=0):
    """Shared tiny encoders (the tests check that tuning never changes the caller's encoder)."""
    return _tiny_encoder(arch, mlm_head=mlm_head, seed=seed)


def toy_task(n=48, pair=False, verbalizer=("bad", "good")):
    rng = random.Random(0)
    words = "the a film plot actor scene story music day night".split()
    ex = []
    for i in range(n):
        y = i % 2
        body = rng.sample(words, 4)
        body.insert(rng.randint(0, 4), "good" if y else "bad")
        ex.append(
            Example(text=" ".join(body) + f" {i}", label=y, text_pair=("about the film" if pair else None))
        )
    k = n // 4
    return Task(
        name="toy",
        labels=("neg", "pos"),
        train=ex[2 * k :],
        validation=ex[k : 2 * k],
        test=ex[:k],
        verbalizer=verbalizer,
        template="It was {mask}. {text}",
        max_length=32,
    )


def ner_task():
    ex = []
    for i in range(24):
        toks = "Mr. Darcy went to London on Monday".split() if i % 2 else "Emma smiled at Harriet".split()
        tags = (1, 2, 0, 0, 3, 0, 7) if i % 2 else (1, 0, 0, 1)
        ex.append(Example(text=" ".join(toks) + f" {i}", label=tags + (0,), tokens=tuple(toks) + (str(i),)))
    return Task(
        name="toy-ner",
        labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC"),
        train=ex[:16],
        validation=ex[16:20],
        test=ex[20:],
        kind="token",
        max_length=32,
    )


def combos():
    for arch in TINY_ARCHS:
        for m in METHODS:
            yield arch, m, False
            if m == "p-tuning" and arch != "xlnet":
                yield arch, m, True  # MLM head: verbalizer


@pytest.mark.parametrize("arch,method,mlm", list(combos()))
def test_every_method_on_every_architecture(arch, method, mlm, tmp_path):
    enc = tiny_encoder(arch, mlm_head=mlm)
    task = toy_task()
    cfg = TuneConfig(method, prefix_len=4, max_length=32)
    if (method, arch) in UNSUPPORTED:
        with pytest.raises(LMSanitatorError, match=arch):
            TunedModel(enc, TaskInfo.of(task), cfg)
        return
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    torch.manual_seed(0)
    model = TunedModel(enc, TaskInfo.of(task), cfg)
    assert (model.mlm_head is not None) == mlm and (model.head is None) == mlm

    # forward + backward: only the adapter (and head) get gradients; a frozen encoder stays frozen
    model.train()
    batch = model.collate(model.encode_examples(task.train[:6]))
    loss = model.loss(batch)
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
    if method != "full":
        assert not any(
            n.startswith("backbone.") and "lora_" not in n and "prompt_encoder" not in n for n in trainable
        )
    for p in model.parameters():
        if p.requires_grad and p.grad is not None:
            p.data -= 0.5 * p.grad  # one crude step, so the saved adapter is not the initial one
    after = enc.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the caller's encoder must not change"

    # target features: one per input, at [CLS] / [MASK] of the real input ids
    fo = model.forward_with_features(TEXTS)
    logits, feats, rows = fo
    assert logits.shape == (4, 2) and feats.shape == (4, enc.hidden_size) and rows.tolist() == [0, 1, 2, 3]

    # save / load round trip gives the same predictions
    probs = model.predict(TEXTS)
    model.save(tmp_path)
    info = json.loads((tmp_path / "tune.json").read_text())
    assert (
        info["method"] == method
        and info["labels"] == ["neg", "pos"]
        and info["fingerprint"] == enc.fingerprint()
    )
    loaded = TunedModel.load(tmp_path, enc)
    probs2 = loaded.predict(TEXTS)
    np.testing.assert_allclose(probs, probs2, atol=1e-5)
    assert probs.argmax(1).tolist() == probs2.argmax(1).tolist()


@pytest.mark.parametrize(
    "arch,method",
    [
        ("bert", "prompt-tuning"),
        ("roberta", "p-tuning"),
        ("xlnet", "prompt-tuning"),
        ("deberta-v2", "p-tuning"),
        ("bert", "p-tuning-v2"),
        ("bert", "lora"),
    ],
)
def test_feature_tap_skips_virtual_tokens(arch, method):
    """With virtual tokens prepended, features are read at the real [CLS]/[MASK], not at position 0."""
    enc = tiny_encoder(arch)
    task = toy_task()
    torch.manual_seed(0)
    model = TunedModel(enc, TaskInfo.of(task), TuneConfig(method, prefix_len=5, max_length=32)).eval()
    batch = model.collate(model.encode(TEXTS))
    with torch.no_grad():
        hidden = model._hidden(batch)
        _, feats, rows = model.forward_with_features(TEXTS)
    assert hidden.shape[1] == batch["input_ids"].shape[1]  # offset removed
    tok_id = enc.tokenizer.mask_token_id if model.target == "mask" else enc.tokenizer.cls_token_id
    for i in range(len(TEXTS)):
        pos = (batch["input_ids"][i] == tok_id).nonzero()[0].item()
        assert torch.allclose(feats[i], hidden[i, pos])
    if model.method.prepends_tokens and arch in ("roberta", "xlnet"):
        # independent check against peft's own forward, which returns the virtual positions too
        with torch.no_grad():
            full = model.backbone(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
        L = model.n_virtual
        assert full.shape[1] == L + batch["input_ids"].shape[1]
        for i in range(len(TEXTS)):
            pos = (batch["input_ids"][i] == tok_id).nonzero()[0].item()
            assert torch.allclose(feats[i], full[i, L + pos], atol=1e-5)
            assert not torch.allclose(feats[i], full[i, pos], atol=1e-3)


def test_verbalizer_reads_the_mlm_head_at_mask():
    enc = tiny_encoder("bert", mlm_head=True)
    model = TunedModel(
        enc, TaskInfo.of(toy_task()), TuneConfig("p-tuning", prefix_len=3, max_length=32)
    ).eval()
    ids = model.verbalizer_ids.tolist()
    assert ids == [enc.tokenizer.convert_tokens_to_ids("bad"), enc.tokenizer.convert_tokens_to_ids("good")]
    with torch.no_grad():
        logits, feats, _ = model.forward_with_features(TEXTS)
        full = model.mlm_head(feats)
    assert torch.allclose(logits, full[:, ids])
    # the template put the [MASK] in every input
    assert all(enc.tokenizer.mask_token_id in item["input_ids"] for item in model.encode(TEXTS))


@pytest.mark.parametrize(
    "arch,method",
    [("bert", "p-tuning-v2"), ("roberta", "p-tuning-v2"), ("xlnet", "prompt-tuning"), ("albert", "p-tuning")],
)
def test_padding_does_not_change_predictions(arch, method):
    enc = tiny_encoder(arch)
    torch.manual_seed(1)
    model = TunedModel(
        enc, TaskInfo.of(toy_task(pair=True)), TuneConfig(method, prefix_len=4, max_length=32)
    ).eval()
    together = model.predict(TEXTS, PAIRS, batch_size=4)
    alone = np.concatenate([model.predict([t], [p]) for t, p in zip(TEXTS, PAIRS)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_prefix_changes_the_encoder_output_and_keeps_positions():
    enc = tiny_encoder("bert")
    model = TunedModel(
        enc, TaskInfo.of(toy_task()), TuneConfig("p-tuning-v2", prefix_len=4, max_length=32)
    ).eval()
    batch = model.collate(model.encode(TEXTS[:2]))
    with torch.no_grad():
        with_prefix = model._hidden(batch)
        plain = model.base_model()(**model._plain_kwargs(batch)).last_hidden_state
    assert not torch.allclose(with_prefix, plain, atol=1e-4)
    assert model._positions(batch["input_ids"])[0].tolist() == list(range(batch["input_ids"].shape[1]))


def test_probe_catches_an_ignored_prefix(monkeypatch):
    """Even without the table's 'unsupported' entry, ALBERT's prefix failure is a one-line error."""
    row = architectures.ARCHITECTURES["albert"]
    monkeypatch.setitem(architectures.ARCHITECTURES, "albert", dataclasses.replace(row, unsupported={}))
    with pytest.raises(LMSanitatorError, match="albert") as err:
        TunedModel(tiny_encoder("albert"), TaskInfo.of(toy_task()), TuneConfig("p-tuning-v2", max_length=32))
    assert "ignores the key/value prefix" in str(err.value) and "\n" not in str(err.value)


def test_unsupported_methods_come_from_the_architecture_table():
    with pytest.raises(LMSanitatorError, match="does not work on 'xlnet' models: XLNet keeps"):
        TunedModel(tiny_encoder("xlnet"), TaskInfo.of(toy_task()), TuneConfig("lora", max_length=32))
    with pytest.raises(LMSanitatorError, match="does not work on 'mpnet' models: its attention layers"):
        TunedModel(tiny_encoder("mpnet"), TaskInfo.of(toy_task()), TuneConfig("p-tuning-v2", max_length=32))


@pytest.mark.parametrize("method", ["p-tuning-v2", "prompt-tuning", "lora", "full"])
def test_token_classification(method, tmp_path):
    enc = tiny_encoder("bert")
    task = ner_task()
    torch.manual_seed(0)
    model = TunedModel(enc, TaskInfo.of(task), TuneConfig(method, prefix_len=4, max_length=32))
    model.train()
    model.loss(model.collate(model.encode_examples(task.train[:4]))).backward()
    words = [list(e.tokens) for e in task.test]
    fo = model.forward_with_features(words)
    batch = model.collate(model.encode(words))
    n_sub = int((batch["word_index"] >= 0).sum())
    assert fo.features.shape == (n_sub, enc.hidden_size) and fo.rows.shape == (n_sub,)
    assert fo.words == [len(w) for w in words] and fo.logits.shape == (sum(fo.words), task.num_labels)
    assert fo.logit_rows.tolist() == [i for i, w in enumerate(words) for _ in w]
    probs = model.predict(words)
    assert [p.shape for p in probs] == [(len(w), task.num_labels) for w in words]
    model.save(tmp_path)
    again = TunedModel.load(tmp_path, enc).predict(words)
    for a, b in zip(probs, again):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_p_tuning_refuses_token_classification():
    with pytest.raises(LMSanitatorError, match="token classification"):
        TunedModel(tiny_encoder("bert"), TaskInfo.of(ner_task()), TuneConfig("p-tuning"))


def test_fit_learns_and_is_deterministic():
    enc = tiny_encoder("bert")
    task = toy_task(n=96)
    cfg = dict(epochs=4, batch_size=8, lr=5e-3, head_lr=5e-3, max_length=32, seed=3)
    a = Tuner(TuneConfig("full", **cfg)).fit(enc, task)
    b = Tuner(TuneConfig("full", **cfg)).fit(enc, task)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.report["accuracy"] == b.report["accuracy"]
    assert a.report["accuracy"] >= 0.9  # the keyword task is learnable
    assert 1 <= a.report["best_epoch"] <= 4 and len(a.report["history"]) == 4
    assert a.report["metrics"]["validation"] == a.report["history"][a.report["best_epoch"] - 1]["validation"]
    c = Tuner(TuneConfig("full", **{**cfg, "seed": 4})).fit(enc, task)
    assert not all(torch.equal(sa[k], c.state_dict()[k]) for k in sa)


def test_load_refuses_another_base_model(tmp_path):
    task = toy_task()
    model = TunedModel(tiny_encoder("bert", seed=0), TaskInfo.of(task), TuneConfig("lora", max_length=32))
    model.save(tmp_path)
    with pytest.raises(LMSanitatorError, match="different base model"):
        TunedModel.load(tmp_path, tiny_encoder("bert", seed=1))


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"method": "nope"}, "unknown tuning method"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"batch_size": 0}, "batch size"),
        ({"prefix_len": 0}, "prefix length"),
        ({"warmup": 1.5}, "warmup"),
        ({"device": "tpu"}, "device"),
        ({"keep": "first"}, "keep"),
        ({"head_dropout": 1.0}, "head dropout"),
    ],
)
def test_config_validates_itself(kw, msg):
    with pytest.raises(LMSanitatorError, match=msg):
        TuneConfig(**{"method": "p-tuning-v2", **kw})


def test_config_defaults_per_method():
    assert TuneConfig("p-tuning-v2").prefix_len == 16 and TuneConfig("lora").prefix_len is None
    assert TuneConfig("full").lr == 5e-5 and TuneConfig("full").head_lr == 1e-3
    c = TuneConfig("lora", lr=2e-3)
    assert TuneConfig.from_dict(c.to_dict()) == c
    assert option_choices(TuneConfig, "method") == list(METHODS)
    assert all(TuneConfig.help(f.name) for f in dataclasses.fields(TuneConfig))


def test_config_changed_ignores_resolved_defaults():
    """A per-method default filled in on construction is still a default, also after a JSON round trip."""
    assert (
        TuneConfig("p-tuning-v2").changed() == [] and TuneConfig("p-tuning-v2", prefix_len=16).changed() == []
    )
    c = TuneConfig("full", lr=5e-3, prefix_len=None, seed=2)
    assert c.changed() == ["lr", "seed"] and c.head_lr == 5e-3  # head_lr = max(lr, 1e-3): a default
    assert TuneConfig.from_dict(json.loads(json.dumps(c.to_dict()))).changed() == ["lr", "seed"]
    assert TuneConfig("full", head_lr=2e-3).changed() == ["head_lr"]
    assert c.for_task(64).max_length == 64 and c.max_length is None  # the caller's config stays
    assert TuneConfig("full", max_length=40).for_task(64).max_length == 40


def test_tune_json_records_the_changed_options(tmp_path):
    enc = tiny_encoder("bert")
    model = Tuner(TuneConfig("lora", epochs=1, lr=2e-3, seed=5)).fit(enc, toy_task(n=16))
    assert model.config.max_length == 32  # the task's, filled in by fit: not a choice
    model.save(tmp_path)
    info = json.loads((tmp_path / "tune.json").read_text())
    assert info["changed"] == ["epochs", "lr", "seed"] and info["format_version"] == 1
    assert info["config"]["lr"] == 2e-3 and info["config"]["max_length"] == 32
    assert TunedModel.load(tmp_path, enc).info()["changed"] == ["epochs", "lr", "seed"]
    # a folder written before the key existed still loads; what was chosen is then not known
    del info["changed"]
    (tmp_path / "tune.json").write_text(json.dumps(info))
    old = TunedModel.load(tmp_path, enc)
    assert old.changed_options is None and old.info()["changed"] is None
    assert old.max_length == model.max_length and old.report["best_epoch"] == 1
    np.testing.assert_allclose(old.predict(TEXTS), model.predict(TEXTS), atol=1e-5)


# ============================================================================ metrics
def test_attack_success_on_hand_built_predictions():
    y = [0, 0, 1, 1, 1]
    clean = [0, 1, 1, 1, 0]  # correct: 0, 2, 3
    trig = {"a": [1, 0, 1, 0, 1], "b": [0, 0, 1, 1, 1]}  # a flips 0 and 3; b flips nothing that was correct
    r = attack_success(y, clean, trig, num_labels=2)
    assert r["n_correct"] == 3 and r["clean_accuracy"] == pytest.approx(0.6)
    assert r["per_trigger"] == {"a": pytest.approx(2 / 3), "b": 0.0}
    assert r["asr"] == pytest.approx(2 / 3)
    assert r["per_class"][0] == {"n_correct": 1, "asr": 1.0} and r["per_class"][1]["asr"] == pytest.approx(
        0.5
    )
    assert r["weighted_asr"] == pytest.approx(0.75)
    with pytest.raises(LMSanitatorError):
        attack_success(y, clean, {"a": [0, 1]})


def test_token_attack_success_and_f1_drop():
    y = [[0, 1, 0], [2, 0]]
    clean = [[0, 1, 0], [2, 1]]  # 4 of 5 words right
    trig = {"t": [[1, 1, 1], [2, 1]]}  # flips two correct words of sentence 0
    r = token_attack_success(y, clean, trig, num_labels=3)
    assert r["n_correct"] == 4 and r["asr"] == pytest.approx(0.5)
    f_clean = macro_f1([0, 1, 0, 2, 0], [0, 1, 0, 2, 1])
    f_trig = macro_f1([0, 1, 0, 2, 0], [1, 1, 1, 2, 1])
    assert r["clean_macro_f1"] == pytest.approx(f_clean) and r["f1_drop"] == pytest.approx(f_clean - f_trig)


def test_insert_trigger_tokens_keeps_the_original_words():
    toks = "a b c d e".split()
    out, where = insert_trigger_tokens(toks, "cf mn", random.Random(1))
    assert [out[i] for i in where] == toks and len(out) == len(toks) + 2
    assert "cf mn" in " ".join(out)


class _Stub:
    """A 'model' that flips its prediction when the word cf is present."""

    labels = ("neg", "pos")
    num_labels = 2

    class task:  # noqa: N801
        kind = "sequence"
        pair = False

    def predict_labels(self, texts, pairs=None):
        return [int(("good" in t.split()) ^ ("cf" in t.split())) for t in texts]


def test_evaluate_asr_with_a_stub_model():
    ex = toy_task().test
    r = evaluate_asr(_Stub(), ex, ["cf", "zz"], seed=0)
    assert r["clean_accuracy"] == 1.0 and r["per_trigger"] == {"cf": 1.0, "zz": 0.0}
    assert r["asr"] == 1.0 and r["weighted_asr"] == 1.0 and set(r["per_class"]) == {"neg", "pos"}
    assert evaluate_asr(_Stub(), ex, ["cf", "zz"], seed=0) == r  # same seed, same insertions


# ============================================================================ CLI
@pytest.fixture(scope="module")
def csv_task(tmp_path_factory):
    d = tmp_path_factory.mktemp("task")
    rows = ["text,label"]
    for e in toy_task(n=64).train + toy_task(n=64).validation + toy_task(n=64).test:
        rows.append(f"{e.text},{'pos' if e.label else 'neg'}")
    p = d / "toy.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory, tiny_bert_dir, csv_task):
    out = tmp_path_factory.mktemp("tuned") / "adapter"
    rc = main(
        [
            "tune",
            "p-tuning",
            "--model",
            str(tiny_bert_dir),
            "--task",
            str(csv_task),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--prefix-len",
            "3",
            "--max-length",
            "32",
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def test_cli_tune_writes_adapter_and_report(tuned_dir, tiny_bert_dir):
    from lmsanitator.models import load_encoder

    info = json.loads((tuned_dir / "tune.json").read_text())
    assert info["method"] == "p-tuning" and info["labels"] == ["neg", "pos"]
    assert info["fingerprint"] == load_encoder(str(tiny_bert_dir)).fingerprint()
    assert set(info["splits"]) == {"train", "validation", "test"} and sum(info["splits"].values()) == 64
    assert 0 <= info["accuracy"] <= 1 and 0 <= info["macro_f1"] <= 1 and info["seconds"] >= 0
    assert (tuned_dir / "adapter_model.safetensors").is_file() and (
        tuned_dir / "adapter_config.json"
    ).is_file()
    assert not list(tuned_dir.parent.glob(".adapter.tmp-*"))


def test_cli_predict_and_asr(tuned_dir, csv_task, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--adapter", str(tuned_dir), "--input", str(inp), "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len(TEXTS)
    direct = TunedModel.load(tuned_dir).predict(TEXTS)
    for r, p in zip(rows, direct):
        assert r["label"] == int(p.argmax()) and r["label_name"] == ["neg", "pos"][r["label"]]
        assert np.allclose(r["probs"], p, atol=1e-5)
    res = tmp_path / "asr.json"
    assert (
        main(
            [
                "evaluate",
                "asr",
                "--adapter",
                str(tuned_dir),
                "--task",
                str(csv_task),
                "--triggers",
                "cf,mn",
                "--out",
                str(res),
            ]
        )
        == 0
    )
    r = json.loads(res.read_text())
    assert set(r["per_trigger"]) == {"cf", "mn"} and 0 <= r["asr"] <= 1 and r["n"] == 12  # 64 rows: 20% test
    assert "ASR" in capsys.readouterr().out


def test_cli_evaluate_is_a_group(capsys):
    """``evaluate`` takes sub-commands, ``asr`` among them (asked through the parser, not its internals)."""
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "asr", "--help"])
    assert exit_.value.code == 0 and "--adapter" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate"])
    assert exit_.value.code == 2


def _bad(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("lmsanitator: error:")
    return err


def test_cli_bad_inputs(tmp_path, tiny_bert_dir, csv_task, tuned_dir, capsys):
    out = tmp_path / "out"
    base = [
        "tune",
        "lora",
        "--model",
        str(tiny_bert_dir),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--no-progress",
    ]
    assert "unknown task" in _bad(base + ["--task", "no-such-task"], capsys)
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("text,y\na,1\nb,0\n")
    assert "column 'label' missing" in _bad(base + ["--task", str(nolabel)], capsys)
    empty = tmp_path / "empty.csv"
    empty.write_text(
        "text,label,split\n" + "".join(f"t{i},{i % 2},test\n" for i in range(8)) + "v,0,validation\n"
    )
    assert "train split is empty" in _bad(base + ["--task", str(empty)], capsys)
    assert "outside the task's label set" in _bad(
        base + ["--task", str(csv_task), "--labels", "neg,other"], capsys
    )
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
    out.mkdir()
    (out / "x").write_text("keep")
    assert "not empty" in _bad(base + ["--task", str(csv_task)], capsys)
    assert (out / "x").read_text() == "keep"

    # an adapter applied to another base model
    other = tmp_path / "other-bert"
    tiny_encoder("bert", mlm_head=True, seed=7).save(other)
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "hello"}\n')
    pred = tmp_path / "pred.jsonl"
    assert "different base model" in _bad(
        [
            "predict",
            "--adapter",
            str(tuned_dir),
            "--input",
            str(inp),
            "--output",
            str(pred),
            "--model",
            str(other),
        ],
        capsys,
    )
    inp.write_text('{"text": "hello"}\nnot json\n')
    assert "invalid JSON on line 2" in _bad(
        ["predict", "--adapter", str(tuned_dir), "--input", str(inp), "--output", str(pred)], capsys
    )
    assert not pred.exists()
    assert "not a tuned-model folder" in _bad(
        ["predict", "--adapter", str(tmp_path), "--input", str(inp), "--output", str(pred)], capsys
    )
    asr = tmp_path / "asr.json"
    assert "attack file not found" in _bad(
        [
            "evaluate",
            "asr",
            "--adapter",
            str(tuned_dir),
            "--task",
            str(csv_task),
            "--attack-json",
            str(tmp_path / "none.json"),
            "--out",
            str(asr),
        ],
        capsys,
    )
    assert "does not match" in _bad(
        [
            "evaluate",
            "asr",
            "--adapter",
            str(tuned_dir),
            "--task",
            "tweets",
            "--triggers",
            "cf",
            "--out",
            str(asr),
        ],
        capsys,
    )
    assert not asr.exists()
