"""``lmsanitator experiment NAME [--quick] [--out results/NAME]``."""

from __future__ import annotations

import json


def register(sub) -> dict:
    from lmsanitator.experiments import EXPERIMENTS

    p = sub.add_parser(
        "experiment",
        help="reproduce one of the papers' experiments (tables, plots, provenance)",
        description="Run one of the papers' experiments on the bundled models and write results/NAME: "
        "results.json (numbers, configuration, versions, machine), table.md, plots. Finished units "
        "are kept in --work, so an interrupted run resumes; --shard I/N splits the units between N "
        "processes (then run once without --shard to assemble).",
    )
    p.add_argument("name", choices=list(EXPERIMENTS))
    p.add_argument("--quick", action="store_true", help="small version for tests (<= 5 min on 2 cores)")
    p.add_argument("--out", help="output folder (default results/NAME, or results/NAME-quick)")
    p.add_argument("--work", help="folder of finished units (default: OUT.work beside --out)")
    p.add_argument(
        "--model-cache",
        help="folder of built (backdoored, fine-tuned) models shared between runs and "
        "experiments (default: WORK/models)",
    )
    p.add_argument("--shard", help="I/N: run only every N-th unit starting at I, write no results")
    p.add_argument(
        "--only",
        metavar="PATTERN",
        help="run only the units whose id matches this shell pattern "
        "(e.g. 'splade-tiny.neuba.*'), write no results",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    return {"experiment": cmd_experiment}


def cmd_experiment(a) -> int:
    from lmsanitator.core.runtime import set_threads
    from lmsanitator.experiments import get_experiment, run_experiment
    from lmsanitator.experiments.base import parse_shard

    exp = get_experiment(a.name)
    shard = parse_shard(a.shard)
    out = a.out or f"results/{a.name}{'-quick' if a.quick else ''}"
    set_threads()
    res = run_experiment(
        exp,
        quick=a.quick,
        out=out,
        work=a.work,
        overwrite=a.overwrite,
        device=a.device,
        progress=not a.no_progress,
        shard=shard,
        model_cache=a.model_cache,
        only=a.only,
    )
    if res is None:
        print(f"{a.name}: {'shard ' + a.shard if a.shard else 'units ' + repr(a.only)} done")
        return 0
    print(json.dumps({"experiment": a.name, "out": out, "summary": res["summary"]}, indent=2))
    return 0
