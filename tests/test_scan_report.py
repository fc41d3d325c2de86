"""How a finding is worded for people (CLI line) and dashboards (SARIF), and the scan options."""

import argparse

from lmsanitator.cli.scan import _mining_args, scan_config
from lmsanitator.scan.sarif import how_found, scan_sarif


def _report(candidates):
    return {
        "verdict": "backdoored" if any(c["accepted"] for c in candidates) else "clean",
        "model": "m",
        "model_path": None,
        "target": "cls",
        "loops_run": 3,
        "pvs": [[1.0]],
        "fingerprint": "f",
        "candidates": candidates,
    }


def test_a_pv_observed_in_the_corpus_is_named_by_its_word_not_a_fuzz_seed():
    observed = {"rows": 17, "group_var": 0.011, "word": "them", "land_share": 0.84, "words_tried": 2}
    rep = _report([{"seed": None, "accepted": True, "observed": observed}])
    line = how_found(rep)
    assert "observed in the defence corpus" in line and "'them'" in line and "84%" in line
    assert "seed" not in line
    assert "'them'" in scan_sarif(rep)["runs"][0]["results"][0]["message"]["text"]
    fuzz = _report([{"seed": None, "accepted": False, "observed": observed}, {"seed": 2, "accepted": True}])
    assert how_found(fuzz) == "legit PV inverted at fuzz seed 2 after 3 loop(s)"


def test_the_observation_can_be_switched_off():
    p = argparse.ArgumentParser()
    _mining_args(p)
    p.add_argument("--loops", type=int, default=30)
    assert scan_config(p.parse_args(["m"]), "detect").observe
    assert not scan_config(p.parse_args(["m", "--no-observe"]), "detect").observe
    assert scan_config(p.parse_args(["m", "--t-spread", "0.002"]), "detect").t_spread == 0.002
