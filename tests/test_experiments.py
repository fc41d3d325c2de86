"""`lmsanitator experiment`: the runner (resume, Ray tasks, atomic output) and the quick detection run
on real SPLADE-tiny models (clean, fine-tuned, POR-backdoored with random triggers)."""

import json
import signal

import pytest
import torch

from lmsanitator.cli.main import main
from lmsanitator.core.cluster import ray_session
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.experiments import EXPERIMENTS, get_experiment, run_experiment
from lmsanitator.experiments import detection as D
from lmsanitator.experiments.base import Context, Experiment
from lmsanitator.experiments.detection import closest_margin
from lmsanitator.experiments.detection_zoo import ft_grid_cell, zoo
from lmsanitator.experiments.recipes import ft_schedule


class Squares(Experiment):
    """A cheap stand-in: each unit squares a number; counts how often units really ran."""

    name = "squares"
    paper = "none"
    calls = 0

    def config(self, quick):
        return {"xs": [1, 2, 3] if quick else [1, 2, 3, 4]}

    def units(self, config):
        return [{"id": f"x{x}", "x": x} for x in config["xs"]]

    def run_unit(self, unit, config, ctx):
        Squares.calls += 1
        return {"y": unit["x"] ** 2}

    def summarize(self, config, records):
        return {"total": sum(r["y"] for r in records)}, "| total |\n|---|\n"


def test_runner_resumes_and_writes_atomically(tmp_path):
    out, work = tmp_path / "res", tmp_path / "work"
    Squares.calls = 0
    assert (
        run_experiment(Squares(), quick=False, out=out, work=work, progress=False, only="x[12]", cpus=1)
        is None
    )
    assert Squares.calls == 2 and not out.exists()  # an --only run writes no results
    res = run_experiment(Squares(), quick=False, out=out, work=work, progress=False, cpus=1)
    assert Squares.calls == 4  # the assembling run reused the finished units
    assert res["summary"] == {"total": 30}
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"] == {"total": 30} and on_disk["config"] == {"xs": [1, 2, 3, 4]}
    assert on_disk["provenance"]["versions"]["torch"] and on_disk["provenance"]["cores"] >= 1
    assert (out / "table.md").read_text().startswith("# squares")
    # an existing result is not replaced without overwrite; another configuration is refused
    with pytest.raises(LMSanitatorError, match="not empty"):
        run_experiment(Squares(), quick=False, out=out, work=work, progress=False, cpus=1)
    with pytest.raises(LMSanitatorError, match="another configuration"):
        run_experiment(Squares(), quick=True, out=tmp_path / "other", work=work, progress=False, cpus=1)
    assert not list(tmp_path.glob(".other*")) and not (tmp_path / "other").exists()


class Pids(Squares):
    """Records which process ran each unit (Ray workers are other processes)."""

    name = "pids"

    def run_unit(self, unit, config, ctx):
        import os

        return {"y": unit["x"] ** 2, "pid": os.getpid()}


def test_units_run_as_ray_tasks(tmp_path):
    """On a local Ray: every unit runs in a worker process, the results equal the in-process run."""
    import os

    ray_run = run_experiment(Pids(), quick=False, out=tmp_path / "ray", progress=False, cpus=2)
    local = run_experiment(Pids(), quick=False, out=tmp_path / "local", progress=False, cpus=1)
    assert ray_run["summary"] == local["summary"] == {"total": 30}
    assert {r["pid"] for r in ray_run["records"]}.isdisjoint({os.getpid()})
    assert {r["pid"] for r in local["records"]} == {os.getpid()}
    assert [r["id"] for r in ray_run["records"]] == ["x1", "x2", "x3", "x4"]  # unit order, not finish order


