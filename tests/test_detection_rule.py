"""Issue 19: the clean-evidence filter (a class direction is not a PV) and PV settling."""

import math

import pytest
import torch

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.data import load_corpus
from lmsanitator.metrics import batch_entropy
from lmsanitator.models import tiny_encoder
from lmsanitator.scan import PVMiner, ScanConfig
from lmsanitator.scan.config import t_clean_div_for
from lmsanitator.scan.evidence import clean_evidence


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
    """Thresholds every tiny-model loop passes, so the filter after them decides."""
    return ScanConfig(
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
