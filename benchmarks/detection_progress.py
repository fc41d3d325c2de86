"""Per-group summary of the detection units finished so far in a work folder (a partial zoo run,
``experiment detection --only ...``): the experiment's own group summary (verdicts, the closest clean
margin to the acceptance rule) per base, kind and read-out, plus per rule the smallest margin any
fuzz loop of the group reached (margin > 0: the rule rejects).

    python benchmarks/detection_progress.py [results/detection.work]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from lmsanitator.experiments.detection import _group_summary


def main(work: Path) -> None:
    groups = defaultdict(list)
    for f in sorted((work / "units").glob("*.json")):
        r = json.loads(f.read_text(encoding="utf-8"))
        u = r["unit"]
        kind = (u["attack"]["name"] if u.get("attack") else "clean") + ("-ft" if u.get("finetune") else "")
        groups[(u["base"], kind, u["target"])].append(r)
    print("| base | kind | read-out | models | backdoored | closest clean (margin, rule, id) | rule mins |")
    print("|---|---|---|---|---|---|---|")
    for (base, kind, target), rs in sorted(groups.items()):
        g = _group_summary(rs)
        c = g.get("closest_clean") or {}
        per: dict[str, float] = defaultdict(lambda: float("inf"))
        for r in rs:
            for loop in r["scan"]["loops"]:
                for k, v in (loop.get("margins") or {}).items():
                    per[k] = min(per[k], v)
        rules = ", ".join(f"{k} {v:.4f}" for k, v in sorted(per.items()))
        print(
            f"| {base} | {kind} | {target} | {len(rs)} | {g['verdicts']['backdoored']} | "
            f"{c.get('margin')} ({c.get('rule')}, {c.get('model')}) | {rules} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/detection.work"))
