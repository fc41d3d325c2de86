"""Issue 19: the clean-evidence filter (a class direction is not a PV), PV settling, PVs observed in the
defence corpus (frequent-word triggers) and every candidate's rule margins."""

import math
import zlib

import pytest
import torch

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import load_corpus
from lmsanitator.metrics import batch_entropy
from lmsanitator.models import tiny_encoder
from lmsanitator.scan import PVMiner, ScanConfig
from lmsanitator.scan.config import t_clean_div_for
from lmsanitator.scan.evidence import clean_evidence
from lmsanitator.scan.observed import T_GROUP, T_SHARE, observe, shared_words, tight_groups


@pytest.fixture(scope="module")
def sentences():
    return load_corpus("austen")[:32]


def _clean_with_a_class_cluster(d: int = 64, seed: int = 0):
    """Clean outputs of a fine-tuned classifier, constructed: 256 sentences spread as usual and 64 of
    one class gathered tightly around a class direction ``c``."""
    g = torch.Generator().manual_seed(seed)
    c = torch.zeros(d)
    c[: d // 4] = 3.0
    spread = torch.randn(256, d, generator=g)
    cluster = c + 0.2 * torch.randn(64, d, generator=g)
    return torch.cat([spread, cluster]), c


def test_threshold_follows_the_batch_and_the_random_batch_diversity():
    assert t_clean_div_for(32) == pytest.approx(-(math.log(32) - 0.25))
    # the approximation behind the threshold: unit-variance rows have diversity ~ -(ln B - 1/2)
    rows = torch.randn(200, 32, 384, generator=torch.Generator().manual_seed(0))
    div = torch.tensor([-float(batch_entropy(r)) for r in rows]).mean()
    assert div == pytest.approx(-(math.log(32) - 0.5), abs=0.05)
    assert div > t_clean_div_for(32) + 0.2


def test_clean_evidence_tells_a_class_direction_from_a_far_pv():
    clean, c = _clean_with_a_class_cluster()
    # a class direction pushed beyond the cluster: its nearest clean outputs are the cluster
    along = clean_evidence(2 * c, clean, 32)
    # a backdoor PV: far from every clean output, in no clean cluster
    far = clean_evidence(-3 * c, clean, 32)
    assert along["nn_diversity"] < t_clean_div_for(32) < far["nn_diversity"]
    assert far["nn_diversity"] > -(math.log(32) - 0.5) - 0.2  # as spread as random clean rows
    assert along["nn_mse"] < far["nn_mse"]
    # the guard's view (raw signs >= 0.8): no clean sentence would be flagged with the far PV
    assert far["clean_share"] == 0.0 and 0.0 <= far["max_match"] < 0.8
    # the same verdicts whatever the output scale (the rule works in the rows' own std units)
    scaled = clean_evidence(0.2 * 2 * c + 1.0, 0.2 * clean + 1.0, 32)
    assert scaled["nn_diversity"] == pytest.approx(along["nn_diversity"], abs=1e-4)


def _permissive(**kw) -> ScanConfig:
    """Thresholds every tiny-model loop passes, so the filter after them decides (fuzz loops only: no
    look for PVs observed in the corpus)."""
    return ScanConfig(
        observe=False,
        sentences=32,
        batch_size=16,
        max_length=40,
        loops=1,
        epochs=2,
        abort_epoch=1,
        t_l=1e-6,
        t_div=-1e-3,
        range_factor=100.0,
        **kw,
    )


def test_filter_rejects_with_its_statistic_and_threshold(sentences):
    enc = tiny_encoder("bert")
    # t_clean_div -1e-3: every nearest clean batch is "collapsed" -> the loop's PV is rejected
    strict = PVMiner(_permissive(t_clean_div=-1e-3)).fit(enc, sentences, progress=False)
    c = strict.candidates_[0]
    assert not c.accepted and strict.report_["verdict"] == "clean"
    assert c.reason.startswith("clean evidence") and "t_clean_div -0.001" in c.reason
    assert c.t_clean_div == -1e-3 and set(c.clean_evidence) >= {"nn_diversity", "nn_mse", "clean_share"}
    assert -math.log(16) - 1e-4 <= c.clean_evidence["nn_diversity"] <= -1e-3
    # the default threshold at batch 16 (-2.52): the same PV, now with its statistic above it
    ok = PVMiner(_permissive(t_clean_div=t_clean_div_for(16))).fit(enc, sentences, progress=False)
    c = ok.candidates_[0]
    assert c.accepted and ok.report_["verdict"] == "backdoored"
    assert c.t_clean_div == pytest.approx(t_clean_div_for(16))
    assert c.clean_evidence["nn_diversity"] > c.t_clean_div
    assert ok.report_["thresholds"]["t_clean_div"] == pytest.approx(t_clean_div_for(16))
    # switched off (or T_div set by hand and t_clean_div not: the collapse test is the user's): no
    # evidence taken, the report says so
    for cfg in (_permissive(clean_evidence=False, t_clean_div=-1e-3), _permissive()):
        off = PVMiner(cfg).fit(enc, sentences, progress=False)
        assert off.candidates_[0].accepted and off.candidates_[0].clean_evidence is None
        assert off.report_["thresholds"]["t_clean_div"] is None
    assert ScanConfig(batch_size=16).resolved(True)["t_clean_div"] == pytest.approx(t_clean_div_for(16))


def test_settling_after_acceptance(sentences):
    enc = tiny_encoder("bert")
    none = PVMiner(_permissive(settle_epochs=0)).fit(enc, sentences, progress=False)
    settled = PVMiner(_permissive(settle_epochs=2)).fit(enc, sentences, progress=False)
    a, b = none.candidates_[0], settled.candidates_[0]
    assert a.settle_diversity == [] and 1 <= len(b.settle_diversity) <= 2
    # the acceptance record is the epoch that passed, settling or not
    assert (a.distance, a.diversity) == (b.distance, b.diversity)
    # a settling epoch is kept only while it improves the diversity: otherwise the prompt is unchanged
    moved = not torch.equal(none.soft_prompts_[0], settled.soft_prompts_[0])
    assert moved == (b.settle_diversity[0] < b.diversity[-1])


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"settle_epochs": -1}, "settle_epochs"),
        ({"settle_pull": -0.1}, "settle_pull"),
        ({"t_clean_div": 0.5}, "t_clean_div"),
    ],
)
def test_config_refuses_bad_settings(kw, needle):
    with pytest.raises(LMSanitatorError, match=needle):
        ScanConfig(**kw)


