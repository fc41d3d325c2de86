import dataclasses
import json
import math

import pytest
import torch

from lmsanitator.cli.main import main
from lmsanitator.core.config import option_choices, option_default
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.runtime import available_cores
from lmsanitator.data import load_corpus
from lmsanitator.models import TARGETS, special_ids, tiny_encoder
from lmsanitator.scan import FoundPV, PVMiner, PVSet, ScanConfig, build_prompt_batches, t_div_for


@pytest.fixture(scope="module")
def sentences():
    return load_corpus("austen")[:96]


def test_detection_and_search_train_their_own_way():
    detect, search = ScanConfig(), ScanConfig(mode="search")
    assert (detect.epochs, detect.abort_epoch, detect.resolved(True)["lr"]) == (3, 1, 3e-3)
    assert (search.epochs, search.abort_epoch, search.resolved(True)["lr"]) == (6, 2, 1e-3)
    # search mode keeps mining after the first PV without being told twice
    assert detect.stop_at_first is True and search.stop_at_first is False
    assert ScanConfig(mode="search", stop_at_first=True).stop_at_first is True
    assert ScanConfig(epochs=4).abort_epoch == 1  # the paper's check: end of epoch 2 of 4
    with pytest.raises(LMSanitatorError, match="mode"):
        ScanConfig(mode="hunt")
    with pytest.raises(LMSanitatorError, match="target"):
        ScanConfig(target="pooler")


def test_scan_config_options_and_changed():
    """One Config: Literal options (the CLI's choices), help on every field, the CLI's max_length,
    and ``changed`` names what was chosen - a mode's own defaults are not a choice."""
    assert option_choices(ScanConfig, "target") == list(TARGETS)
    assert option_choices(ScanConfig, "mode") == ["detect", "search"]
    assert all(ScanConfig.help(f.name) for f in dataclasses.fields(ScanConfig))
    assert option_default(ScanConfig, "max_length") == 64  # what `lmsanitator scan` uses
    assert ScanConfig().changed() == [] and ScanConfig(mode="search").changed() == ["mode"]
    assert ScanConfig(mode="search", stop_at_first=False, epochs=6).changed() == ["mode"]
    assert ScanConfig(epochs=4, t_l=0.5, max_length=128).changed() == ["max_length", "epochs", "t_l"]
    assert ScanConfig.from_dict(ScanConfig(epochs=4).to_dict()) == ScanConfig(epochs=4)
    with pytest.raises(LMSanitatorError, match="unknown option"):
        ScanConfig.from_dict({"epoch": 3})


def test_t_div_is_derived_from_the_batch_size():
    assert t_div_for(32) == pytest.approx(-3.446, abs=1e-3)
    assert t_div_for(16) == pytest.approx(-(math.log(16) - 0.0197))


@pytest.mark.parametrize(
    "arch,target", [("bert", "cls"), ("bert", "mask"), ("bert", "tokens"), ("xlnet", "cls")]
)
def test_prompt_batches(arch, target, sentences):
    enc = tiny_encoder(arch)
    cfg = ScanConfig(target=target, sentences=96, batch_size=16, max_length=48)
    batches = build_prompt_batches(enc, sentences, cfg)
    assert len(batches) == 96 // 16  # full batches only
    specials = set(special_ids(enc.tokenizer))
    for b in batches:
        assert b.input_ids.shape[0] == 16
        assert (b.prompt_mask.sum(dim=1) == cfg.prompt_length).all()
        for i in range(16):
            ids = b.input_ids[i][b.attention_mask[i].bool() & ~b.prompt_mask[i]].tolist()
            clean = b.clean_ids[i][b.clean_mask[i].bool()].tolist()
            assert ids == clean  # the clean input is exactly the prompted one without the prompt
            slots = b.prompt_mask[i].nonzero().flatten().tolist()
            assert slots == list(range(slots[0], slots[0] + cfg.prompt_length))  # contiguous
            before = [t for t in b.input_ids[i][: slots[0]].tolist() if t not in specials]
            assert len(before) >= 1  # inserted after at least one word
            if target == "mask":
                assert clean.count(enc.tokenizer.mask_token_id) == 1
        assert b.input_ids.shape[1] <= 48


