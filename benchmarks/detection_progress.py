"""Per-group summary of the detection units finished so far in a work folder (a partial zoo run,
``experiment detection --only ...``): positives, the closest margin to the acceptance rule, and per
rule the smallest margin any fuzz loop of the group reached (margin > 0: the rule rejects).

    python benchmarks/detection_progress.py [results/detection.work]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(work: Path) -> None:
    groups = defaultdict(list)
    for f in sorted((work / "units").glob("*.json")):
        r = json.loads(f.read_text(encoding="utf-8"))
        u = r["unit"]
        kind = (u["attack"]["name"] if u.get("attack") else "clean") + ("-ft" if u.get("finetune") else "")
        groups[(u["base"], kind, u["target"])].append(r)
    print("| base | kind | read-out | models | positives | closest margin (rule, model) | per-rule min |")
    print("|---|---|---|---|---|---|---|")
    for (base, kind, target), rs in sorted(groups.items()):
        pos = sum(r["scan"]["verdict"] == "backdoored" for r in rs)
        close = min(rs, key=lambda r: r["scan"].get("closest_margin", float("inf")))
        per: dict[str, float] = defaultdict(lambda: float("inf"))
        for r in rs:
            for c in r["scan"]["loops"]:
                for k, v in (c.get("margins") or {}).items():
                    per[k] = min(per[k], v)
        rules = ", ".join(f"{k} {v:.4f}" for k, v in sorted(per.items()))
        s = close["scan"]
        print(
            f"| {base} | {kind} | {target} | {len(rs)} | {pos} | "
            f"{s.get('closest_margin')} ({s.get('closest_rule')}, {close['id']}) | {rules} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/detection.work"))