def _accepted_iff_all_margins_negative(report: dict) -> None:
    for c in report["candidates"]:
        assert c["margins"], c
        assert c["accepted"] == all(v < 0 for v in c["margins"].values()), c


def test_every_candidate_carries_its_rule_margins(sentences):
    enc = tiny_encoder("bert")
    # a clean tiny model at the default thresholds: observed groups and fuzz loops, all rejected
    clean = PVMiner(ScanConfig(sentences=32, batch_size=16, max_length=40, loops=2)).fit(
        enc, sentences, progress=False
    )
    _accepted_iff_all_margins_negative(clean.report_)
    loops = [c for c in clean.report_["candidates"] if c["seed"] is not None]
    assert all(set(c["margins"]) >= {"t_l"} for c in loops)
    assert any(c["margins"].get("collapse", 0) > 0 or c["margins"]["t_l"] > 0 for c in loops)
    # at the defaults the collapse test is T_div or the relative spread, one margin for both
    assert all(
        "collapse" in c["margins"] and "t_div" not in c["margins"] for c in loops if len(c["margins"]) > 1
    )
    # permissive: the loop passes T_L and T_div, the clean evidence decides (in its own units)
    strict = PVMiner(_permissive(t_clean_div=-1e-3)).fit(enc, sentences, progress=False)
    m = strict.report_["candidates"][0]["margins"]
    assert set(m) == {"t_l", "t_div", "prompt_range", "t_clean_div"}
    assert m["t_l"] < 0 and m["t_div"] < 0 and m["t_clean_div"] >= 0
    ev = strict.candidates_[0].clean_evidence["nn_diversity"]
    assert m["t_clean_div"] == pytest.approx(-1e-3 - ev, abs=1e-4)
    ok = PVMiner(_permissive(t_clean_div=t_clean_div_for(16))).fit(enc, sentences, progress=False)
    _accepted_iff_all_margins_negative(strict.report_)
    _accepted_iff_all_margins_negative(ok.report_)
    assert ok.report_["verdict"] == "backdoored"


class _CorpusWithATrigger:
    """A stand-in for FuzzSetup (what scan.observed reads): a model whose output on any sentence with
    the word ``zebra`` is one fixed vector, and random otherwise."""

    def __init__(self, sentences, trigger: str | None, d: int = 32):
        g = torch.Generator().manual_seed(0)
        self.pv = 3.0 * torch.sign(torch.randn(d, generator=g))
        self.trigger = trigger
        self.config = ScanConfig(batch_size=16)
        self.sentences = list(sentences)
        self.clean_rows = self.rows_of(self.sentences)

    def rows_of(self, sentences):
        rows = []
        for s in sentences:
            g = torch.Generator().manual_seed(zlib.crc32(s.encode()))
            fired = self.trigger is not None and self.trigger in s.lower().split()
            rows.append(
                self.pv + 0.01 * torch.randn(len(self.pv), generator=g)
                if fired
                else torch.randn(len(self.pv), generator=g)
            )
        return torch.stack(rows)


