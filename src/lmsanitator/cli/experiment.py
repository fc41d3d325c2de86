"""``lmsanitator experiment NAME [--quick] [--out results/NAME]``."""

from __future__ import annotations

import json

from lmsanitator.cli.common import add_device, add_overwrite, check_output_folder
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.experiments import EXPERIMENTS, get_experiment, run_experiment


def add_commands(sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="reproduce one of the papers' experiments (tables, plots, provenance)",
        description="Run one of the papers' experiments on the bundled models and write results/NAME: "
        "results.json (numbers, configuration, versions, machine), table.md, plots. Finished units "
        "are kept in --work, so an interrupted run resumes. Units run as Ray tasks: on a local Ray "
        "with this machine's cores, or on the cluster at --address (--work and --model-cache must then "
        "be on storage every node sees).",
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
    p.add_argument(
        "--address", help="Ray cluster to run the units on (default: a local Ray, shut down at the end)"
    )
    p.add_argument(
        "--cpus", type=int, help="CPUs of the local Ray (default: the cores this process may use; 1: no Ray)"
    )
    p.add_argument("--cpus-per-unit", type=int, default=1, help="CPUs (torch threads) per unit (default 1)")
    p.add_argument(
        "--only",
        metavar="PATTERN",
        help="run only the units whose id matches this shell pattern "
        "(e.g. 'splade-tiny.neuba.*'), write no results",
    )
    p.add_argument(
        "--build-only",
        action="store_true",
        help="build the units' models (fine-tuned and backdoored copies) into --model-cache and stop: "
        "no scans, no results (models do not depend on the scan settings; a later run finds them "
        "built). One model at a time, with --cpus-per-unit threads; detection and adaptive only",
    )
    add_overwrite(p, "--out")
    p.add_argument("--no-progress", action="store_true")
    add_device(p)
    p.set_defaults(handler=cmd_experiment)


def cmd_experiment(a) -> int:
    exp = get_experiment(a.name)
    if a.cpus is not None and a.cpus < 1 or a.cpus_per_unit < 1:
        raise LMSanitatorError("--cpus and --cpus-per-unit must be >= 1")
    out = a.out or f"results/{a.name}{'-quick' if a.quick else ''}"
    if a.build_only:
        build = getattr(exp, "build_models", None)
        if build is None:
            raise LMSanitatorError(f"--build-only: experiment '{a.name}' has no model zoo to build")
        rows = build(
            quick=a.quick,
            out=out,
            work=a.work,
            model_cache=a.model_cache,
            device=a.device,
            only=a.only,
            threads=a.cpus_per_unit,
        )
        print(json.dumps({"experiment": a.name, "built": rows}, indent=1))
        return 0
    if a.only is None:  # an --only run writes no results
        check_output_folder(out, a.overwrite)
    res = run_experiment(
        exp,
        quick=a.quick,
        out=out,
        work=a.work,
        overwrite=a.overwrite,
        device=a.device,
        progress=not a.no_progress,
        model_cache=a.model_cache,
        only=a.only,
        address=a.address,
        cpus=a.cpus,
        cpus_per_unit=a.cpus_per_unit,
    )
    if res is None:
        print(f"{a.name}: units {a.only!r} done")
        return 0
    print(json.dumps({"experiment": a.name, "out": out, "summary": res["summary"]}, indent=2))
    return 0
