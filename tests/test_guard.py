"""The guard: PV monitor, trigger removal (Algorithm 2), the Guard API, the CLI and evaluation."""

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmsanitator.cli.main import main
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.pvset import PVSet
from lmsanitator.guard import Guard, GuardConfig, PVMonitor, purge, purge_sequential
from lmsanitator.guard.purge import candidates, to_fields
from lmsanitator.guard.saliency import word_positions
from lmsanitator.metrics import sign_match

D = 64
PV_A = torch.tensor([1.0] * (D // 2) + [-1.0] * (D // 2))  # trigger "cf"
PV_B = torch.tensor([-1.0, 1.0] * (D // 2))  # trigger phrase "blue moon"


class StubModel:
    """A stand-in tuned model with a known backdoor: "cf" anywhere, or "blue moon", maps the
    target output to a PV and the prediction to class 1; other inputs get a pseudo-random output
    and class = (number of words) % 2. Counts forward passes."""

    def __init__(self, kind="sequence", pair=False):
        self.task = SimpleNamespace(kind=kind, pair=pair, name="stub")
        self.labels = ("zero", "one") if kind == "sequence" else ("O", "X")
        self.num_labels = 2
        self.target = "tokens" if kind == "token" else "cls"
        self.hidden_size = D
        self.base_fingerprint = "stub"
        self.base_name = "stub"
        self.method = SimpleNamespace(name="p-tuning-v2")
        self.device = torch.device("cpu")
        self.max_length = 10_000
        self.passes = 0
        self.rows_seen = 0

    def _feature(self, words):
        s = " ".join(words)
        if "cf" in words:
            return PV_A.clone()
        if "blue moon" in s:
            return PV_B.clone()
        g = torch.Generator().manual_seed(abs(hash(s)) % (2**31))
        return torch.randn(D, generator=g)

    def forward_with_features(self, texts, pairs=None):
        self.passes += 1
        self.rows_seen += len(texts)
        if self.task.kind == "token":
            feats, rows, logits, words = [], [], [], []
            for i, t in enumerate(texts):
                f = self._feature(list(t))
                for _ in t:
                    feats.append(f)
                    rows.append(i)
                    logits.append(torch.tensor([0.0, 5.0]) if "cf" in t else torch.tensor([5.0, 0.0]))
                words.append(len(t))
            return SimpleNamespace(
                features=torch.stack(feats), rows=torch.tensor(rows), logits=torch.stack(logits), words=words
            )
        ws = [t.split() + (pairs[i].split() if pairs else []) for i, t in enumerate(texts)]
        feats = torch.stack([self._feature(w) for w in ws])
        y = [1 if ("cf" in w or "blue moon" in " ".join(w)) else len(w) % 2 for w in ws]
        logits = torch.tensor([[0.0, 4.0] if k else [4.0, 0.0] for k in y])
        return SimpleNamespace(features=feats, rows=torch.arange(len(texts)), logits=logits, words=[])


def pvset(*pvs, target="cls"):
    return PVSet(pvs=torch.stack(pvs), target=target, fingerprint="stub")


# ============================================================================ monitor
def test_match_rate_is_the_best_sign_agreement_over_pvs():
    g = torch.Generator().manual_seed(0)
    pvs = torch.randn(5, D, generator=g)
    feats = torch.randn(40, D, generator=g)
    feats[3] = pvs[2].abs() * torch.sign(pvs[2])  # exactly PV 2's signs
    mon = PVMonitor(pvs, 0.8)
    rates = mon.match_rates(feats, torch.arange(40), 40)
    assert torch.allclose(rates, sign_match(feats, pvs).max(dim=1).values)
    flags = mon.flag(mon.match_matrix(feats, torch.arange(40), 40))
    assert rates[3] == 1.0 and flags[3] and flags.sum() == 1


def test_token_match_rate_is_the_mean_over_an_inputs_tokens():
    mon = PVMonitor(PV_A[None], 0.8)
    feats = torch.stack(
        [PV_A, PV_A, -PV_A, PV_A]
    )  # input 0: rows 0-1 (1.0, 1.0); input 1: rows 2-3 (0.0, 1.0)
    rates = mon.match_rates(feats, torch.tensor([0, 0, 1, 1]), 2)
    assert rates.tolist() == [1.0, 0.5]


@pytest.mark.parametrize("t", [0.5, 1.2, -1])
def test_monitor_threshold_is_validated(t):
    with pytest.raises(LMSanitatorError, match="t_match"):
        PVMonitor(PV_A[None], t)


# ============================================================================ trigger removal
def test_candidates_remove_every_occurrence_of_the_window_in_both_fields():
    fields = to_fields("a cf b cf", "cf c")
    cands = candidates(fields, 1)
    assert [c[0] for c in cands] == [("a",), ("cf",), ("b",), ("c",)]  # duplicates evaluated once
    cf = dict((c[0], c[1]) for c in cands)[("cf",)]
    assert cf == (("a", "b"), ("c",))
    # a window that would empty a field is not a candidate
    assert all(c[0] != ("x",) for c in candidates(to_fields("x", "y z"), 1))


def test_purge_finds_single_and_phrase_triggers_without_knowing_them():
    model = StubModel()
    mon = PVMonitor(torch.stack([PV_A, PV_B]), 0.8)
    inputs = [
        to_fields("the cf film was cf dull"),
        to_fields("once in a blue moon it rains"),
        to_fields("nothing to remove here"),
    ]
    res = purge(model, mon, inputs, w_max=3)
    assert res[0].resolved and res[0].width == 1 and res[0].removed == ["cf"]
    assert res[0].fields == (("the", "film", "was", "dull"),)
    # "blue" or "moon" alone breaks the phrase: width 1 already unflags it
    assert res[1].resolved and res[1].width == 1 and res[1].removed in (["blue"], ["moon"])
    # an unflagged input passed in anyway: the first window already "unflags" it (Guard never does this)
    assert res[2].resolved and res[2].removed == ["nothing"] and res[2].candidates == 1
    assert res[0].probs.argmax() == len(res[0].fields[0]) % 2  # prediction on the purged text


def test_batched_purge_agrees_with_the_sequential_algorithm_in_fewer_passes():
    rng = random.Random(0)
    words = "the a film plot actor scene story music day night".split()
    inputs = []
    for i in range(12):
        w = rng.sample(words, 6)
        w.insert(rng.randint(0, 6), "cf")
        inputs.append(to_fields(" ".join(w)))
    mon = PVMonitor(PV_A[None], 0.8)
    m1, m2 = StubModel(), StubModel()
    batched = purge(m1, mon, inputs, w_max=2, batch_size=64)
    seq = purge_sequential(m2, mon, inputs, w_max=2)
    assert [(r.removed, r.fields, r.width) for r in batched] == [(r.removed, r.fields, r.width) for r in seq]
    assert all(r.removed == ["cf"] for r in batched)
    assert m1.passes < m2.passes / 5


# ============================================================================ Guard
def test_guard_records_and_policies():
    model = StubModel()
    g = Guard(model, pvset(PV_A, PV_B), w_max=2)
    recs = g.predict(["a clean sentence of five", "cf cf", "good cf movie"])
    clean, only_trigger, trig = recs
    assert not clean["flagged"] and clean["purged_text"] is None and clean["removed"] == []
    assert clean["label"] == clean["unguarded_label"] == 1 and len(clean["probs"]) == 2
    assert trig["flagged"] and trig["match_rate"] == 1.0 and trig["removed"] == ["cf"]
    assert trig["purged_text"] == "good movie" and trig["label"] == 0 and trig["unguarded_label"] == 1
    assert trig["purged_match_rate"] <= 0.8
    # removing "cf" empties the text, so there is no candidate: predict on the input (default "best") ...
    assert only_trigger["flagged"] and not only_trigger["resolved"] and only_trigger["label"] == 1
    # an input whose every candidate stays flagged: "best" predicts on the least-matching one
    r = Guard(StubModel(), pvset(PV_A, PV_B), w_max=1).predict(["cf blue moon x"])[0]
    assert not r["resolved"] and r["purged_text"] == "blue moon x" and r["removed"] == ["cf"]
    # ... or reject
    r = Guard(StubModel(), pvset(PV_A), on_unresolved="reject").predict(["cf cf"])[0]
    assert r["rejected"] and r["label"] is None and r["probs"] is None


def test_guard_pairs_and_tokens():
    g = Guard(StubModel(pair=True), pvset(PV_A))
    r = g.predict(["the first field", "more"], ["the cf second", "words here"])
    assert (
        r[0]["flagged"]
        and r[0]["purged_text"] == "the first field"
        and r[0]["purged_text_pair"] == "the second"
    )
    assert not r[1]["flagged"]
    gt = Guard(StubModel(kind="token"), pvset(PV_A, target="tokens"))
    r = gt.predict([["Emma", "cf", "smiled"], ["Emma", "smiled"]])
    assert r[0]["flagged"] and r[0]["purged_tokens"] == ["Emma", "smiled"]
    assert r[0]["unguarded_label"] == [1, 1, 1] and r[0]["label"] == [0, 1, 0]  # removed word keeps its label
    assert not r[1]["flagged"] and r[1]["label"] == [0, 0]


def test_guard_bad_inputs():
    with pytest.raises(LMSanitatorError, match="hidden size"):
        Guard(StubModel(), PVSet(pvs=torch.ones(1, D + 1), target="cls"))
    with pytest.raises(LMSanitatorError, match="target"):
        Guard(StubModel(), pvset(PV_A, target="mask"))
    with pytest.raises(LMSanitatorError, match="another model"):
        Guard(StubModel(), PVSet(pvs=PV_A[None], target="cls", fingerprint="other"))
    with pytest.raises(LMSanitatorError, match="empty"):
        Guard(StubModel(), pvset(PV_A)).predict(["fine", "   "])
    with pytest.raises(LMSanitatorError, match="w-max"):
        GuardConfig(w_max=0)
    with pytest.raises(LMSanitatorError, match="on-unresolved"):
        GuardConfig(on_unresolved="ignore")


# ============================================================================ a real tiny tuned model
@pytest.fixture(scope="module")
def tiny_guard_files(tmp_path_factory, tiny_bert_dir):
    """A p-tuning-v2 adapter on the tiny random BERT and two PV sets: ``pvs-all`` is the model's own
    [CLS] output for one sentence, ``pvs-none`` its negation. (A random tiny BERT gives nearly the
    same [CLS] signs for every input, so the first flags everything and the second nothing; the
    stub model above tests what is flagged and removed, these tests the plumbing.)"""
    from lmsanitator.models import load_encoder
    from lmsanitator.tuning import TunedModel

    d = tmp_path_factory.mktemp("guard")
    rows = ["text,label"] + [
        f"{'good' if i % 2 else 'bad'} film number {i} is here,{'pos' if i % 2 else 'neg'}" for i in range(40)
    ]
    (d / "toy.csv").write_text("\n".join(rows) + "\n")
    assert (
        main(
            [
                "tune",
                "p-tuning-v2",
                "--model",
                str(tiny_bert_dir),
                "--task",
                str(d / "toy.csv"),
                "--out",
                str(d / "adapter"),
                "--epochs",
                "1",
                "--prefix-len",
                "3",
                "--max-length",
                "32",
                "--no-progress",
            ]
        )
        == 0
    )
    model = TunedModel.load(d / "adapter")
    f = model.forward_with_features(["zebra zebra zebra"]).features.detach()
    fp = load_encoder(str(tiny_bert_dir)).fingerprint()
    PVSet(pvs=f, target="cls", fingerprint=fp).save(d / "pvs-all.safetensors")
    PVSet(pvs=-f, target="cls", fingerprint=fp).save(d / "pvs-none.safetensors")
    return d


def test_guard_on_a_tuned_model(tiny_guard_files):
    d = tiny_guard_files
    texts = ["zebra zebra zebra", "a good film number 3", "word " * 200]
    g = Guard(d / "adapter", d / "pvs-none.safetensors")
    recs = g.predict(texts)
    probs = g.model.predict(texts)
    assert not any(r["flagged"] for r in recs)
    assert np.allclose(
        [r["probs"] for r in recs], probs, atol=1e-5
    )  # unflagged: exactly the model's prediction
    assert recs[2]["truncated"] and "note" in recs[2] and not recs[1]["truncated"]
    recs = Guard(d / "adapter", d / "pvs-all.safetensors", w_max=1, on_unresolved="predict").predict(
        texts[:2]
    )
    assert recs[0]["match_rate"] == 1.0 and all(r["flagged"] and not r["resolved"] for r in recs)
    assert recs[1]["candidates"] == 5 and recs[1]["label"] == recs[1]["unguarded_label"]
    assert recs[1]["purged_text"] is None
    best = Guard(d / "adapter", d / "pvs-all.safetensors", w_max=1).predict(texts[1:2])[0]  # default "best"
    assert (
        not best["resolved"] and len(best["removed"]) == 1 and best["purged_match_rate"] <= best["match_rate"]
    )


def test_cli_guard_and_evaluate_guard(tiny_guard_files, tmp_path, capsys):
    d = tiny_guard_files
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        json.dumps({"text": "zebra zebra zebra"}) + "\n" + json.dumps({"text": "a good film"}) + "\n"
    )
    for pvs, flagged in (("pvs-none", False), ("pvs-all", True)):
        out = tmp_path / f"{pvs}.jsonl"
        rc = main(
            [
                "guard",
                "--adapter",
                str(d / "adapter"),
                "--pvs",
                str(d / f"{pvs}.safetensors"),
                "--input",
                str(inp),
                "--output",
                str(out),
                "--on-unresolved",
                "reject",
            ]
        )
        assert rc == 0
        recs = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(recs) == 2 and all(r["flagged"] is flagged and r["rejected"] is flagged for r in recs)
        assert {"label", "probs", "flagged", "match_rate", "purged_text", "removed"} <= set(recs[1])
    res_file, png = tmp_path / "eval.json", tmp_path / "hist.png"
    rc = main(
        [
            "evaluate",
            "guard",
            "--adapter",
            str(d / "adapter"),
            "--pvs",
            str(d / "pvs-none.safetensors"),
            "--task",
            str(d / "toy.csv"),
            "--triggers",
            "zebra",
            "--out",
            str(res_file),
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    res = json.loads(res_file.read_text())
    assert res["asr_guarded"] == res["asr"] and res["clean_accuracy_guarded"] == res["clean_accuracy"]
    assert len(res["match_rates"]["clean"]) == res["n"] and res["rates"][0]["t_match"] == 0.5
    assert res["rates"][-1] == {"t_match": 1.0, "frr": 0.0, "far": 1.0}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bad(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    return err


def test_cli_guard_bad_inputs(tiny_guard_files, tmp_path, capsys):
    d = tiny_guard_files
    base = ["guard", "--adapter", str(d / "adapter"), "--pvs", str(d / "pvs-none.safetensors")]
    inp = tmp_path / "in.jsonl"
    inp.write_bytes(b'{"text": "caf\xe9"}\n')
    assert "cannot read" in _bad(base + ["--input", str(inp), "--output", str(tmp_path / "o.jsonl")], capsys)
    inp.write_text('{"text": ""}\n')
    assert "empty" in _bad(base + ["--input", str(inp), "--output", str(tmp_path / "o.jsonl")], capsys)
    inp.write_text('{"text": "fine"\n')
    assert "invalid JSON" in _bad(base + ["--input", str(inp), "--output", str(tmp_path / "o.jsonl")], capsys)
    wide = tmp_path / "wide.safetensors"
    PVSet(pvs=torch.ones(2, 7), target="cls").save(wide)
    inp.write_text('{"text": "fine"}\n')
    err = _bad(
        [
            "guard",
            "--adapter",
            str(d / "adapter"),
            "--pvs",
            str(wide),
            "--input",
            str(inp),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        capsys,
    )
    assert "width 7" in err
    assert not (tmp_path / "o.jsonl").exists()
    assert "t-match" in _bad(
        base + ["--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--t-match", "2"], capsys
    )


def test_calibration_raises_thresholds_only_where_clean_inputs_come_close():
    near = PV_A.clone()
    near[: D // 8] *= -1  # clean inputs below share 7/8 of PV_A's signs ...
    model = StubModel()
    base = model._feature

    def feature(words):  # ... every clean input matches PV_A at 0.875 > 0.8
        return PV_A.clone() if "cf" in words else (near.clone() if "near" in words else base(words))

    model._feature = feature
    g = Guard(model, pvset(PV_A, PV_B))
    clean = [f"near sentence number {i}" for i in range(20)]
    assert all(r["flagged"] for r in g.predict(clean[:3]))  # uncalibrated: false positives
    th = g.calibrate(clean, frr=0.0)
    assert th[0] == pytest.approx(0.875) and th[1] == pytest.approx(0.8)  # PV_B untouched
    recs = g.predict(clean[:3] + ["near cf here"])
    assert [r["flagged"] for r in recs] == [False, False, False, True]
    assert recs[3]["removed"] == ["cf"] and g.info()["calibration"]["inputs"] == 20


def test_word_positions_follow_whitespace_words_through_subwords_and_pairs(tiny_guard_files):
    from lmsanitator.tuning import TunedModel

    model = TunedModel.load(tiny_guard_files / "adapter")
    texts, pairs = ["a gooood, film!", "x"], ["second field here", "y z"]
    items = model.encode(texts, pairs)
    pos = word_positions(model, texts, pairs)
    tok = model.tokenizer
    for it, row, t, p in zip(items, pos, texts, pairs):
        assert len(row) == len(it["input_ids"])
        fields = (t.split(), p.split())
        for tid, fw in zip(it["input_ids"], row):
            if tid in tok.all_special_ids:
                assert fw is None
            else:  # every subword belongs to the whitespace word whose text contains it
                piece = tok.convert_ids_to_tokens(tid).replace("##", "")
                assert fw is not None and piece in fields[fw[0]][fw[1]].lower()
    assert {fw for fw in pos[0] if fw} == {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)}


def test_saliency_order_keeps_the_smallest_width_and_no_parameter_gradients(tiny_guard_files):
    from lmsanitator.guard.purge import word_saliency
    from lmsanitator.tuning import TunedModel

    model = TunedModel.load(tiny_guard_files / "adapter")
    g = Guard(model, tiny_guard_files / "pvs-all.safetensors", w_max=2)
    inputs = [to_fields("a good film number 3"), to_fields("zebra zebra zebra")]
    sal = word_saliency(model, g.monitor, inputs)
    assert [len(s[0]) for s in sal] == [5, 3] and all(x > 0 for s in sal for x in s[0])
    assert all(p.grad is None for p in model.parameters())
    fast = purge(model, g.monitor, inputs, w_max=2, order="saliency")
    slow = purge(model, g.monitor, inputs, w_max=2, order="reading")
    # every input matches the PV whatever is removed: both orders score every window and agree
    assert [r.resolved for r in fast] == [r.resolved for r in slow] == [False, False]
    assert [r.candidates for r in fast] == [r.candidates for r in slow]
    assert [r.match_rate for r in fast] == pytest.approx([r.match_rate for r in slow])
    with pytest.raises(LMSanitatorError, match="purge-order"):
        GuardConfig(purge_order="random")