def test_observed_pv_needs_a_tight_group_that_a_shared_word_reaches():
    base = [s for s in load_corpus("austen")[:400] if "zebra" not in s.lower()][:150]
    triggered = [f"{s} zebra" for s in base[:15]]
    backdoored = _CorpusWithATrigger(base + triggered, "zebra")
    obs = observe(backdoored)
    assert obs[0].group_var < T_GROUP and obs[0].word == "zebra" and obs[0].land_share >= T_SHARE
    assert obs[0].is_pv and all(v < 0 for v in obs[0].margins().values())
    # the same corpus without the backdoor: no group is tight, and no word reaches one
    clean = observe(_CorpusWithATrigger(base + triggered, None))
    assert not any(g.is_pv for g in clean)
    assert all(g.group_var > T_GROUP and g.land_share < T_SHARE for g in clean)
    # tight rows that no word reaches (duplicated sentences, a class cluster): group, but not a PV
    dup = _CorpusWithATrigger(base, "zebra")
    dup.clean_rows = torch.cat([dup.clean_rows[:140], dup.pv + 0.01 * torch.randn(10, len(dup.pv))])
    dup_obs = observe(dup)
    assert dup_obs[0].group_var < T_GROUP and not dup_obs[0].is_pv and dup_obs[0].margins()["land_share"] > 0


def test_tight_groups_and_shared_words():
    z = torch.randn(60, 16, generator=torch.Generator().manual_seed(1))
    z[10:20] = 0.01 * z[10:20] + 2.0
    groups = tight_groups(z, k=8, max_groups=2)
    assert set(groups[0].rows) <= set(range(10, 20)) and groups[0].group_var < 0.01
    assert not set(groups[1].rows) & set(groups[0].rows)  # disjoint
    corpus = ["the cat sat", "the dog ran", "the zebra sat", "a zebra ran", "the bird flew"]
    # 'zebra' is in every group sentence and rare elsewhere; 'the' is everywhere
    assert shared_words(["the zebra sat", "a zebra ran"], corpus)[0] == "zebra"


@pytest.mark.parametrize("arch,target", [("bert", "cls"), ("bert", "tokens"), ("xlnet", "cls")])
def test_clean_rows_know_their_sentences(arch, target):
    """scan.observed reads the sentence behind each cached clean row and the outputs of new sentences
    (``rows_of``): a sentence's fresh output must be its cached row."""
    from lmsanitator.scan.setup import FuzzSetup

    sents = load_corpus("austen")[:48]
    enc = tiny_encoder(arch)
    cfg = ScanConfig(target=target, sentences=48, batch_size=16, max_length=48)
    setup = FuzzSetup.prepare(enc, sents, cfg)
    assert len(setup.sentences) == len(setup.clean_rows) == 48 and sorted(setup.sentences) == sorted(sents)
    for i in (0, 17, 47):
        again = setup.rows_of([setup.sentences[i]] * 16)
        assert again.shape == (16, setup.clean_rows.shape[1])
        assert torch.allclose(again, setup.clean_rows[i].expand_as(again), atol=1e-4)


def test_an_observed_pv_is_the_scans_finding(sentences, monkeypatch):
    """The miner's side of scan.observed: a group that passes both rules is a PV (no fuzz loop in
    detection), its landed clean rows leave the clean references, and search mode mines on."""
    import lmsanitator.scan.miner as miner_mod
    from lmsanitator.scan import PVSet
    from lmsanitator.scan.observed import Observation

    seen = {}

    def fake_observe(setup):
        # rows 0-8 collapsed together and reached by a word: what a frequent-word trigger leaves
        setup.clean_rows[:9] = setup.clean_rows[0]
        seen["row"] = setup.clean_rows[0].clone()
        return [
            Observation(rows=list(range(9)), group_var=0.01, word="zebra", land_share=1.0),
            Observation(rows=list(range(9, 18)), group_var=0.3, word="the", land_share=0.0),
        ]

    monkeypatch.setattr(miner_mod, "observe", fake_observe)
    enc = tiny_encoder("bert")
    kw = dict(sentences=32, batch_size=16, max_length=40, loops=2)
    det = PVMiner(ScanConfig(**kw)).fit(enc, sentences, progress=False)
    rep = det.report_
    assert rep["verdict"] == "backdoored" and rep["loops_run"] == 0
    (c,) = rep["candidates"]  # detection stops at the first PV, also among the groups
    assert c["seed"] is None and c["accepted"] and c["observed"]["word"] == "zebra"
    assert all(v < 0 for v in c["margins"].values())
    assert det.found_[0].soft_prompt is None and det.found_[0].seed is None
    assert torch.allclose(det.pvs_[0], seen["row"].cpu())  # the group's mean clean output
    assert len(det.setup_.clean_rows) <= 32 - 9 and len(det.setup_.sentences) == len(det.setup_.clean_rows)
    search = PVMiner(ScanConfig(mode="search", antipode_probe=False, **kw)).fit(
        enc, sentences, progress=False
    )
    seeds = [c["seed"] for c in search.report_["candidates"]]
    assert seeds == [None, None, 0, 1] and search.report_["candidates"][1]["margins"]["land_share"] > 0
    pvset = PVSet.from_miner(search, enc)  # a PV without a soft prompt keeps its row (NaN prompt)
    assert len(pvset.pvs) >= 1 and (pvset.soft_prompts is None or len(pvset.soft_prompts) == len(pvset.pvs))


