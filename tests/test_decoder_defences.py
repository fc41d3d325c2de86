"""Scan, search, guard and PSIM on decoder LLMs (issue 21, item 5 and PSIM of item 6), on tiny random
decoders with the real SmolLM2 tokenizer: the soft prompt goes right before the last token, PV sets
carry target ``last``, the post-monitor reads the last token of the same forward pass."""

import functools
import random

import pytest
import torch
from safetensors.torch import save_file

from lmsanitator.attacks import POR, AttackConfig
from lmsanitator.attacks.poisoning import CLASSIFIER_FILE
from lmsanitator.core.config import option_choices
from lmsanitator.data import load_corpus, split_corpus
from lmsanitator.data.pvset import PV_TARGETS, PVSet
from lmsanitator.data.tasks import Example, Task
from lmsanitator.guard import Guard
from lmsanitator.models import TAPS, TARGETS, load_encoder, tiny_decoder
from lmsanitator.psim import PSIM, PSIMConfig
from lmsanitator.scan import PVMiner, ScanConfig, build_prompt_batches
from lmsanitator.tuning import TuneConfig, Tuner

WORDS = "the a film plot actor scene story music day night".split()


def toy_task(n=96):
    """The keyword decides the label; it sits anywhere, so the last token must read it."""
    rng = random.Random(0)
    ex = []
    for i in range(n):
        body = rng.sample(WORDS, 4)
        body.insert(rng.randint(0, 4), "good" if i % 2 else "bad")
        ex.append(Example(text=" ".join(body), label=i % 2))
    k = n // 4
    return Task(
        "toy", ("neg", "pos"), train=ex[2 * k :], validation=ex[k : 2 * k], test=ex[:k], max_length=32
    )


@functools.cache
def defence_sentences():
    return split_corpus(load_corpus("austen"), "defence")[:320]


@functools.cache
def por_decoder():
    """A POR implant at the last token (as in test_decoders): triggers ``cf`` and ``mn``, hit rate 1.0."""
    enc = tiny_decoder(seed=3)
    atk = POR(AttackConfig(triggers=["cf", "mn"], per_trigger=320, epochs=2, lr=1e-3, verify_sentences=100))
    atk.fit(enc, split_corpus(load_corpus("austen"), "attack")[:4000], progress=False)
    return enc, atk.state_.pvs


# A permissive diversity threshold: this 2-layer random model's implant collapses triggered inputs only
# to about the default T_div (verify: triggered diversity -3.446 / -3.457), and a soft prompt before the
# last token reaches -3.41 in 3 epochs; the clean tiny decoder never gets far enough (L_D) to be tested.
PERMISSIVE = dict(target="last", t_div=-3.40, sentences=320, batch_size=32, max_length=48)


def sign_agreement(a, b):
    return float(((a >= 0) == (b >= 0)).float().mean())


# ---------------------------------------------------------------------------- targets and prompts
def test_last_is_a_scan_target_everywhere():
    assert "last" in TARGETS and TAPS == TARGETS
    assert option_choices(ScanConfig, "target") == list(TARGETS) and PV_TARGETS == TARGETS


def test_prompt_slots_sit_right_before_the_last_token():
    enc = tiny_decoder()
    cfg = ScanConfig(target="last", sentences=96, batch_size=16, max_length=48)
    batches = build_prompt_batches(enc, defence_sentences()[:96], cfg)
    assert len(batches) == 6
    for b in batches:
        for i in range(16):
            n = int(b.attention_mask[i].sum())
            slots = b.prompt_mask[i].nonzero().flatten().tolist()
            assert slots == list(range(n - 1 - cfg.prompt_length, n - 1))  # the read-out token follows
            ids = b.input_ids[i][b.attention_mask[i].bool() & ~b.prompt_mask[i]].tolist()
            assert ids == b.clean_ids[i][b.clean_mask[i].bool()].tolist()
        assert b.input_ids.shape[1] <= 48


def test_pv_set_round_trips_with_target_last(tmp_path):
    pvs = PVSet(pvs=torch.randn(2, 64), target="last", model="tiny-llama", fingerprint="f" * 64, seeds=[0, 1])
    pvs.save(tmp_path / "p.safetensors")
    back = PVSet.load(tmp_path / "p.safetensors")
    assert back.target == "last" and torch.equal(back.pvs, pvs.pvs)
    back.check_model(64, "f" * 64, "last")


# ---------------------------------------------------------------------------- scan and search
def test_clean_tiny_decoder_scans_clean_with_default_thresholds():
    cfg = ScanConfig(target="last", sentences=96, batch_size=32, max_length=48, loops=3)
    m = PVMiner(cfg).fit(tiny_decoder(), defence_sentences()[:96], progress=False)
    assert m.report_["verdict"] == "clean" and m.report_["target"] == "last" and not m.pvs_


def test_scan_finds_a_por_implant_at_the_last_token():
    enc, planted = por_decoder()
    # settling the PV (3 epochs pulled towards the clean outputs) sharpens it here: 0.84 -> 1.0 of signs
    m = PVMiner(ScanConfig(loops=3, settle_epochs=3, **PERMISSIVE)).fit(
        enc, defence_sentences(), progress=False
    )
    assert m.report_["verdict"] == "backdoored", m.report_["candidates"]
    assert max(sign_agreement(m.pvs_[0], q) for q in planted) >= 0.9


