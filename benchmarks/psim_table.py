"""Markdown table of the PSIM benchmark from the JSON files that `evaluate psim` and `baseline onion` wrote.

    python benchmarks/psim_table.py /tmp/psim badnet-fd insent-fd badnet-ft clean

For each scenario it reads ``eval-psim-S.json`` (gamma from the PSIM folder), ``eval-psimcal-S.json``
(gamma calibrated at 1% false rejections on clean validation inputs) and ``eval-onion-S.json``
(may be missing), and prints one row per tuned model: CA / ASR before, after PSIM, after ONION.
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
    psim, cal, onion = (_load(root / f"eval-{k}-{scen}.json") for k in ("psim", "psimcal", "onion"))
    if psim is None:
        return [f"| {scen} | (not measured) |"]
    by = lambda res: {r["method"]: r for r in res["results"]} if res else {}  # noqa: E731
    c, o = by(cal), by(onion)
    out = []
    for r in psim["results"]:
        m = r["method"]
        b, a = r["before"], r["after"]
        ac = c.get(m, {}).get("after", {})
        oo = o.get(m, {})
        out.append(" | ".join([
            f"| {scen}", m, _pct(b["clean_accuracy"]), _pct(b["asr"]),
            _pct(a["clean_accuracy"]), _pct(a["asr"]),
            _pct(ac.get("clean_accuracy")), _pct(ac.get("asr")),
            _pct(oo.get("before", {}).get("clean_accuracy")), _pct(oo.get("before", {}).get("asr")),
            _pct(oo.get("after", {}).get("clean_accuracy")), _pct(oo.get("after", {}).get("asr")) + " |"]))
    g = f"{psim['gamma']:.3f}"
    gc = f"{cal['gamma']:.3f}" if cal else "n/a"
    out.append(f"| {scen} | *flagged clean / poisoned* | | | {_pct(psim['flagged_clean'])} | "
               f"{_pct(psim['flagged_poisoned'])} | {_pct(cal['flagged_clean']) if cal else 'n/a'} | "
               f"{_pct(cal['flagged_poisoned']) if cal else 'n/a'} | | | | *gamma {g} / {gc}* |")
    return out


def main(argv: list[str]) -> None:
    root = Path(argv[0])
    print("| scenario | victim | CA | ASR | CA PSIM γ=0.7 | ASR PSIM γ=0.7 | CA PSIM cal. | ASR PSIM cal. | "
          "CA (ONION n) | ASR (ONION n) | CA ONION | ASR ONION |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for scen in argv[1:]:
        print("\n".join(rows(root, scen)))


if __name__ == "__main__":
    main(sys.argv[1:])
