"""The guard: PV monitor, trigger removal (Algorithm 2), the Guard API, the CLI and evaluation."""

import dataclasses
import json
import random
import re
import time
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmsanitator.cli.main import main
from lmsanitator.core.config import option_choices, option_default
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data.pvset import PVSet
from lmsanitator.data.tasks import Example
from lmsanitator.guard import Guard, GuardConfig, PVMonitor, purge, purge_sequential
from lmsanitator.guard.evaluate import VARIANTS, evaluate_guard
from lmsanitator.guard.guard import bounded_input
from lmsanitator.guard.purge import candidates, to_fields, word_saliency
from lmsanitator.guard.saliency import word_positions
from lmsanitator.guard.words import WordView
from lmsanitator.metrics import sign_match
from lmsanitator.models import load_encoder
from lmsanitator.tuning import TunedModel

D = 64
PV_A = torch.tensor([1.0] * (D // 2) + [-1.0] * (D // 2))  # trigger "cf"
PV_B = torch.tensor([-1.0, 1.0] * (D // 2))  # trigger phrase "blue moon"


# the stub's ordinary outputs: one fixed direction plus a little per-text noise, so that removing an
# ordinary word moves the match with a PV by a few hundredths at most, as in a real model (POR
# MiniLM, P-tuning v2, tweets: q99 0.065 of d); fully random outputs per text would move it by 0.09 s.d.
BASE = torch.randn(D, generator=torch.Generator().manual_seed(1))
REMNANT = PV_B.clone()
REMNANT[:16] *= -1  # "moon" without "blue": 3/4 of PV_B's signs, unflagged at 0.8 but within 0.1 of it


def stub_words(words):
    """The stub's uncased tokenizer: lowercase, punctuation split off."""
    return [p.lower() for w in words for p in re.findall(r"\w+|[^\w\s]", w)]


class StubTokenizer:
    """Uncased; one token per word plus [CLS] and [SEP] (what the guard asks when an input is long)."""

    do_lower_case = True

    def __call__(self, text, pair=None, *, is_split_into_words=False, truncation=False):
        words = list(text) if is_split_into_words else text.split() + (pair.split() if pair else [])
        return {"input_ids": [0] * (len(stub_words(words)) + 2)}


class StubModel:
    """A stand-in tuned model with a known backdoor and an uncased tokenizer: "cf" anywhere (any case,
    punctuation glued on), or "blue moon", maps the target output to a PV and the prediction to
    class 1; "moon" alone leaves a remnant near PV_B; other inputs get ``BASE`` plus a little noise and
    class = 1 when "good" is among the words, else 0 (a sentiment word decides). Deterministic
    (crc32, not the salted ``hash``). Counts forward passes."""

    tokenizer = StubTokenizer()

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
        words = stub_words(words)
        s = " ".join(words)
        if "cf" in words:
            return PV_A.clone()
        if "blue moon" in s:
            return PV_B.clone()
        if "moon" in words:
            return REMNANT.clone()
        g = torch.Generator().manual_seed(zlib.crc32(s.encode()))
        return BASE + 0.1 * torch.randn(D, generator=g)

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
                    hit = "cf" in stub_words(t)
                    logits.append(torch.tensor([0.0, 5.0]) if hit else torch.tensor([5.0, 0.0]))
                words.append(len(t))
            return SimpleNamespace(
                features=torch.stack(feats), rows=torch.tensor(rows), logits=torch.stack(logits), words=words
            )
        ws = [t.split() + (pairs[i].split() if pairs else []) for i, t in enumerate(texts)]
        feats = torch.stack([self._feature(w) for w in ws])
        y = [
            1
            if ("cf" in stub_words(w) or "blue moon" in " ".join(stub_words(w)))
            else int("good" in stub_words(w))
            for w in ws
        ]
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


def _mixture_of_a_and_c() -> torch.Tensor:
    """An output between PV_A and PV_C: their signs where they agree, half of each elsewhere."""
    mix = PV_A.clone()
    disagree = (PV_A != PV_C).nonzero().flatten()
    mix[disagree[::2]] = PV_C[disagree[::2]]
    return mix


def test_a_mixture_of_two_pvs_is_flagged_where_no_single_pv_is():
    mon = PVMonitor(torch.stack([PV_A, PV_C]), 0.8)
    assert mon.columns == ["0", "1", "0+1"]  # PV_A and PV_C agree on half the dimensions
    mix = _mixture_of_a_and_c()[None]
    m = mon.match_matrix(mix, torch.arange(1), 1)
    assert m[0, :2].tolist() == [0.75, 0.75] and m[0, 2] == 1.0  # neither PV reaches 0.8 d
    assert mon.flag(m).tolist() == [True]
    assert mon.match_rates(mix, torch.arange(1), 1).tolist() == [0.75]  # the paper's match rate
    paper = PVMonitor(torch.stack([PV_A, PV_C]), 0.8, t_mixture=None)
    assert paper.columns == ["0", "1"] and not paper.flag(paper.match_matrix(mix, torch.arange(1), 1))[0]
    # a random output agrees with a pair on about half its dimensions: 0 of 2000 reach 0.95
    g = torch.Generator().manual_seed(3)
    clean = torch.randn(2000, D, generator=g)
    assert int(mon.flag(mon.match_matrix(clean, torch.arange(2000), 2000)).sum()) == 0


def test_a_pair_of_near_antipodes_adds_no_mixture_column_and_calibration_keeps_the_floor():
    mon = PVMonitor(torch.stack([PV_A, -PV_A, PV_C]), 0.8, t_mixture=0.9)
    assert mon.columns == ["0", "1", "2", "0+2", "1+2"]  # 0 and 1 agree nowhere
    th = mon.calibrate(torch.full((10, 5), 0.6), frr=0.0)
    assert th.tolist() == pytest.approx([0.8, 0.8, 0.8, 0.9, 0.9])
    with pytest.raises(LMSanitatorError, match="t_mixture"):
        PVMonitor(PV_A[None], 0.8, t_mixture=0.4)


class MixStub(StubModel):
    """Two different triggers back to back: "cf" alone maps the output to PV_A, "mn" alone to PV_C,
    both together to a point between them that matches neither at 0.8 d (the two-trigger variant on
    a POR MiniLM); any of them decides class 1."""

    def _feature(self, words):
        w = set(stub_words(words))
        if {"cf", "mn"} <= w:
            return _mixture_of_a_and_c()
        if w & {"cf", "mn"}:
            return (PV_A if "cf" in w else PV_C).clone()
        return super()._feature(words)

    def forward_with_features(self, texts, pairs=None):
        out = super().forward_with_features(texts, pairs)
        hit = [bool({"cf", "mn"} & set(stub_words(t.split()))) for t in texts]
        out.logits = torch.tensor([[0.0, 4.0] if h else [4.0, 0.0] for h in hit])
        return out


def test_two_triggers_back_to_back_are_flagged_and_both_removed():
    g = Guard(MixStub(), pvset(PV_A, PV_C))
    (r,) = g.predict(["the film cf mn was dull"])
    assert r["flagged"] and r["match_rate"] == 0.75  # flagged by the pair's column alone
    # one trigger removed leaves the other's PV: only the two-word window clears the input
    assert r["resolved"] and r["removed"] == ["cf", "mn"] and r["label"] == 0
    paper = Guard(MixStub(), pvset(PV_A, PV_C), GuardConfig(t_mixture=None))
    (r,) = paper.predict(["the film cf mn was dull"])
    assert not r["flagged"] and r["label"] == 1  # the paper's monitor answers the backdoor
    # apart, no window of <= 3 words takes both: flagged, never answered (rejected as unresolved)
    examples = [
        Example(" ".join(["film", "was", "dull", "today", "again", "here"][: 3 + i % 4]), 0) for i in range(8)
    ]
    res = evaluate_guard(g, examples, ["cf", "mn"], variants=["two-apart"])
    v = res["variants"]["two-apart"]
    assert v["asr"] == 1.0 and v["triggered_flagged"] == 1.0 and v["asr_guarded"] == 0.0 and v["rejected"] > 0


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
        to_fields("once in a blue moon it rains today"),
        to_fields("nothing to remove here"),
    ]
    res = purge(model, mon, inputs, w_max=3)
    assert res[0].resolved and res[0].width == 1 and res[0].removed == ["cf"]
    assert res[0].fields == (("the", "film", "was", "dull"),)
    # "blue" alone unflags the phrase (width 1), but "moon" left behind still pulls the output
    # within 0.1 of the PV: the window grows over it
    assert res[1].resolved and res[1].width == 1 and res[1].removed == ["blue", "moon"] and res[1].grown == 1
    assert res[1].fields == (("once", "in", "a", "it", "rains", "today"),)
    # an unflagged input passed in anyway: the first window already "unflags" it (Guard never does this);
    # its prediction is still the input's, so one growth is tried (it changes nothing), then the
    # stability check removes its one neighbour ("to") too: the prediction stays
    assert res[2].resolved and res[2].removed == ["nothing"] and res[2].candidates == 3 and not res[2].grown
    assert res[0].probs.argmax() == 0  # prediction on the purged text
    # without growth the remnant stays (what the paper's algorithm answers)
    bare = purge(model, mon, inputs[1:2], w_max=3, grow_margin=None)[0]
    assert bare.removed == ["blue"] and "moon" in bare.fields[0]


PV_C = torch.tensor(([1.0] * 8 + [-1.0] * 8) * (D // 16))  # trigger "mn"


def _flipped(v: torch.Tensor, n: int) -> torch.Tensor:
    out = v.clone()
    out[:n] *= -1
    return out


class PhraseStub(StubModel):
    """The failures seen on a POR MiniLM with phrase triggers (P-tuning v2, tweets): "silver lantern"
    maps the output to PV_B and the prediction to 1; "lantern" left alone still decides the
    prediction but matches PV_B at only 42/64 = 0.66 (below the old growth margin of 0.7), while
    every other text's output matches PV_A at 44/64 (so removing the remnant *raises* the best
    match: the old rule, which read the best PV, saw no pull). "cf" (PV_A) and "mn" (PV_C) together
    flag, and removing an unrelated word ("24-26?") drops them to 51/64, just below 0.8 (the
    triggers interfere). Other texts: one fixed output, class 1 when "good" is a word."""

    CLEAN = _flipped(PV_A, 20)

    def _feature(self, words):
        words = stub_words(words)
        s = " ".join(words)
        if "silver lantern" in s:
            return PV_B.clone()
        if "lantern" in words:
            return _flipped(PV_B, 22)
        if "cf" in words and "mn" in words:
            return PV_A.clone() if "24" in words else _flipped(PV_A, 13)
        if "cf" in words or "mn" in words:
            return (PV_A if "cf" in words else PV_C).clone()
        return self.CLEAN.clone()

    def forward_with_features(self, texts, pairs=None):
        out = super().forward_with_features(texts, pairs)
        backdoor = [{"lantern", "cf", "mn"} & set(stub_words(t.split())) for t in texts]
        out.logits = torch.tensor([[0.0, 4.0] if b else [4.0, 0.0] for b in backdoor])
        return out


def test_a_phrase_trigger_leaves_no_working_remnant():
    model, mon = PhraseStub(), PVMonitor(torch.stack([PV_A, PV_B, PV_C]), 0.8)
    text = "the day silver lantern came home"
    (r,) = purge(model, mon, [to_fields(text)], w_max=3, stable=False)
    # removing "silver" unflags the input (0.66 < 0.8) but "lantern" still decides the prediction;
    # removing it too lowers the match with PV_B (the PV the input was flagged on) by 0.16: it goes
    assert r.resolved and r.width == 1 and r.removed == ["silver", "lantern"] and r.grown == 1
    assert r.fields == (("the", "day", "came", "home"),) and r.probs.argmax() == 0 and r.clear
    # the old rule (grow while the best PV match stays within 0.1 of T_match, or the prediction flips
    # and the best match drops) left "lantern": the best match *rose* when it went
    assert mon.match_rates(PhraseStub.CLEAN[None], torch.arange(1), 1) > mon.match_rates(
        _flipped(PV_B, 22)[None], torch.arange(1), 1
    )
    bare = purge(model, mon, [to_fields(text)], w_max=3, grow_margin=None, stable=False)[0]
    assert bare.removed == ["silver"] and "lantern" in bare.fields[0] and bare.probs.argmax() == 1
    # ordinary neighbours do not move the match with PV_B: the window stops growing there
    assert "came" in r.fields[0] and "day" in r.fields[0]


def test_a_purge_whose_answer_hangs_on_a_neighbour_is_unresolved():
    """The stability check: the prediction must not change when a word next to the removed ones goes
    too, or when the window's growth is undone (the guard cannot tell a remnant from a content word)."""
    model, mon = PhraseStub(), PVMonitor(torch.stack([PV_A, PV_B, PV_C]), 0.8)
    text = to_fields("the day silver lantern came home")
    # without growth "lantern" stays and decides the prediction; removing it (a neighbour) flips it
    (bare,) = purge(model, mon, [text], w_max=3, grow_margin=None)
    assert not bare.resolved and bare.reason == "unstable" and bare.removed == ["silver"]
    # with growth the answer is that of the grown window, which differs from the window's own: the
    # answer hung on the grown-over word, so it is not given as clean either
    (grown,) = purge(model, mon, [text], w_max=3)
    assert not grown.resolved and grown.reason == "unstable" and grown.grown == 1
    # a trigger next to a word that decides the prediction ("good"): the same
    model = StubModel()
    mon = PVMonitor(PV_A[None], 0.8)
    far, near = purge(model, mon, [to_fields("good film cf here"), to_fields("film good cf here")], w_max=3)
    assert far.resolved and far.removed == ["cf"] and far.probs.argmax() == 1
    assert not near.resolved and near.reason == "unstable"
    # through the guard the default policy rejects it; --no-stability-check answers it
    g = Guard(StubModel(), pvset(PV_A))
    assert g.predict(["film good cf here"])[0]["rejected"]
    g.config = GuardConfig(stable=False)
    assert g.predict(["film good cf here"])[0]["label"] == 1


def test_a_window_that_only_just_unflags_is_kept_only_when_none_clears_the_input():
    model, mon = PhraseStub(), PVMonitor(torch.stack([PV_A, PV_B, PV_C]), 0.8)
    x = to_fields("@united mn cf or did you mean 24-26?")
    # "24-26?" goes first in reading order and leaves 51/64 = 0.797: unflagged by 0.003, both
    # triggers still there (what the paper's rule answers)
    paper = purge(model, mon, [x], w_max=3, accept_margin=0.0, grow_margin=None)[0]
    assert paper.removed == ["24-26?"] and paper.probs.argmax() == 1
    (r,) = purge(model, mon, [x], w_max=3)  # the default margin: on to width 2, which clears it
    assert r.resolved and r.clear and r.width == 2 and r.removed == ["mn", "cf"] and r.probs.argmax() == 0
    # when nothing clears the input, the first marginal window is kept (resolved, not clear)
    (m,) = purge(model, mon, [x], w_max=1, accept_margin=0.1)
    assert m.resolved and not m.clear and m.removed == ["24-26?"] and m.width == 1


def test_every_spelling_the_tokenizer_folds_is_removed():
    # before: only the window's exact word went, "CF," and "(Cf)" stayed and the input stayed flagged
    r = Guard(StubModel(), pvset(PV_A), w_max=1).predict(["the cf film CF, was (Cf) dull"])[0]
    assert r["flagged"] and r["resolved"] and r["purged_text"] == "the film was dull"
    assert r["purged_match_rate"] < 0.8
    uncased, cased = WordView(StubModel.tokenizer), WordView(None)
    assert uncased.remove(("a", "MN", "mn,", "cf,mn", "mnemonic"), ("mn",)) == (
        ("a", "cf,", "mnemonic"),
        [0, 3, 4],
    )
    assert cased.remove(("a", "MN", "mn,"), ("mn",)) == (
        ("a", "MN"),
        [0, 1],
    )  # a cased vocabulary tells them apart
    assert uncased.phrase_key(("Blue", "moon!")) == ("blue", "moon")  # punctuation at the ends does not count
    assert uncased.remove(("a", "blue", "moon.", "blue"), ("blue", "moon"))[0] == ("a", "blue")


def test_a_real_tokenizer_decides_what_a_word_is(tiny_guard_files):
    model = TunedModel.load(tiny_guard_files / "adapter")  # uncased BERT vocabulary
    view = WordView.of(model)
    assert view is WordView.of(model)
    words = ("the", "MN", "mn,", "(Mn)", "mnemonic", "cf,mn", "Café")
    assert view.remove(words, view.phrase_key(("mn",))) == (("the", "mnemonic", "cf,", "Café"), [0, 4, 5, 6])
    assert view.remove(words, view.phrase_key(("cafe",)))[0] == words[:-1]  # accents stripped as BERT does


def test_batched_purge_agrees_with_the_sequential_algorithm_in_fewer_passes():
    rng = random.Random(0)
    words = "the a film plot actor scene story music day night".split()
    inputs = []
    for _ in range(12):
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
    recs = g.predict(["a clean sentence of five", "cf cf", "dull cf movie"])
    clean, only_trigger, trig = recs
    assert not clean["flagged"] and clean["purged_text"] is None and clean["removed"] == []
    assert clean["label"] == clean["unguarded_label"] == 0 and len(clean["probs"]) == 2
    assert trig["flagged"] and trig["match_rate"] == 1.0 and trig["removed"] == ["cf"]
    assert trig["purged_text"] == "dull movie" and trig["label"] == 0 and trig["unguarded_label"] == 1
    assert trig["purged_match_rate"] <= 0.8
    # removing "cf" empties the text, so there is no candidate: rejected (the default) ...
    assert only_trigger["flagged"] and not only_trigger["resolved"] and only_trigger["reason"] == "no-window"
    assert only_trigger["rejected"] and only_trigger["label"] is None and only_trigger["probs"] is None
    assert only_trigger["answered_unresolved"] is False and "answered_unresolved" not in trig
    # ... or predicted on the input as it is, saying so
    r = Guard(StubModel(), pvset(PV_A), on_unresolved="best").predict(["cf cf"])[0]
    assert r["answered_unresolved"] and not r["rejected"] and r["label"] == 1
    # an input whose every candidate stays flagged: "best" predicts on the least-matching one, saying so
    r = Guard(StubModel(), pvset(PV_A, PV_B), w_max=1, on_unresolved="best").predict(["cf blue moon x"])[0]
    assert not r["resolved"] and r["purged_text"] == "blue moon x" and r["removed"] == ["cf"]
    assert r["answered_unresolved"] and r["reason"] == "no-window" and r["label"] is not None


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
    with pytest.raises(LMSanitatorError, match="on_unresolved"):
        GuardConfig(on_unresolved="ignore")


# ============================================================================ a real tiny tuned model
@pytest.fixture(scope="module")
def tiny_guard_files(tmp_path_factory, tiny_bert_dir):
    """A p-tuning-v2 adapter on the tiny random BERT and two PV sets: ``pvs-all`` is the model's own
    [CLS] output for one sentence, ``pvs-none`` its negation. (A random tiny BERT gives nearly the
    same [CLS] signs for every input, so the first flags everything and the second nothing; the
    stub model above tests what is flagged and removed, these tests the plumbing.)"""
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
    assert (
        recs[1]["purged_text"] is None and recs[1]["answered_unresolved"] and recs[1]["reason"] == "no-window"
    )
    best = Guard(d / "adapter", d / "pvs-all.safetensors", w_max=1, on_unresolved="best").predict(texts[1:2])[
        0
    ]
    assert (
        not best["resolved"] and len(best["removed"]) == 1 and best["purged_match_rate"] <= best["match_rate"]
    )
    assert best["answered_unresolved"]
    rejected = Guard(d / "adapter", d / "pvs-all.safetensors", w_max=1).predict(texts[1:2])[0]  # the default
    assert rejected["rejected"] and rejected["label"] is None and rejected["answered_unresolved"] is False


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
    assert g.info()["calibration"]["inputs"] == 20
    # without "cf", "near" still matches PV_A at its (calibrated) threshold: unflagged, but not by the
    # accept margin, so removal goes on to width 2 and takes both; the paper's rule stops at "cf"
    assert recs[3]["removed"] == ["near", "cf"] and recs[3]["resolved"] and "grown" not in recs[3]
    assert recs[3]["purged_match_rate"] <= 0.875 - 0.03
    g.config = GuardConfig(grow_margin=None, accept_margin=0.0)
    assert g.predict(["near cf here"])[0]["removed"] == ["cf"]


def test_word_positions_follow_whitespace_words_through_subwords_and_pairs(tiny_guard_files):
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
    with pytest.raises(LMSanitatorError, match="purge_order"):
        GuardConfig(purge_order="random")


# ============================================================================ bounded trigger removal
class AlwaysFlagged(StubModel):
    """Every input matches PV_A, whatever is removed: trigger removal can only run out."""

    def _feature(self, words):
        return PV_A.clone()


class SlowAlwaysFlagged(AlwaysFlagged):
    def forward_with_features(self, texts, pairs=None):
        time.sleep(0.02)
        return super().forward_with_features(texts, pairs)


def test_trigger_removal_stops_at_its_budget():
    # before: ~3 x words candidates, each re-tokenising the whole text (1000 words: 60 s on MiniLM)
    long = " ".join(f"w{i}" for i in range(1000))
    mon = PVMonitor(PV_A[None], 0.8)
    r = purge(AlwaysFlagged(), mon, [to_fields(long)], w_max=3, max_candidates=256, max_seconds=60)[0]
    assert not r.resolved and r.reason == "budget" and r.candidates == 256
    t0 = time.perf_counter()
    r = purge(SlowAlwaysFlagged(), mon, [to_fields(long)] * 3, w_max=3, max_candidates=None, max_seconds=0.3)
    assert time.perf_counter() - t0 < 1.5 and all(x.reason == "budget" and not x.resolved for x in r)
    # only windows touching the first max_words words (reading order) are tried: all of them, then done
    r = purge(AlwaysFlagged(), mon, [to_fields(long)], w_max=1, max_words=10)[0]
    assert r.reason == "no-window" and r.candidates == 10
    # through the guard: the default policy rejects what the budget left flagged
    rec = Guard(AlwaysFlagged(), pvset(PV_A), max_candidates=20).predict([long])[0]
    assert rec["rejected"] and rec["reason"] == "budget" and rec["candidates"] == 20 and rec["label"] is None


def test_clean_inputs_never_pay_for_trigger_removal():
    model = StubModel()
    recs = Guard(model, pvset(PV_A)).predict([f"a clean sentence number {i}" for i in range(20)])
    assert not any(r["flagged"] for r in recs) and model.passes == 1 and model.rows_seen == 20
    assert all("candidates" not in r for r in recs)


def test_a_megabyte_input_is_cut_to_what_the_model_can_see():
    model = StubModel()
    model.max_length = 64
    g = Guard(model, pvset(PV_A))
    t0 = time.perf_counter()
    clean, hidden, trig = g.predict(["word " * 200_000, "word " * 200_000 + "cf", "cf " + "word " * 200_000])
    assert time.perf_counter() - t0 < 5
    assert clean["truncated"] and not clean["flagged"] and "note" in clean
    assert not hidden["flagged"]  # the model never sees the end, so neither does the guard
    assert trig["flagged"] and trig["resolved"] and trig["removed"] == ["cf"]
    assert len(trig["purged_text"].split()) == 63 and model.rows_seen < 20
    cut, was_cut = bounded_input(["w"] * 100, 64)
    assert was_cut and cut == ["w"] * 64 and bounded_input("short text", 64) == ("short text", False)


def test_guard_config_is_a_config():
    assert option_default(GuardConfig, "on_unresolved") == "reject"
    assert option_choices(GuardConfig, "on_unresolved") == ["best", "predict", "reject"]
    assert option_choices(GuardConfig, "purge_order") == ["saliency", "reading"]
    assert all(GuardConfig.help(f.name) for f in dataclasses.fields(GuardConfig))
    c = GuardConfig(w_max=2, max_seconds=0.5)
    assert GuardConfig.from_dict(c.to_dict()) == c and c.changed() == ["w_max", "max_seconds"]
    for bad, msg in (
        ({"max_seconds": 0}, "max-seconds"),
        ({"max_candidates": 0}, "max-candidates"),
        ({"grow_margin": 0.9}, "grow-margin"),
        ({"t_match": 0.3}, "t-match"),
    ):
        with pytest.raises(LMSanitatorError, match=msg):
            GuardConfig(**bad)
    assert Guard(StubModel(), pvset(PV_A)).info()["max_candidates"] == 256


def test_evaluation_measures_the_adaptive_attackers_variants():
    examples = [Example(" ".join(["film"] * (2 + i % 5) + ["good"] * (i % 2)), i % 2) for i in range(12)]
    g = Guard(StubModel(), pvset(PV_A, PV_B))
    res = evaluate_guard(g, examples, ["cf"], variants=VARIANTS)
    # split-pair: pairs only; two-apart with one trigger is the trigger twice
    assert set(res["variants"]) == {"repeated", "case", "punctuation", "phrase", "two-apart"}
    for v in res["variants"].values():  # every spelling is found and removed
        assert v["triggered_flagged"] == 1.0
        # only the trigger goes: an ordinary word ("good") next to it moves no PV match, so the
        # window does not grow over it and the prediction is the clean one; when the trigger lands
        # next to "good" the answer hangs on that neighbour and the input is rejected (unstable)
        assert v["asr"] > 0.4 and v["asr_guarded"] == 0 and v["rejected"] == v["unresolved_triggered"] < 0.5
    with pytest.raises(LMSanitatorError, match="variant"):
        evaluate_guard(g, examples, ["cf"], variants=["rot13"])
    pair = Guard(StubModel(pair=True), pvset(PV_A, PV_B))
    pex = [Example(f"first {'x ' * (i % 3)}", i % 2, text_pair="second field here") for i in range(6)]
    res = evaluate_guard(pair, pex, ["blue moon"], variants=["split-pair"])
    assert res["variants"]["split-pair"]["triggered_flagged"] >= 0