def test_miner_is_deterministic_and_reports(sentences):
    enc = tiny_encoder("bert")
    cfg = ScanConfig(
        sentences=64, batch_size=16, max_length=40, loops=2, epochs=2, abort_epoch=1, stop_at_first=False
    )
    a = PVMiner(cfg).fit(enc, sentences[:64], progress=False)
    b = PVMiner(cfg).fit(enc, sentences[:64], progress=False)
    assert [c.distance for c in a.candidates_] == [c.distance for c in b.candidates_]
    rep = a.report_
    # a random tiny BERT has no PV: its batches stay diverse
    assert rep["verdict"] == "clean" and rep["loops_run"] == 2 and rep["pvs"] == []
    assert rep["thresholds"]["t_div"] == pytest.approx(t_div_for(16))
    assert rep["changed"] == [
        "sentences",
        "batch_size",
        "max_length",
        "epochs",
        "abort_epoch",
        "loops",
        "stop_at_first",
    ]
    loops = [c for c in rep["candidates"] if c["seed"] is not None]
    observed = [c for c in rep["candidates"] if c["seed"] is None]
    assert [c["seed"] for c in loops] == [0, 1] and len(observed) == 3  # scan.observed's groups
    for c in loops:
        assert not c["accepted"] and c["reason"].startswith("diversity")
    for c in observed:
        assert not c["accepted"] and c["reason"].startswith("no PV in the defence corpus")
    json.dumps(rep)


def test_cached_clean_outputs_equal_recomputed(sentences):
    """The cache changes the cost, not the result: same losses as recomputing every step."""
    enc = tiny_encoder("bert")
    cfg = ScanConfig(sentences=32, batch_size=16, max_length=40, loops=1, epochs=2, abort_epoch=1)
    fast = PVMiner(cfg).fit(enc, sentences[:32], progress=False)
    naive = PVMiner(cfg)
    naive._recompute_clean = True
    naive.fit(enc, sentences[:32], progress=False)
    assert fast.candidates_[0].distance == pytest.approx(naive.candidates_[0].distance, rel=1e-5)


@pytest.mark.parametrize("permissive", [False, True])
def test_parallel_detection_matches_sequential(permissive, sentences):
    """Forked one-thread workers give the sequential scan's candidates, in seed order, and stop at
    the first legit PV (permissive thresholds: seed 0 already passes, its PV is handed back)."""
    enc = tiny_encoder("bert")
    kw = dict(t_l=1e-6, t_div=-1e-3, range_factor=100.0) if permissive else {}
    runs = {}
    for workers in (1, 2):
        cfg = ScanConfig(
            sentences=32,
            batch_size=16,
            max_length=40,
            loops=3,
            epochs=2,
            abort_epoch=1,
            workers=workers,
            **kw,
        )
        m = PVMiner(cfg).fit(enc, sentences[:32], progress=False)
        assert m.report_["workers"] == workers
        runs[workers] = m
    seq, par = runs[1], runs[2]
    assert [c.seed for c in par.candidates_] == [c.seed for c in seq.candidates_]
    assert par.loops_run_ == seq.loops_run_ == (1 if permissive else 3)
    for a, b in zip(seq.candidates_, par.candidates_):
        assert b.distance == pytest.approx(a.distance, rel=1e-4)
        assert (a.accepted, a.pv_index) == (b.accepted, b.pv_index)
    assert len(par.pvs_) == len(seq.pvs_) == (1 if permissive else 0)
    if permissive:
        assert torch.allclose(par.pvs_[0], seq.pvs_[0], rtol=1e-4, atol=1e-5)
        assert torch.allclose(par.soft_prompts_[0], seq.soft_prompts_[0], rtol=1e-4, atol=1e-5)
        assert par.pv_seeds_ == [0] and par.report_["verdict"] == "backdoored"
    # search mode never forks: its loops depend on the PVs found before them
    search = PVMiner(
        ScanConfig(
            sentences=32,
            batch_size=16,
            max_length=40,
            loops=1,
            epochs=2,
            abort_epoch=1,
            workers=2,
            stop_at_first=False,
            mode="search",
        )
    )
    assert search.fit(enc, sentences[:32], progress=False).report_["workers"] == 1


