"""Markdown table of the PSIM benchmark from the JSON files that `evaluate psim` and `baseline onion` wrote.

    python benchmarks/psim_table.py /tmp/psim badnet-fd insent-fd badnet-ft clean

For each scenario it reads ``eval-psimcal-S.json`` (PSIM at the folder's gamma, 0.7, and at the gamma
calibrated for 1% false rejections on clean validation inputs) and ``eval-onion-S.json`` (may be
missing), and prints one row per tuned model: CA / ASR before, behind PSIM, and on ONION-purified inputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(p: Path):
    return json.loads(p.read_text()) if p.is_file() else None


def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def rows(root: Path, scen: str) -> list[str]:
    cal, onion = (_load(root / f"eval-{k}-{scen}.json") for k in ("psimcal", "onion"))
    if cal is None:
        return [f"| {scen} | (not measured) |" + " |" * 10]
    o = {r["method"]: r for r in onion["results"]} if onion else {}
    out = []
    for r in cal["results"]:
        m = r["method"]
        b, a7, ac = r["before"], r.get("after_folder_gamma", r["after"]), r["after"]
        oo = o.get(m, {})
        out.append(
            " | ".join(
                [
                    f"| {scen}",
                    m,
                    _pct(b["clean_accuracy"]),
                    _pct(b["asr"]),
                    _pct(a7["clean_accuracy"]),
                    _pct(a7["asr"]),
                    _pct(ac["clean_accuracy"]),
                    _pct(ac["asr"]),
                    _pct(oo.get("before", {}).get("clean_accuracy")),
                    _pct(oo.get("before", {}).get("asr")),
                    _pct(oo.get("after", {}).get("clean_accuracy")),
                    _pct(oo.get("after", {}).get("asr")) + " |",
                ]
            )
        )
    out.append(
        f"| {scen} | *flagged clean / poisoned* | | | {_pct(cal['flagged_clean_folder_gamma'])} | "
        f"{_pct(cal['flagged_poisoned_folder_gamma'])} | {_pct(cal['flagged_clean'])} | "
        f"{_pct(cal['flagged_poisoned'])} | | | | *γ {cal['folder_gamma']:.3f} / cal. {cal['gamma']:.3f}* |"
    )
    return out


def main(argv: list[str]) -> None:
    root = Path(argv[0])
    print(
        "| scenario | victim | CA | ASR | CA PSIM γ=0.7 | ASR PSIM γ=0.7 | CA PSIM cal. | ASR PSIM cal. | "
        "CA (ONION n) | ASR (ONION n) | CA ONION | ASR ONION |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for scen in argv[1:]:
        print("\n".join(rows(root, scen)))


if __name__ == "__main__":
    main(sys.argv[1:])