def test_ray_session_keeps_the_sigterm_handler():
    """ray.init installs a C-level SIGTERM handler that kills the driver and orphans the local
    cluster; the session puts the Python one back, so the CLI's interrupt (and shutdown) run."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with ray_session(num_cpus=1):
            assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_only_runs_the_matching_units(tmp_path):
    out, work = tmp_path / "res", tmp_path / "work"
    Squares.calls = 0
    assert (
        run_experiment(Squares(), quick=False, out=out, work=work, progress=False, only="x[13]", cpus=1)
        is None
    )
    assert Squares.calls == 2 and not out.exists()
    assert sorted(f.name for f in (work / "units").iterdir()) == ["x1.json", "x3.json"]
    with pytest.raises(LMSanitatorError, match="matches no unit"):
        run_experiment(Squares(), quick=False, out=out, work=work, progress=False, only="nope*", cpus=1)
    assert run_experiment(Squares(), quick=False, out=out, work=work, progress=False, cpus=1)["summary"] == {
        "total": 30
    }
    assert Squares.calls == 4


def test_runner_and_name_errors(capsys):
    assert main(["experiment", "detection", "--cpus", "0", "--out", "/nonexistent/x"]) == 2
    assert "--cpus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "no-such"])
    assert exc.value.code == 2
    with pytest.raises(LMSanitatorError, match="unknown experiment"):
        get_experiment("no-such")
    assert set(EXPERIMENTS) >= {"detection", "pv-search"}


def test_detection_zoo_meets_the_issue():
    """The full run (issue 19): >= 60 clean models, >= 30 of them MiniLM-family fully fine-tuned on
    the four real tasks over seeds, lrs and lengths; >= 60 backdoored with random single- and
    two-word triggers, both PV schemes, BToP at [MASK], working adaptive options; clean models at
    both read-outs."""
    cfg = get_experiment("detection").config(quick=False)
    models = cfg["models"]
    clean = [m for m in models if m["kind"] == "clean"]
    bd = [m for m in models if m["kind"] == "backdoored"]
    assert len(clean) >= 60 and len(bd) >= 60
    family = [m for m in clean if m["base"] in ("minilm", "minilm-sre")]
    assert len(family) >= 30 and {m["base"] for m in clean} == {"minilm", "minilm-sre", "splade-tiny"}
    grid = [m["finetune"] for m in family if m["finetune"]]
    assert {f["task"] for f in grid} == {"tweets-binary", "wordnet-topic", "austen-author", "bbc-news"}
    assert {f["lr"] for f in grid} == {2e-5, 3e-5, 5e-5} and {f["steps"] for f in grid} == {150, 300, 600}
    assert {f["batch_size"] for f in grid} == {16} and len({f["seed"] for f in grid}) == len(grid)
    # issue 19's false positive recipe is in the zoo, for both MiniLMs
    for base in ("minilm", "minilm-sre"):
        assert any(
            m["finetune"] and (m["finetune"]["lr"], m["finetune"]["steps"]) == (3e-5, 300)
            for m in family
            if m["base"] == base
        )
    # every fine-tuned copy is its own model (recipes differ), whatever read-out it is scanned at
    recipes = [json.dumps(m["finetune"], sort_keys=True) for m in clean if m["finetune"]]
    assert len(set((m["base"], r) for m, r in zip([m for m in clean if m["finetune"]], recipes))) == len(
        recipes
    )
    assert {m["base"] for m in bd} >= {"minilm", "minilm-sre", "splade-tiny"}
    assert {m["attack"]["name"] for m in bd} == {"por", "neuba", "btop"}
    assert {m["attack"]["trigger_words"] for m in bd} == {1, 2}
    assert {m["attack"]["random_triggers"] for m in bd} == {1, 2}
    assert {m["attack"]["pv_scheme"] for m in bd} == {"por2", "random"}
    assert {m.get("variant") for m in bd} >= {"por+scatter1", "por+moderate", "por+wasserstein1"}
    assert {m["target"] for m in bd if m["attack"]["name"] == "btop"} == {"mask"}
    assert {m["target"] for m in clean} == {"cls", "mask"}
    assert {m["target"] for m in family} == {"cls", "mask"}
    assert len({m["id"] for m in models}) == len(models)
    assert zoo({"splade-tiny": {"clean": 1}}, {"splade-tiny": 10})[0]["finetune"] is None
    with pytest.raises(LMSanitatorError, match="unknown plan keys"):
        zoo({"splade-tiny": {"clean": 1, "pro": 2}}, {"splade-tiny": 10})


def test_detection_zoo_keeps_the_measured_units():
    """Units of the committed results keep their ids and recipes, so their built models and scans
    are reused (the model cache is keyed by the recipe, the work folder by the id)."""
    cfg = get_experiment("detection").config(quick=False)
    by_id = {m["id"]: m for m in cfg["models"]}
    assert by_id["splade-tiny.clean.ft-tweets-binary-s1.mask"]["finetune"] == {
        "task": "tweets-binary",
        "seed": 1,
        "train_size": 1000,
        "epochs": 1,
    }
    assert by_id["splade-tiny.clean.ft-austen-author-s6.cls"]["target"] == "cls"
    assert by_id["splade-tiny.por.t1w1-por2-s100"]["attack"] == {
        "name": "por",
        "random_triggers": 1,
        "trigger_words": 1,
        "pv_scheme": "por2",
        "seed": 100,
        "per_trigger": 800,
        "epochs": 2,
    }
    assert "variant" not in by_id["splade-tiny.por.t1w1-por2-s100"]
    assert {"minilm.clean.base.cls", "minilm-sre.por.t1w1-por2-s100", "minilm.btop.t1w1-por2-s100"} <= set(
        by_id
    )
    quick = get_experiment("detection").config(quick=True)["models"]
    assert [m["id"] for m in quick] == [
        "splade-tiny.clean.base.cls",
        "splade-tiny.clean.ft-tweets-binary-s1.cls",
        "splade-tiny.por.t1w1-por2-s100",
        "splade-tiny.por.t2w1-random-s101",
    ]


def test_ft_grid_covers_every_cell_and_schedule_makes_the_steps():
    cells = {(c["task"], c["lr"], c["steps"]) for c in map(ft_grid_cell, range(36))}
    assert len(cells) == 36  # tasks x lrs x lengths, each once
    # any 12 cells in a row hold every task x lr pair
    assert len({(c["task"], c["lr"]) for c in map(ft_grid_cell, range(7, 19))}) == 12
    assert ft_schedule(300, 16, 6000) == (4800, 1)
    assert ft_schedule(600, 16, 6000) == (4800, 2)
    train, epochs = ft_schedule(300, 16, 935)  # bbc-news: fewer examples, repeated
    assert train <= 935 and epochs * -(-train // 16) == 300
    train, epochs = ft_schedule(600, 16, 935)
    assert train <= 935 and 600 <= epochs * -(-train // 16) < 600 + epochs


def test_closest_margin_is_the_least_rejected_candidate():
    report = {
        "thresholds": {"t_div": -3.446},
        "candidates": [
            {"seed": 0, "diversity": [-3.1, -3.3], "margins": {"t_div": 0.146, "t_clean_div": -0.2}},
            {"seed": 1, "diversity": [-3.44], "margins": {"t_div": 0.006, "t_l": -0.1, "x": None}},
            {"seed": 2, "diversity": [-3.0], "margins": {"t_div": 0.446, "t_clean_div": 0.01}},
        ],
    }
    assert closest_margin(report) == {"closest_margin": 0.006, "closest_rule": "t_div", "closest_seed": 1}
    # a candidate every rule passes (an accepted PV) has a negative margin
    report["candidates"].append({"seed": 3, "diversity": [-3.5], "margins": {"t_div": -0.05, "t_l": -0.3}})
    assert closest_margin(report)["closest_margin"] == -0.05
    # reports without margins: the rules' recorded statistics (diversity - T_div, distance + T_L,
    # t_clean_div - nn_diversity where the clean-evidence rule ran)
    th = {"t_div": -3.446, "t_l": 0.5}
    old = {
        "thresholds": th,
        "candidates": [
            {"seed": 0, "diversity": [-3.2, -3.30], "distance": [-1.0, -2.0]},
            {"seed": 1, "diversity": [-3.43], "distance": [-0.45]},  # T_L rejects it by 0.05
            {"seed": 2, "diversity": [], "distance": []},
            # passed T_div and T_L, rejected by clean evidence: a positive margin, not an acceptance
            {
                "seed": 3,
                "diversity": [-3.45],
                "distance": [-2.0],
                "t_clean_div": -3.2157,
                "clean_evidence": {"nn_diversity": -3.374},
            },
        ],
    }
    assert closest_margin(old) == {"closest_margin": 0.05, "closest_rule": "t_l", "closest_seed": 1}
    old["candidates"][1]["distance"] = [-2.0]
    assert closest_margin(old) == {"closest_margin": 0.016, "closest_rule": "t_div", "closest_seed": 1}
    old["candidates"][3]["clean_evidence"]["nn_diversity"] = -3.2
    assert closest_margin(old)["closest_margin"] == -0.004  # the clean-evidence rule would pass it
    assert closest_margin({"thresholds": {}, "candidates": []})["closest_margin"] is None


def _rec(uid, base, attack, verdict, margin, acc=None, variant=None):
    unit = {
        "id": uid,
        "base": base,
        "kind": "clean" if attack is None else "backdoored",
        "target": "cls",
        "attack": None if attack is None else {"name": attack},
    }
    if variant:
        unit["variant"] = variant
    rec = {
        "unit": unit,
        "scan": {
            "verdict": verdict,
            "loops_run": 30 if verdict == "clean" else 2,
            "closest_margin": margin,
            "closest_rule": "t_div",
            "closest_seed": 4,
        },
    }
    if acc is not None:
        rec["finetune"] = {"test_accuracy": acc}
    if attack:
        rec["attack"] = {"min_hit_rate": 1.0, "clean_false_hit_rate": 0.0}
    return rec


def test_detection_summary_reports_the_closest_clean_margin():
    exp = get_experiment("detection")
    recs = [
        _rec("minilm.clean.base.cls", "minilm", None, "clean", 0.09),
        _rec("minilm.clean.ft-a.cls", "minilm", None, "clean", 0.0123, acc=0.91),
        _rec("minilm.clean.ft-b.mask", "minilm", None, "clean", 0.2, acc=0.47),
        _rec("minilm.por.t1", "minilm", "por", "backdoored", -0.3),
        _rec("minilm.por.t2", "minilm", "por", "clean", 0.05),
        _rec("splade-tiny.por+scatter1.t2", "splade-tiny", "por", "backdoored", -0.1, variant="por+scatter1"),
    ]
    summary, table = exp.summarize({}, recs)
    g = summary["by_group"]
    assert g["minilm/clean"]["closest_clean"] == {
        "margin": 0.0123,
        "model": "minilm.clean.ft-a.cls",
        "rule": "t_div",
        "seed": 4,
    }
    assert g["minilm/clean"]["finetune_test_accuracy"] == {"min": 0.47, "mean": 0.69, "n": 2}
    assert (
        g["minilm/por"]["verdicts"] == {"backdoored": 1, "clean": 1}
        and g["minilm/por"]["false_negatives"] == 1
    )
    assert "closest_clean" not in g["minilm/por"]
    assert g["splade-tiny/por+scatter1"]["verdicts"] == {"backdoored": 1, "clean": 0}
    assert summary["closest_clean"]["model"] == "minilm.clean.ft-a.cls"
    assert "+0.0123 (minilm.clean.ft-a.cls, t_div)" in table and "| 1 / 1 |" in table
    # records of a run before margins were kept: no margin, not a crash
    for r in recs:
        r["scan"]["closest_margin"] = None
    summary, table = exp.summarize({}, recs)
    assert summary["closest_clean"] is None and "closest_clean" in summary["by_group"]["minilm/clean"]


def test_build_only_builds_each_model_once_and_scans_none(tmp_path, monkeypatch, capsys):
    built = []

    def fake_build(unit, corpus, ctx, verify, *, cache):
        assert cache and ctx.models == tmp_path / "cache"
        built.append(unit["id"])
        return None, None, {"finetune": {"test_accuracy": 0.9}} if unit["finetune"] else {"attack": {}}

    # every experiment module binds build_model/mine (from recipes) by name at import: import them all
    # before the patch, or one first imported during it would keep the fake after the test (and later
    # tests in this file would run it). The patch goes on detection, where Detection looks them up.
    for name in EXPERIMENTS:
        get_experiment(name)
    monkeypatch.setattr(D, "build_model", fake_build)
    monkeypatch.setattr(D, "load_corpus", lambda name: [])
    monkeypatch.setattr(D, "mine", lambda *a, **k: pytest.fail("build-only must not scan"))
    args = [
        "experiment",
        "detection",
        "--quick",
        "--build-only",
        "--model-cache",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "det"),
        "--no-progress",
    ]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)["built"]
    # the base model needs no build; the fine-tuned copy and two implants do
    assert (
        built
        == [r["id"] for r in rows]
        == [
            "splade-tiny.clean.ft-tweets-binary-s1.cls",
            "splade-tiny.por.t1w1-por2-s100",
            "splade-tiny.por.t2w1-random-s101",
        ]
    )
    assert rows[0]["built_now"] and rows[0]["finetune"]["test_accuracy"] == 0.9
    assert not (tmp_path / "det").exists() and not (tmp_path / "det.work").exists()
    built.clear()
    assert main(args + ["--only", "*.por.*"]) == 0 and built == [
        "splade-tiny.por.t1w1-por2-s100",
        "splade-tiny.por.t2w1-random-s101",
    ]
    capsys.readouterr()
    assert main(args + ["--only", "nothing*"]) == 2
    assert "matches no model" in capsys.readouterr().err
    assert main(["experiment", "pv-search", "--quick", "--build-only", "--out", str(tmp_path / "p")]) == 2
    assert "no model zoo" in capsys.readouterr().err


def test_pv_search_summary_and_plot(tmp_path):
    exp = get_experiment("pv-search")
    cfg = exp.config(quick=True)
    recs = [
        {
            "unit": {"base": "m", "attack": {"name": "por"}, "target": "cls"},
            "search": {
                "planted": 6,
                "recovered": 5,
                "recovered_at_t_match": 6,
                "unintended": 2,
                "found": 8,
                "loops_run": 20,
                "seconds": 3.0,
                "best_agreement_per_planted": [1, 1, 0.95, 0.92, 0.91, 0.85],
            },
        }
    ]
    summary, table = exp.summarize(cfg, recs)
    assert summary["recall"] == round(5 / 6, 4) and summary["planted"] == 6 and summary["found"] == 5
    assert summary["recall_at_t_match"] == 1.0 and "83.3%" in table
    assert exp.plot(cfg, recs, summary, tmp_path) == ["pv_recall.png"]
    assert (tmp_path / "pv_recall.png").stat().st_size > 1000


@pytest.mark.experiment
@pytest.mark.real
def test_detection_quick_on_real_models(tmp_path, capsys):
    """Real SPLADE-tiny: the bundled model, a copy fully fine-tuned on tweets, and two POR implants
    with random triggers; the scan must tell them apart and the found PVs must match planted ones."""
    out = tmp_path / "detection"
    assert main(["experiment", "detection", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    res = json.loads((out / "results.json").read_text())
    s = res["summary"]
    assert printed["summary"] == s
    assert (s["n_clean"], s["n_backdoored"]) == (2, 2)
    # the clean copies stall above T_div in all 6 loops; each POR implant collapses at fuzz seed 0
    assert (s["false_positives"], s["false_negatives"], s["accuracy"]) == (0, 0, 1.0)
    fps = {r["scan"]["fingerprint"] for r in res["records"]}
    assert len(fps) == 4  # fine-tuning and implants really changed the weights
    ft = [r for r in res["records"] if r.get("finetune")][0]["finetune"]
    assert ft["test_accuracy"] > 0.55  # the fine-tuned copy learned its task (2 classes)
    for r in res["records"]:
        if r["unit"]["kind"] == "backdoored":
            assert r["attack"]["min_hit_rate"] >= 0.9  # the implants work
            assert r["scan"]["verdict"] == "backdoored" and r["scan"]["pv_agreement"] >= 0.9
        else:
            assert r["scan"]["verdict"] == "clean" and r["scan"]["loops_run"] == 6
    assert "| **all** |" in (out / "table.md").read_text()
    # a second call reuses the finished units (the work folder) and rewrites the same numbers
    assert (
        main(["experiment", "detection", "--quick", "--out", str(out), "--overwrite", "--no-progress"]) == 0
    )
    again = json.loads((out / "results.json").read_text())
    assert again["summary"] == s and again["records"] == res["records"]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """One POR SPLADE-tiny implant shared by the quick experiments (they use the same recipe)."""
    return tmp_path_factory.mktemp("models")


@pytest.mark.experiment
@pytest.mark.real
@pytest.mark.parametrize(
    "name,keys,plot",
    [
        ("pv-search", {"recall", "found", "planted", "recall_at_t_match"}, "pv_recall.png"),
        ("ablation", {"k", "loops_to_k"}, "ablation.png"),
        ("attack-defense", {"units", "max_asr_guarded_where_asr_ge_50", "max_ca_drop_from_guard"}, None),
        ("monitor-overhead", {"max_overhead", "overhead"}, None),
        ("onion-compare", {"units"}, None),
        ("adaptive", {"overall_detection_rate"}, None),
        ("psim", {"max_asr_after", "max_ca_loss_attacked"}, None),
        ("dataset-size", {"full", "p-tuning-v2"}, "asr_vs_size.png"),
    ],
)
def test_quick_experiments_on_real_models(tmp_path, model_cache, name, keys, plot):
    """Each --quick run on real SPLADE-tiny models writes a complete, consistent result."""
    out = tmp_path / name
    assert (
        main(
            [
                "experiment",
                name,
                "--quick",
                "--out",
                str(out),
                "--no-progress",
                "--model-cache",
                str(model_cache),
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert keys <= set(res["summary"]) and res["quick"] is True
    assert (out / "table.md").read_text().count("\n|") >= 2
    if name == "psim":  # weight poisoning: the attack is verified by its own CA / ASR
        r = res["records"][0]
        assert r["attack"]["asr"] is not None and len(r["victims"]) == 1
        assert 0 < r["psim"]["gamma"] < 1 and r["psim"]["flagged_clean"] <= 0.05  # calibrated at 1% FRR
        return
    assert res["records"]
    if name != "adaptive":  # adaptive options weaken the implant on purpose (checked below)
        assert all(r["attack"]["min_hit_rate"] >= 0.9 for r in res["records"])  # real implants
    if plot:
        assert (out / plot).stat().st_size > 1000
    s = res["summary"]
    if name == "pv-search":
        r = res["records"][0]["search"]
        assert 0 < s["found"] <= s["planted"] == 6 and r["found"] >= r["recovered"]
    elif name == "ablation":
        by = {r["unit"]["variant"]: r["search"] for r in res["records"]}
        assert by["path loss + adaptive lr"]["reached_k"]
        # the path loss is what keeps later loops off the PVs already found
        assert by["no path loss"]["rejected"].get("not unique", 0) >= by["path loss + adaptive lr"][
            "rejected"
        ].get("not unique", 0)
    elif name == "monitor-overhead":
        assert {t["batch"] for t in res["records"][0]["timing"]} == {1, 32}
        assert all(t["unguarded_s"] > 0 and t["guarded_s"] > 0 for t in res["records"][0]["timing"])
    elif name == "adaptive":
        cells = {r["unit"]["cell"]: r for r in res["records"]}
        assert cells["1 PV phrase"]["attack"]["min_hit_rate"] >= 0.9
        assert cells["1 PV phrase"]["scan"]["verdict"] == "backdoored"  # a phrase trigger does not hide a PV
        # a scattering loss trades the backdoor's targetability for stealth (the paper's Table 8)
        assert cells["scatter 5"]["attack"]["min_hit_rate"] < cells["1 PV phrase"]["attack"]["min_hit_rate"]
    elif name == "dataset-size":
        assert len(res["records"]) == 4
        # the frozen encoder keeps the backdoor: the PV survives P-tuning v2 at every training size
        assert all(v["asr"] >= 0.5 and v["triggered_pv_agreement"] >= 0.9 for v in s["p-tuning-v2"].values())
    elif name == "onion-compare":
        r = res["records"][0]
        assert 0 <= r["onion"]["asr"] <= 1 and 0 <= r["onion"]["clean_accuracy"] <= 1
        assert set(r["onion"]["per_trigger"]) == set(r["attack"]["triggers"])
    else:
        r = res["records"][0]
        assert r["asr"] >= 0.5 and r["pvs_found"] >= 1
        # triggers whose PV was found are stopped; the guard costs little clean accuracy
        stopped = [t for t, v in r["per_trigger"].items() if v["asr"] > 0 and v["asr_guarded"] == 0]
        assert stopped and r["clean_accuracy"] - r["clean_accuracy_guarded"] <= 0.05


def test_search_pvs_continues_a_kept_search(tiny_bert_dir, tmp_path):
    """A larger budget continues the kept search from its last fuzz seed instead of restarting;
    a request within the kept budget reuses it without mining."""
    from lmsanitator.data import load_corpus
    from lmsanitator.experiments.search import search_config, search_pvs

    corpus = load_corpus("austen")[:3000]
    model = {"base": str(tiny_bert_dir), "target": "cls", "finetune": None, "attack": None}
    ctx = Context(tmp_path, progress=False)
    small = {
        **search_config({"loops": 2, "patience": 50}),
        "sentences": 32,
        "batch_size": 16,
        "epochs": 2,
        "abort_epoch": 0,
        "max_length": 40,
    }
    first, info1 = search_pvs(model, corpus, small, ctx)
    assert info1["loops_run"] == 2 and first.last_seed == 1
    again, info_again = search_pvs(model, corpus, {**small, "loops": 1}, ctx)  # within the kept budget
    assert info_again["loops_run"] == 2 and again.last_seed == 1
    more, info2 = search_pvs(model, corpus, {**small, "loops": 3}, ctx)
    assert info2["loops_run"] == 3 and more.last_seed == 2  # one more loop, seed 2, not seeds 0-2 again
    assert len(list((tmp_path / "models" / "pvsets").glob("*.safetensors"))) == 1


def test_search_pvs_probes_a_kept_search_once(tiny_bert_dir, tmp_path):
    """Switching antipode probes on keeps the kept search (same key): a spent budget runs only the
    probes it never ran, once; a second request mines nothing."""
    from lmsanitator.data import load_corpus
    from lmsanitator.experiments.search import search_config, search_pvs

    corpus = load_corpus("austen")[:3000]
    model = {"base": str(tiny_bert_dir), "target": "cls", "finetune": None, "attack": None}
    ctx = Context(tmp_path, progress=False)
    # permissive thresholds: every fuzz loop yields a PV
    easy = {
        **search_config({"loops": 2, "patience": 50}),
        "sentences": 32,
        "batch_size": 16,
        "epochs": 2,
        "abort_epoch": 0,
        "max_length": 40,
        "t_l": 1e-6,
        "t_div": -1e-3,
        "range_factor": 100.0,
    }
    plain, info1 = search_pvs(model, corpus, {**easy, "antipode_probe": False}, ctx)
    assert len(plain) == 2 and plain.seeds == [0, 1] and info1.get("probes_run", 0) == 0
    probed, info2 = search_pvs(model, corpus, {**easy, "antipode_probe": True}, ctx)
    assert info2["loops_run"] == 2 and probed.last_seed == plain.last_seed  # no new fuzz seeds
    # one probe per kept PV, each yielding the opposite PV (permissive thresholds)
    assert info2["probes_run"] == 2 and len(probed) == 4 and probed.seeds == [0, 1, 0, 1]
    assert [x.get("probe_of") for x in probed.losses] == [None, None, 0, 1]
    assert torch.equal(probed.pvs[:2], plain.pvs)  # the kept PVs are taken over, not mined again
    assert all(x.get("probed") or x.get("probe_of") is not None for x in probed.losses)
    again, info3 = search_pvs(model, corpus, {**easy, "antipode_probe": True}, ctx)
    assert info3["probes_run"] == info2["probes_run"] and len(again) == len(probed)
    assert len(list((tmp_path / "models" / "pvsets").glob("*.safetensors"))) == 1