def test_acceptance_filters_and_path_loss(sentences):
    """With permissive thresholds every seed yields a PV; uniqueness and path loss then apply."""
    enc = tiny_encoder("bert")
    cfg = ScanConfig(
        observe=False,
        sentences=32,
        batch_size=16,
        max_length=40,
        loops=3,
        epochs=2,
        abort_epoch=1,
        t_l=1e-6,
        t_div=-1e-3,
        range_factor=100.0,
        stop_at_first=False,
    )
    m = PVMiner(cfg).fit(enc, sentences[:32], progress=False)
    # every loop and its antipode probe (stop_at_first=False probes) yield a unique PV
    assert len(m.pvs_) == 6 and m.probes_run_ == 3 and m.report_["verdict"] == "backdoored"
    assert all(c.accepted for c in m.candidates_) and [c.pv_index for c in m.candidates_] == list(range(6))
    assert all(c.min_mse_to_pvs is None or c.min_mse_to_pvs >= cfg.t_l for c in m.candidates_)
    assert len(m.soft_prompts_) == len(m.pvs_) == len(m.found_)
    assert m.found_[1].probe_of == 0 and m.found_[1].seed == m.found_[0].seed == 0
    assert m.soft_prompts_[0].shape == (cfg.prompt_length, enc.input_embeddings().shape[1])
    strict = PVMiner(
        ScanConfig(
            observe=False,
            sentences=32,
            batch_size=16,
            max_length=40,
            loops=1,
            epochs=2,
            abort_epoch=1,
            t_l=1e-6,
            t_div=-1e-3,
            range_factor=1.0,
        )
    ).fit(enc, sentences[:32], progress=False)
    c = strict.candidates_[0]
    # two epochs keep the soft prompt inside the embedding matrix's own range (range_factor 1)
    assert c.accepted and c.prompt_in_range and c.prompt_excess <= 0


