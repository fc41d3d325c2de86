"""The zoo on a real local Ray cluster: verdicts as one-by-one scans, cache, resume, outputs, faults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from lmsanitator.core.cluster import ray_session
from lmsanitator.models import tiny_encoder
from lmsanitator.scan.config import ScanConfig
from lmsanitator.scan.run import scan_model
from lmsanitator.zoo import VerdictCache, ZooRunner, expand_sources, load_schema

# tiny models scan in a second; permissive thresholds make seed 0 a legit PV (a "backdoored" verdict)
FAST = dict(sentences=32, batch_size=16, max_length=40, loops=2, epochs=2, abort_epoch=1)
PERMISSIVE = dict(t_l=1e-6, t_div=-1e-3, range_factor=100.0)


@pytest.fixture(scope="module")
def ray_up():
    """One local Ray for the module (ZooRunner joins a session that is already up)."""
    with ray_session(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    for i in range(3):
        tiny_encoder("bert", seed=i, hidden=32).save(root / "models" / f"tiny{i}")
    broken = root / "models" / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    return root


def _records(result):
    return {r["name"]: r for r in result.records}


def test_sources_folders_lists_and_bad_lines(zoo_dir, tmp_path):
    lst = tmp_path / "zoo.txt"
    lst.write_text(
        f"# a comment\n{zoo_dir / 'models' / 'tiny0'} target=mask\nminilm\nhf://org/name@v2\nno/such/place/x\n"
    )
    refs = expand_sources([str(lst), str(zoo_dir / "models")])
    kinds = [(r.kind, r.target) for r in refs]
    assert kinds[:4] == [("folder", "mask"), ("bundled", None), ("hub", None), ("invalid", None)]
    assert refs[2].location == "org/name" and refs[2].revision == "v2"
    # the folder repeats tiny0 without a target: a different request, kept; broken is a folder too
    assert sorted(r.name for r in refs[4:]) == ["broken", "tiny0", "tiny1", "tiny2"]


def test_zoo_verdicts_cache_and_outputs(ray_up, zoo_dir, small_corpus_file, tmp_path):
    cfg = ScanConfig(**FAST)
    refs = expand_sources([str(zoo_dir / "models")])
    cache = VerdictCache(tmp_path / "cache")
    runner = ZooRunner(cfg, corpus=str(small_corpus_file), cache=cache, progress=False)
    first = runner.run(refs, tmp_path / "out")
    recs = _records(first)
    assert recs["broken"]["verdict"] == "error" and recs["broken"]["error"]
    for name in ("tiny0", "tiny1", "tiny2"):
        one_by_one = scan_model(str(zoo_dir / "models" / name), cfg, corpus=str(small_corpus_file))
        assert recs[name]["verdict"] == one_by_one["verdict"] == "clean"
        assert recs[name]["loops"] == one_by_one["loops_run"]
        assert recs[name]["attempts"] == 1 and not recs[name]["cache_hit"]
    assert first.exit_code == 2  # no backdoor, one error

    doc = json.loads((tmp_path / "out" / "zoo.json").read_text())
    jsonschema.validate(doc, load_schema())
    assert doc["summary"] == {
        **doc["summary"],
        "models": 4,
        "done": 4,
        "clean": 3,
        "error": 1,
        "cache_hits": 0,
    }
    sarif = json.loads((tmp_path / "out" / "zoo.sarif").read_text())
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["results"] == []
    assert sarif["runs"][0]["invocations"][0]["executionSuccessful"] is False
    assert "broken" in sarif["runs"][0]["invocations"][0]["toolExecutionNotifications"][0]["message"]["text"]
    for name in ("tiny0", "tiny1", "tiny2"):
        assert (tmp_path / "out" / recs[name]["report"]).is_file()
        assert (tmp_path / "out" / recs[name]["plots"]["loops"]).stat().st_size > 1000

    # a second run, elsewhere, from the cache: no task ran (no attempt was logged)
    again = ZooRunner(
        cfg, corpus=str(small_corpus_file), cache=VerdictCache(tmp_path / "cache"), progress=False
    )
    second = again.run(refs, tmp_path / "out2")
    assert all(r["cache_hit"] and r["attempts"] is None for r in second.records if r["verdict"] != "error")
    # errors are not cached (the cause may be gone): only the broken model ran again
    assert [f.name for f in (tmp_path / "out2" / ".work").iterdir()] == ["broken.attempts"]
    assert [r["verdict"] for r in second.records] == [r["verdict"] for r in first.records]
    # other settings are another key: a miss
    other = ZooRunner(
        ScanConfig(**dict(FAST, loops=1)), corpus=str(small_corpus_file), cache=cache, progress=False
    )
    assert not any(r["cache_hit"] for r in other.run(refs[:1], tmp_path / "out3").records)


def test_zoo_backdoored_model_is_a_finding_with_a_stable_fingerprint(
    ray_up, zoo_dir, small_corpus_file, tmp_path
):
    cfg = ScanConfig(**FAST, **PERMISSIVE)
    refs = expand_sources([str(zoo_dir / "models" / "tiny0"), str(zoo_dir / "models" / "tiny1")])
    result = ZooRunner(
        cfg, corpus=str(small_corpus_file), cache=VerdictCache(tmp_path / "c"), progress=False
    ).run(refs, tmp_path / "out")
    assert [r["verdict"] for r in result.records] == ["backdoored", "backdoored"]
    assert result.exit_code == 1
    one = scan_model(str(zoo_dir / "models" / "tiny0"), cfg, corpus=str(small_corpus_file))
    assert one["verdict"] == "backdoored" and result.records[0]["pvs"] == len(one["pvs"])
    sarif = json.loads((tmp_path / "out" / "zoo.sarif").read_text())
    results = sarif["runs"][0]["results"]
    assert len(results) == 2 and {r["level"] for r in results} == {"error"}
    fps = [r["partialFingerprints"]["modelContentHash/v1"] for r in results]
    assert fps == [r["content_hash"] for r in result.records] and fps[0] != fps[1]
    assert (tmp_path / "out" / result.records[0]["plots"]["pvs"]).is_file()


def test_content_hash_follows_bytes_not_names(zoo_dir, tmp_path):
    import shutil

    cache = VerdictCache(tmp_path / "c")
    copy = tmp_path / "copy"
    shutil.copytree(zoo_dir / "models" / "tiny0", copy)
    (copy / "attack.json").write_text("{}")  # not part of the model
    assert cache.content_hash(copy) == cache.content_hash(zoo_dir / "models" / "tiny0")
    with open(copy / "config.json", "a") as f:
        f.write(" ")
    assert cache.content_hash(copy) != cache.content_hash(zoo_dir / "models" / "tiny0")


def test_zoo_survives_a_killed_worker(zoo_dir, small_corpus_file, tmp_path):
    """The zoo as a user runs it (the CLI, its own local Ray); one scanning worker is SIGKILLed
    mid-scan: Ray re-runs that task and every model still gets its verdict."""
    slow = dict(sentences=128, batch_size=16, max_length=40, loops=40, epochs=3)
    models = [str(zoo_dir / "models" / f"tiny{i}") for i in range(3)]
    args = [
        sys.executable,
        "-m",
        "lmsanitator",
        "zoo",
        *models,
        "--out",
        str(tmp_path / "out"),
        "--cache",
        str(tmp_path / "c"),
        "--corpus",
        str(small_corpus_file),
        "--no-progress",
    ]
    for k, v in slow.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    attempts = tmp_path / "out" / ".work" / "tiny0.attempts"
    deadline = time.time() + 120
    while not (attempts.is_file() and attempts.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    assert attempts.is_file(), proc.communicate()
    time.sleep(1.0)  # inside the scan
    os.kill(int(attempts.read_text().split()[0]), signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    doc = json.loads((tmp_path / "out" / "zoo.json").read_text())
    recs = {r["name"]: r for r in doc["models"]}
    assert {r["verdict"] for r in recs.values()} == {"clean"}
    assert recs["tiny0"]["attempts"] == 2
    assert "3 models: 3 clean" in out


CHROMIUM = "/usr/bin/chromium"


def test_index_page_renders_in_headless_chromium(ray_up, zoo_dir, small_corpus_file, tmp_path):
    """The page a person opens: it renders in a real browser, lists every model, sorts on a click,
    shows the plots, and logs no console error."""
    playwright = pytest.importorskip("playwright.sync_api")
    assert Path(CHROMIUM).is_file(), "install Debian's chromium (install.sh does, as root)"
    refs = expand_sources([str(zoo_dir / "models")])
    cfg = ScanConfig(**FAST)
    ZooRunner(cfg, corpus=str(small_corpus_file), cache=VerdictCache(tmp_path / "c"), progress=False).run(
        refs, tmp_path / "out"
    )
    problems: list[str] = []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
        page.goto((tmp_path / "out" / "index.html").as_uri())
        names = page.locator("#models tbody tr td:first-child").all_inner_texts()
        assert sorted(names) == ["broken", "tiny0", "tiny1", "tiny2"]
        page.locator("#models th", has_text="verdict").click()
        verdicts = page.locator("#models tbody tr td:nth-child(3)").all_inner_texts()
        assert verdicts[0] == "clean" and verdicts[-1].startswith("error")  # sorted a-z
        page.locator("details").first.click()
        imgs = page.locator("details[open] img")
        assert imgs.count() >= 1 and imgs.first.evaluate("i => i.complete && i.naturalWidth > 0")
        page.screenshot(path=str(tmp_path / "zoo.png"), full_page=True)
        browser.close()
    assert problems == []
    assert (tmp_path / "zoo.png").stat().st_size > 5000
