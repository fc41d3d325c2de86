"""Detection scans with and without issue 19's rule, one summary line each (results/detection-rule/).

``--before`` scans as the code did before issue 19 (``clean_evidence=False, settle_epochs=0``: the
collapse test alone, the PV read at the accepting epoch); the default is the scan as shipped. Other
ScanConfig fields go as ``key=value`` (JSON values).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/detection_rule.py \
        MODEL [--before] [--planted FOLDER/attack.json] [--report R.json] [epochs=4 loops=2 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from lmsanitator.core.io import write_json_atomic
from lmsanitator.core.runtime import set_threads
from lmsanitator.metrics import sign_match
from lmsanitator.scan import ScanConfig
from lmsanitator.scan.run import scan_model

BEFORE = {"clean_evidence": False, "settle_epochs": 0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("settings", nargs="*", help="ScanConfig fields as key=value (JSON values)")
    ap.add_argument("--before", action="store_true", help="the scan before issue 19")
    ap.add_argument("--planted", help="attack.json: the PV's agreement with the planted PVs")
    ap.add_argument("--report", help="write the scan report here")
    args = ap.parse_intermixed_args()
    set_threads(1)
    kw = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.settings)}
    cfg = ScanConfig(**{**(BEFORE if args.before else {}), **kw, "workers": 1})
    t0 = time.perf_counter()
    rep = scan_model(args.model, cfg)
    wall = time.perf_counter() - t0
    acc = [c for c in rep["candidates"] if c["accepted"]]
    row = {
        "model": args.model,
        "scan": "before" if args.before else "after",
        "settings": kw,
        "verdict": rep["verdict"],
        "loops_run": rep["loops_run"],
        "seconds": round(wall, 1),
        "seconds_per_loop": round(rep["seconds"] / max(rep["loops_run"], 1), 2),
        "thresholds": {k: rep["thresholds"][k] for k in ("t_div", "t_clean_div")},
        "best_diversity": min(min(c["diversity"]) for c in rep["candidates"]),
        "accepted": [
            {k: c[k] for k in ("seed", "epochs_run", "diversity", "settle_diversity", "clean_evidence")}
            for c in acc
        ],
        "rejected_by_clean_evidence": [
            {"seed": c["seed"], "diversity": c["diversity"][-1], "clean_evidence": c["clean_evidence"]}
            for c in rep["candidates"]
            if c["reason"].startswith("clean evidence")
        ],
        "command": "benchmarks/detection_rule.py " + " ".join(sys.argv[1:]),
    }
    if args.planted and rep["pvs"]:
        with open(args.planted, encoding="utf-8") as fh:
            planted = torch.tensor(json.load(fh)["pvs"])
        row["agreement"] = round(float(sign_match(torch.tensor(rep["pvs"][:1]), planted).max()), 4)
    if args.report:
        write_json_atomic(args.report, rep)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