def test_pvset_round_trip_and_checks(tmp_path):
    s = PVSet(
        pvs=torch.randn(3, 8),
        target="cls",
        model="m",
        fingerprint="abc",
        soft_prompts=torch.randn(3, 7, 8),
        seeds=[1, 4, 9],
        losses=[{}, {}, {}],
        last_seed=12,
    )
    f = tmp_path / "p.safetensors"
    s.save(f)
    t = PVSet.load(f)
    assert torch.equal(t.pvs, s.pvs) and t.seeds == [1, 4, 9] and t.last_seed == 12 and len(t) == 3
    t.check_model(8, "abc", "cls")
    with pytest.raises(LMSanitatorError, match="width 8"):
        t.check_model(16)
    with pytest.raises(LMSanitatorError, match="another model"):
        t.check_model(8, "zzz")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(LMSanitatorError, match="not a readable"):
        PVSet.load(bad)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _scan_args(model_dir, corpus, *extra):
    return [
        "--corpus",
        str(corpus),
        "--sentences",
        "32",
        "--batch-size",
        "16",
        "--max-length",
        "40",
        "--epochs",
        "2",
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize(
    "thresholds,expect",
    [
        ([], 0),  # a random tiny BERT is clean at the default thresholds
        (["--t-l", "1e-6", "--t-div", "-0.001"], 1),  # permissive: seed 0 already passes
    ],
)
def test_cli_scan_report_and_sarif(thresholds, expect, tiny_bert_dir, small_corpus_file, tmp_path, capsys):
    rep, sarif = tmp_path / "r.json", tmp_path / "r.sarif"
    rc = main(
        [
            "scan",
            str(tiny_bert_dir),
            "--loops",
            "2",
            "--report",
            str(rep),
            "--sarif",
            str(sarif),
            *_scan_args(tiny_bert_dir, small_corpus_file, *thresholds),
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == expect and len(out) == 1
    r = json.loads(rep.read_text())
    assert r["verdict"] == ("backdoored" if expect else "clean")
    assert r["loops_run"] == (1 if expect else 2) and len(r["pvs"]) == expect
    for k in ("model", "corpus", "loops_run", "seconds", "thresholds", "candidates", "pvs", "config"):
        assert k in r
    # the CLI's flags are the chosen values; everything else is ScanConfig's default, except the
    # worker count, which the CLI sets to the cores this process may use (1 on one core: the default)
    workers = ["workers"] if available_cores() > 1 else []
    assert (
        r["changed"]
        == ["sentences", "batch_size", "max_length", "epochs", "loops"]
        + (["t_l", "t_div"] if expect else [])
        + workers
    )
    s = json.loads(sarif.read_text())
    assert s["version"] == "2.1.0" and len(s["runs"][0]["results"]) == expect


def test_cli_search_saves_and_resumes(tiny_bert_dir, small_corpus_file, tmp_path, capsys):
    out = tmp_path / "pvs.safetensors"
    permissive = ["--t-l", "1e-6", "--t-div", "-0.001"]
    rc = main(
        [
            "search",
            str(tiny_bert_dir),
            "--out",
            str(out),
            "--loops",
            "2",
            *_scan_args(tiny_bert_dir, small_corpus_file, *permissive),
        ]
    )
    assert rc == 1 and out.is_file()
    first = PVSet.load(out)
    # permissive thresholds: both seeds and their antipode probes yield a PV
    assert first.last_seed == 1 and len(first) == 4 and first.seeds == [0, 0, 1, 1]
    assert [x.get("probe_of") for x in first.losses] == [None, 0, None, 2]
    rc = main(
        [
            "search",
            str(tiny_bert_dir),
            "--out",
            str(out),
            "--loops",
            "1",
            "--resume",
            *_scan_args(tiny_bert_dir, small_corpus_file, *permissive),
        ]
    )
    second = PVSet.load(out)
    assert second.last_seed == 2 and len(second) == 6 and second.seeds == [0, 0, 1, 1, 2, 2]
    assert torch.equal(second.pvs[: len(first)], first.pvs)  # earlier PVs are kept
    # refusing to clobber, and resuming on another model
    assert (
        main(["search", str(tiny_bert_dir), "--out", str(out), *_scan_args(tiny_bert_dir, small_corpus_file)])
        == 2
    )
    other = PVSet(pvs=torch.randn(1, 64), target="cls")
    o = tmp_path / "other.safetensors"
    other.save(o)
    assert (
        main(
            [
                "search",
                str(tiny_bert_dir),
                "--out",
                str(o),
                "--resume",
                *_scan_args(tiny_bert_dir, small_corpus_file),
            ]
        )
        == 2
    )
    assert "does not match" in capsys.readouterr().err


def test_cli_search_patience_spans_resumes(tiny_bert_dir, small_corpus_file, tmp_path, capsys):
    out = tmp_path / "none.safetensors"
    strict = ["--t-div", "-100"]  # nothing can be accepted: every loop counts against the patience
    assert (
        main(
            [
                "search",
                str(tiny_bert_dir),
                "--out",
                str(out),
                "--loops",
                "2",
                "--patience",
                "5",
                *_scan_args(tiny_bert_dir, small_corpus_file, *strict),
            ]
        )
        == 0
    )
    assert PVSet.load(out).last_seed == 1 and len(PVSet.load(out)) == 0
    before = out.read_bytes()
    # 2 loops without a PV already: a resume with --patience 2 has nothing left to do
    assert (
        main(
            [
                "search",
                str(tiny_bert_dir),
                "--out",
                str(out),
                "--resume",
                "--patience",
                "2",
                *_scan_args(tiny_bert_dir, small_corpus_file, *strict),
            ]
        )
        == 0
    )
    assert "already ran 2 loops without a new PV" in capsys.readouterr().out
    assert out.read_bytes() == before
    # --patience 3 owes one more loop
    assert (
        main(
            [
                "search",
                str(tiny_bert_dir),
                "--out",
                str(out),
                "--resume",
                "--patience",
                "3",
                *_scan_args(tiny_bert_dir, small_corpus_file, *strict),
            ]
        )
        == 0
    )
    assert PVSet.load(out).last_seed == 2


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--sentences", "8"], "fewer than one batch"),
        (["--target", "pooler"], "invalid choice"),
        (["--workers", "0"], "workers must be >= 1"),
    ],
)
def test_cli_scan_bad_input(extra, needle, tiny_bert_dir, small_corpus_file, capsys):
    args = ["scan", str(tiny_bert_dir), "--corpus", str(small_corpus_file), "--no-progress", *extra]
    if "--target" in extra:  # argparse refuses the choice itself
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
    else:
        assert main(args) == 2
    assert needle in capsys.readouterr().err


def test_cli_scan_unreadable_model(tmp_path, capsys):
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").write_text("{not json")
    assert main(["scan", str(d), "--no-progress"]) == 2
    assert "cannot load model" in capsys.readouterr().err


@pytest.mark.real
def test_real_scan_tells_backdoored_from_clean(real_por_splade):
    """On the real SPLADE-tiny: the POR-backdoored copy yields a PV matching a planted one; the
    original model yields none in the same number of fuzz loops."""
    from lmsanitator.data import sample, split_corpus
    from lmsanitator.metrics import sign_match
    from lmsanitator.models import load_encoder

    enc, atk, _ = real_por_splade
    sents = sample(split_corpus(load_corpus("austen"), "defence"), 320, 0)
    cfg = ScanConfig(loops=3, max_length=64, workers=2)  # forked workers on a real model
    bad = PVMiner(cfg).fit(enc, sents, progress=False)
    assert bad.report_["verdict"] == "backdoored"
    agreement = sign_match(torch.stack(bad.pvs_), atk.state_.pvs.cpu()).max()
    assert agreement >= 0.9
    clean = PVMiner(cfg).fit(load_encoder("splade-tiny"), sents, progress=False)
    assert clean.report_["verdict"] == "clean"


def test_warm_start_keeps_soft_prompts_row_aligned(tmp_path):
    """A search continued from a PV set saved without soft prompts: row i of the prompts stays PV i."""
    from lmsanitator.data.pvset import _stack_prompts
    from lmsanitator.scan import PVMiner

    old = PVSet(pvs=torch.randn(2, 8), target="cls", seeds=[0, 3], last_seed=5)
    m = PVMiner(loops=1)
    assert m.warm_start(old) == 6
    m.found_.append(FoundPV(pv=torch.randn(8), soft_prompt=torch.ones(7, 8), seed=6))
    sp = _stack_prompts(m.soft_prompts_)
    assert sp.shape == (3, 7, 8) and torch.isnan(sp[:2]).all() and torch.equal(sp[2], torch.ones(7, 8))
    assert PVMiner.loops_since_new_pv(old) == 2
    # a file whose prompts do not match its PVs is refused on load
    bad = PVSet(pvs=torch.randn(3, 8), target="cls", soft_prompts=torch.zeros(2, 7, 8))
    bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(LMSanitatorError, match="soft prompts for 3 PVs"):
        PVSet.load(tmp_path / "bad.safetensors")


def test_antipode_probe_runs_once_per_fuzz_found_pv(sentences, tmp_path):
    """Search mode probes -v after each PV v a fuzz loop finds; a probe's own PV is not probed; the
    saved set remembers what was probed, so a resumed search does not probe it again."""
    enc = tiny_encoder("bert")
    kw = dict(
        observe=False,
        sentences=32,
        batch_size=16,
        max_length=40,
        epochs=2,
        abort_epoch=1,
        t_l=1e-6,
        t_div=-1e-3,
        range_factor=100.0,
        stop_at_first=False,
        mode="search",
    )
    m = PVMiner(ScanConfig(loops=1, **kw)).fit(enc, sentences[:32], progress=False)
    # seed 0 yields a PV and its probe (pulled to -v, permissive thresholds) a second one
    assert [(c.seed, c.probe_of, c.accepted) for c in m.candidates_] == [(0, None, True), (0, 0, True)]
    assert m.loops_run_ == 1 and m.probes_run_ == 1 and len(m.pvs_) == 2
    assert m.report_["probes_run"] == m.probes_run_ and m.last_seed_ == 0
    assert m.unprobed() == 0 and all(x.get("probed") for x in m.pv_losses_)
    assert m.pv_losses_[-1]["probe_of"] == 0 and m.pv_seeds_ == [0, 0]  # the probe leaves the patience alone
    f = tmp_path / "s.safetensors"
    PVSet.from_miner(m, enc).save(f)
    again = PVMiner(ScanConfig(loops=1, **kw))
    start = again.warm_start(PVSet.load(f))
    again.fit(enc, sentences[:32], start_seed=start, progress=False)
    # PV 0 is not probed twice: only seed 1's new PV (index 2) gets its probe
    assert [(c.seed, c.probe_of) for c in again.candidates_] == [(1, None), (1, 2)]
    assert len(again.pvs_) == 4 and again.probes_run_ == 1
    off = PVMiner(ScanConfig(loops=1, antipode_probe=False, **kw)).fit(enc, sentences[:32], progress=False)
    assert off.probes_run_ == 0 and off.unprobed() == len(off.pvs_)
    with pytest.raises(LMSanitatorError, match="lambda_probe"):
        ScanConfig(lambda_probe=-1.0)


@pytest.mark.real
def test_real_antipode_probe_finds_the_opposite_pv_only_where_planted(real_por_splade):
    """POR plants its PVs in opposite pairs. On the real POR SPLADE-tiny the probe from a found PV v
    collapses onto the planted PV opposite v's; the same probe on the clean SPLADE-tiny finds nothing."""
    from lmsanitator.data import sample, split_corpus
    from lmsanitator.metrics import sign_match
    from lmsanitator.models import load_encoder

    enc, atk, _ = real_por_splade
    planted = atk.state_.pvs.cpu()
    sents = sample(split_corpus(load_corpus("austen"), "defence"), 320, 0)
    found = PVMiner(ScanConfig(loops=3, max_length=64)).fit(enc, sents, progress=False)
    assert found.pvs_
    v = found.pvs_[0]
    k = int(sign_match(v[None], planted).argmax())
    opposite = int(sign_match(-planted[k][None], planted).argmax())
    assert sign_match(-planted[k][None], planted[opposite][None]).item() >= 0.99  # the pair exists
    cfg = ScanConfig(max_length=64, mode="search", stop_at_first=False)
    kept = PVSet(
        pvs=v[None], target="cls", seeds=[found.pv_seeds_[0]], losses=[{}], last_seed=found.last_seed_
    )
    probe = PVMiner(cfg)
    probe.warm_start(kept)
    probe.probe_antipodes(enc, sents, progress=False)
    assert probe.probes_run_ == 1 and len(probe.pvs_) == 2
    assert sign_match(probe.pvs_[1][None], planted[opposite][None]).item() >= 0.9
    control = PVMiner(cfg)
    control.warm_start(kept)
    control.probe_antipodes(load_encoder("splade-tiny"), sents, progress=False)
    assert control.probes_run_ == 1 and len(control.pvs_) == 1  # nothing to collapse onto