def _loop_state(sentences, **kw):
    from lmsanitator.scan import fuzz
    from lmsanitator.scan.setup import FuzzSetup

    cfg = _permissive(**kw)
    cfg.check()
    setup = FuzzSetup.prepare(tiny_encoder("bert"), sentences, cfg)
    return setup, fuzz._start_loop(setup, 0, [], None, False)


def test_the_relative_spread_is_batch_variance_over_displacement(sentences):
    from lmsanitator.scan import fuzz

    setup, loop = _loop_state(sentences)
    b = setup.batches[0]
    _, l_d, _, spread = fuzz._fuzz_losses(setup, b, loop)
    with torch.no_grad():
        f = setup.z(setup.step_features(b, loop.prompt))
        clean = setup.z(setup.clean_of(b))
    assert spread == pytest.approx(float(f.var(dim=0).mean() / ((f - clean) ** 2).mean()), rel=1e-4)
    assert float(-l_d.detach()) == pytest.approx(float(((f - clean) ** 2).mean()), rel=1e-4)
    # a whole loop records one epoch mean per epoch
    fuzz._train(setup, loop)
    assert len(loop.cand.spread) == loop.cand.epochs_run and all(s > 0 for s in loop.cand.spread)


def test_settling_trains_on_the_collapse_loss_alone_by_default(sentences):
    from lmsanitator.scan import fuzz

    assert ScanConfig().settle_epochs > 0 and ScanConfig().settle_pull == 0.0
    setup, loop = _loop_state(sentences)
    b = setup.batches[0]
    loop.settling = True
    loss, l_d, l_div, _ = fuzz._fuzz_losses(setup, b, loop)
    assert float(loss.detach()) == pytest.approx(
        float(l_div.detach())
    )  # no distance loss: the prompt is not pushed further
    setup.config.settle_pull = 0.5
    loss, l_d, l_div, _ = fuzz._fuzz_losses(setup, b, loop)
    assert float(loss.detach()) == pytest.approx(
        float((l_div - 0.5 * l_d).detach())
    )  # l_d < 0: a pull back towards clean


def test_collapse_by_either_test_when_t_spread_is_on():
    from lmsanitator.scan.fuzz import Candidate, _collapse_margins

    th = {"t_div": -3.446, "t_spread": 0.005}
    # the Wasserstein case: diversity short of T_div, but far out for its spread
    w = Candidate(
        seed=0, epochs_run=3, distance=[-30.0], diversity=[-3.43], lr_switch_step=None, spread=[0.0025]
    )
    m = _collapse_margins(th, w)
    assert list(m) == ["collapse"] and m["collapse"] == pytest.approx(math.log(0.5))
    # neither test passes: the margin is the closer of the two
    c = Candidate(
        seed=0, epochs_run=3, distance=[-5.0], diversity=[-3.43], lr_switch_step=None, spread=[0.01]
    )
    assert _collapse_margins(th, c)["collapse"] == pytest.approx(min(-3.43 + 3.446, math.log(2)))
    # T_div alone passes: collapsed whatever the spread
    t = Candidate(
        seed=0, epochs_run=2, distance=[-5.0], diversity=[-3.45], lr_switch_step=None, spread=[0.05]
    )
    assert _collapse_margins(th, t)["collapse"] == pytest.approx(-3.45 + 3.446)
    # the rule off: the paper's T_div margin under its own name
    assert _collapse_margins({"t_div": -3.446, "t_spread": None}, c) == {"t_div": pytest.approx(0.016)}


def test_t_spread_settings():
    assert ScanConfig(t_spread=0.0).resolved(True)["t_spread"] is None  # 0: off
    assert ScanConfig(t_spread=0.004).resolved(True)["t_spread"] == 0.004
    # a hand-set T_div is the whole collapse test (the paper's rule, ablations), as for t_clean_div
    assert ScanConfig(t_div=-3.44).resolved(True)["t_spread"] is None
    with pytest.raises(LMSanitatorError, match="t_spread"):
        ScanConfig(t_spread=-0.1)