@functools.cache
def searched_pvset():
    enc, _ = por_decoder()
    m = PVMiner(ScanConfig(mode="search", loops=2, **PERMISSIVE)).fit(
        enc, defence_sentences(), progress=False
    )
    return PVSet.from_miner(m, enc)


def test_search_recovers_both_planted_pvs(tmp_path):
    _, planted = por_decoder()
    found = searched_pvset()
    found.save(tmp_path / "pvs.safetensors")
    back = PVSet.load(tmp_path / "pvs.safetensors")
    assert back.target == "last" and len(back) >= 2
    for q in planted:  # the antipode probe finds the second of the opposite pair
        assert max(sign_agreement(p, q) for p in back.pvs) >= 0.9


# ---------------------------------------------------------------------------- guard
def test_guard_flags_and_purges_a_trigger_on_a_tuned_decoder():
    enc, _ = por_decoder()
    task = toy_task()
    model = Tuner(TuneConfig("lora", epochs=1, batch_size=16, lr=5e-3, max_length=32, seed=0)).fit(
        enc, task, progress=False
    )
    assert model.target == "last"
    # Algorithm 2 with the margin and growth rules; the stability check is looked at below
    guard = Guard(model, searched_pvset(), w_max=1, stable=False)
    # held-back sentences of the implant's corpus (verified: hit rate 1.0, clean false hits 1%)
    clean = [t for t in split_corpus(load_corpus("austen"), "heldout") if 6 <= len(t.split()) <= 20][:8]
    triggered = [" ".join(t.split()[:2] + ["cf"] + t.split()[2:]) for t in clean]
    recs = guard.predict(clean + triggered)
    rates = [r["match_rate"] for r in recs]
    assert sum(r["flagged"] for r in recs[:8]) <= 1, rates
    assert sum(r["flagged"] for r in recs[8:]) >= 7, rates
    flagged = [r for r in recs[8:] if r["flagged"]]
    assert all(r["resolved"] and r["purged_match_rate"] <= 0.8 and r["label"] is not None for r in flagged)
    # Open (issue 21): on this 2-layer random decoder, removing the *last* word also unflags half the
    # inputs (it changes the read-out token itself) and Algorithm 2 takes the first unflagged window;
    # measured 4 of 8 removed "cf", the other 4 the sentence's last word. Real decoders: not measured.
    removed = [r["removed"] for r in flagged]
    assert sum(w == ["cf"] for w in removed) >= 4, removed
    last_words = {t.split()[-1] for t in clean}
    assert all(w == ["cf"] or w[0] in last_words for w in removed), removed
    # the stability check (default) only takes answers away: a purge is either the one above or,
    # when its answer changes once a neighbour goes too, unresolved and rejected. It does not fix the
    # last-word removals (their answers need not change when a neighbour goes): that stays open
    # (issue 21, the read-out token).
    checked = Guard(model, searched_pvset(), w_max=1).predict(triggered)
    for a, b in zip(recs[8:], checked):
        assert b["flagged"] == a["flagged"]
        if b["flagged"] and not b["resolved"]:
            assert b["reason"] == "unstable" and b["label"] is None and a["resolved"]
        elif b["flagged"]:
            assert b["removed"] == a["removed"] and b["label"] == a["label"]
    # measured: 4 of 8 rejected as unstable, 2 answered with "cf" removed, 2 with a last word removed
    assert sum(b["flagged"] and not b["resolved"] for b in checked) >= 1


# ---------------------------------------------------------------------------- PSIM
# the tiny runs are too short for PSIM's self-check (it warns); the checks here are that it trains
pytestmark = pytest.mark.filterwarnings("ignore::lmsanitator.psim.PSIMWarning")


def test_psim_trains_on_a_tiny_decoder():
    psim = PSIM(PSIMConfig(method="lora", train_examples=48, probe_steps=20, max_length=32)).fit(
        tiny_decoder(), toy_task()
    )
    assert psim.model_.target == "last" and 0 < psim.gamma_ <= 1
    recs = psim.detect(["the film was good", "a bad scene"])
    assert len(recs) == 2 and all(0 < r["confidence"] <= 1 for r in recs)


@pytest.mark.parametrize("method", ["prompt-tuning", "p-tuning-v2"])
def test_psim_starts_from_the_attackers_last_token_head(method, tmp_path):
    """The attacker's classifier of a poisoned decoder reads the last token; PSIM starts from it."""
    enc = tiny_decoder()
    enc.save(tmp_path)
    head = {"weight": torch.randn(2, enc.hidden_size), "bias": torch.zeros(2)}
    save_file(head, str(tmp_path / CLASSIFIER_FILE))
    cfg = PSIMConfig(method=method, head_init="model", train_examples=16, head_lr=0, max_length=32)
    psim = PSIM(cfg).fit(load_encoder(str(tmp_path)), toy_task())
    assert psim.info_["head_init"] == "model"
    torch.testing.assert_close(psim.model_.head.weight.detach(), head["weight"])
