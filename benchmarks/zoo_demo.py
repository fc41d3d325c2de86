"""A real model zoo scanned three ways in one run: `lmsanitator zoo` on Ray, the same models one by one
with `lmsanitator scan`, and the zoo again from its verdict cache.

    python benchmarks/zoo_demo.py --models /tmp/zoo-models --out results/zoo-demo [--build-only]

The 12 models are the detection experiment's recipes (bundled clean encoders, fully fine-tuned clean
copies, POR / NeuBA / BToP implants on MiniLM and SPLADE-tiny with random triggers), built once into
``--models`` (reused when present). Writes ``results.json`` and ``table.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from lmsanitator.data import load_corpus
from lmsanitator.experiments.base import Context, provenance
from lmsanitator.experiments.detection_zoo import _backdoored, _clean
from lmsanitator.experiments.recipes import build_model

BUNDLED = [("minilm", "cls"), ("minilm-sre", "cls"), ("splade-tiny", "cls")]
BUILT = [
    _clean("splade-tiny", 1, "cls", 1000),
    _clean("splade-tiny", 2, "mask", 1000),
    _clean("minilm", 1, "cls", 1000),
    _backdoored("splade-tiny", "por", 0),
    _backdoored("splade-tiny", "neuba", 1),
    _backdoored("splade-tiny", "btop", 2),
    _backdoored("minilm", "por", 0),
    _backdoored("minilm", "neuba", 1),
    _backdoored("minilm", "btop", 2),
]


def build(models: Path) -> list[tuple[str, str, str]]:
    """(name, folder or bundled name, target) of every model, building what is missing."""
    corpus = load_corpus("austen")
    ctx = Context(work=models, models=models, progress=False)
    out = [(name, name, target) for name, target in BUNDLED]
    for unit in BUILT:
        folder = models / unit["id"]
        if not (folder / "config.json").is_file():
            t0 = time.time()
            encoder, _, rec = build_model(unit, corpus, ctx)
            encoder.save(folder)
            (folder / "built.json").write_text(json.dumps({"unit": unit, "record": rec}, indent=2))
            print(f"built {unit['id']} in {time.time() - t0:.0f} s", file=sys.stderr)
        out.append((unit["id"], str(folder), unit["target"]))
    return out


def run(cmd: list[str]) -> tuple[int, float, str]:
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, time.time() - t0, p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--loops", type=int, help="fuzz loops per scan (default: the scan's own)")
    a = ap.parse_args()
    models = Path(a.models)
    models.mkdir(parents=True, exist_ok=True)
    zoo = build(models)
    if a.build_only:
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out.parent / f"{out.name}.work"
    listing = work / "zoo.txt"
    work.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"{path} target={target}\n" for _, path, target in zoo))
    cache = work / "cache"
    cli = [sys.executable, "-m", "lmsanitator"]
    loops = ["--loops", str(a.loops)] if a.loops else []

    rc_ray, t_ray, line_ray = run(
        [
            *cli,
            "zoo",
            str(listing),
            "--out",
            str(work / "zoo"),
            "--cache",
            str(cache),
            "--rescan",
            "--overwrite",
            "--no-progress",
            *loops,
        ]
    )
    doc = json.loads((work / "zoo" / "zoo.json").read_text())
    one_by_one = []
    t0 = time.time()
    for name, path, target in zoo:
        rc, sec, line = run([*cli, "scan", path, "--target", target, "--no-progress", *loops])
        one_by_one.append({"name": name, "exit": rc, "seconds": round(sec, 1), "line": line})
    t_seq = time.time() - t0
    rc_hit, t_hit, line_hit = run(
        [
            *cli,
            "zoo",
            str(listing),
            "--out",
            str(work / "zoo-again"),
            "--cache",
            str(cache),
            "--overwrite",
            "--no-progress",
            *loops,
        ]
    )
    again = json.loads((work / "zoo-again" / "zoo.json").read_text())
    verdict_of_exit = {0: "clean", 1: "backdoored"}
    rows = []
    for rec, seq, hit in zip(doc["models"], one_by_one, again["models"], strict=True):
        rows.append(
            {
                "model": seq["name"],
                "target": rec["target"],
                "zoo": rec["verdict"],
                "scan": verdict_of_exit.get(seq["exit"], f"error ({seq['exit']})"),
                "cached": hit["verdict"],
                "cache_hit": hit["cache_hit"],
                "loops": rec["loops"],
                "zoo_seconds": rec["seconds"],
                "scan_seconds": seq["seconds"],
            }
        )
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.processor() or platform.machine(),
        "provenance": provenance(),
        "ray": {"exit": rc_ray, "wall_seconds": round(t_ray, 1), "line": line_ray},
        "sequential": {"wall_seconds": round(t_seq, 1)},
        "cached": {"exit": rc_hit, "wall_seconds": round(t_hit, 1), "line": line_hit},
        "identical": all(r["zoo"] == r["scan"] == r["cached"] for r in rows),
        "models": rows,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    head = ["model", "target", "zoo", "scan", "cached", "cache_hit", "loops", "zoo_seconds", "scan_seconds"]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table += ["| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows]
    (out / "table.md").write_text(
        f"# Zoo demo ({results['date']}, commit {results['provenance'].get('git_commit')})\n\n"
        f"Command: `python benchmarks/zoo_demo.py --models MODELS --out {a.out}"
        f"{' --loops ' + str(a.loops) if a.loops else ''}`\n\n"
        f"* `lmsanitator zoo` on a local Ray (2 CPUs, 1 per model): {t_ray:.0f} s wall, exit {rc_ray}\n"
        f"* the same models one by one with `lmsanitator scan` (2 fuzz workers each): {t_seq:.0f} s wall\n"
        f"* `lmsanitator zoo` again from the cache: {t_hit:.1f} s wall, exit {rc_hit}\n"
        f"* verdicts identical in all three: {results['identical']}\n\n" + "\n".join(table) + "\n"
    )
    print(json.dumps({k: results[k] for k in ("ray", "sequential", "cached", "identical")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
