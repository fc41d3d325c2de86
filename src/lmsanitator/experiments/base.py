"""What every experiment shares: configuration, provenance, a resumable work folder, atomic output.

An experiment is a class with ``name``, ``paper`` (which table or figure it reproduces),
``config(quick)`` -> a JSON-able dict, ``units(config)`` -> the independent pieces of work (one
model to build and scan, one victim to tune ...), ``run_unit(unit, ctx)`` -> a JSON-able record,
and ``summarize(config, records)`` -> ``(summary, markdown table)``; ``plot`` is optional.

Units run as Ray tasks (:mod:`lmsanitator.core.cluster`): on a local Ray started with the cores
this process may use, or on a cluster given by ``address`` (the work folder must then be on storage
every node sees). Each finished unit is written to ``<work>/units/<id>.json`` at once, so an
interrupted run resumes where it stopped; a unit whose worker dies is re-run by Ray. With
``cpus=1`` and no address the units run in this process, one after another (no Ray).
``results/NAME`` itself is written to a temporary sibling and renamed, so it is complete or absent.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.metadata as md
import json
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lmsanitator.core.cluster import ray_session, run_tasks
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import atomic_output_dir, check_output_dir, write_json_atomic
from lmsanitator.core.runtime import available_cores, set_threads
from lmsanitator.data import load_task


def provenance() -> dict:
    """Library versions, machine and code revision: what a reader needs to trust or redo a number."""
    versions = {}
    for pkg in ("lmsanitator", "torch", "transformers", "peft", "safetensors", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    commit = None
    try:
        here = Path(__file__).resolve().parent
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        pass
    cores = available_cores()
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": cores,
        "git_commit": commit,
        "command": " ".join(sys.argv),
    }


@dataclass
class Context:
    """Where a run keeps its work, and how it talks."""

    work: Path
    device: str = "cpu"
    models: Path | None = None  # built models shared between units (default: <work>/models)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = self.work / "models"

    def say(self, msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)


class Experiment:
    name = ""
    paper = ""  # e.g. "LMSanitator Table 4"
    description = ""

    def config(self, quick: bool) -> dict:
        raise NotImplementedError

    def units(self, config: dict) -> list[dict]:
        """Independent pieces of work; each has a unique ``id`` (a file-name-safe string)."""
        raise NotImplementedError

    def run_unit(self, unit: dict, config: dict, ctx: Context) -> dict:
        raise NotImplementedError

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        raise NotImplementedError

    def plot(self, config: dict, records: list[dict], summary: dict, folder: Path) -> list[str]:
        return []


def sized_task(task, train: int, validation: int, test: int):
    """``task`` (a Task or a task name) with only its first train / validation / test examples."""
    task = load_task(task) if isinstance(task, str) else task
    task = task.with_train_size(train).with_validation_size(validation)
    return dataclasses.replace(task, test=list(task.test)[:test])


def run_unit_task(job: dict) -> dict:
    """One unit in a Ray worker (or in this process): run it, write its record, return it."""
    module, _, cls = job["experiment"].partition(":")
    exp = getattr(importlib.import_module(module), cls)()
    ctx = Context(**job["ctx"])
    set_threads(job["threads"])
    t_u = time.perf_counter()
    rec = exp.run_unit(job["unit"], job["config"], ctx)
    rec = {
        "id": job["unit"]["id"],
        "unit": job["unit"],
        **rec,
        "unit_seconds": round(time.perf_counter() - t_u, 2),
    }
    write_json_atomic(_unit_file(ctx.work, job["unit"]["id"]), rec)
    return rec


def _run_units(exp, todo, config, ctx, *, address, cpus, cpus_per_unit) -> None:
    """Every unit of ``todo`` as a Ray task (``cpus_per_unit`` CPUs each); in this process when
    there is one CPU and no cluster. A unit that raises stops the run with its one-line error
    (finished units stay in the work folder)."""
    name = f"{type(exp).__module__}:{type(exp).__qualname__}"
    ctx_fields = {"work": ctx.work, "device": ctx.device, "models": ctx.models, "progress": False}
    jobs = [
        {"experiment": name, "unit": u, "config": config, "ctx": ctx_fields, "threads": cpus_per_unit}
        for u in todo
    ]
    bar = tqdm(total=len(jobs), desc=exp.name, unit="unit", disable=not ctx.progress)
    if address is None and (cpus or available_cores()) == 1:
        for job in jobs:
            run_unit_task(dict(job, ctx=dict(ctx_fields, progress=ctx.progress)))
            bar.update(1)
    elif jobs:
        gpus = 1 if ctx.device.startswith("cuda") else 0
        with ray_session(address, num_cpus=cpus):
            for job, _, error in run_tasks(
                run_unit_task, jobs, num_cpus=cpus_per_unit, num_gpus=gpus, name="unit"
            ):
                if error is not None:
                    raise LMSanitatorError(f"{exp.name}: unit {job['unit']['id']} failed: {error}")
                bar.update(1)
    bar.close()


def _unit_file(work: Path, unit_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", unit_id)
    return work / "units" / f"{safe}.json"


def run_experiment(
    exp: Experiment,
    *,
    quick: bool,
    out: str | Path,
    work: str | Path | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    model_cache: str | Path | None = None,
    only: str | None = None,
    address: str | None = None,
    cpus: int | None = None,
    cpus_per_unit: int = 1,
) -> dict | None:
    """Run (or resume) ``exp``; return the results, or None when ``only`` picked some units.
    ``only``: a shell pattern over unit ids (``"splade-tiny.*"``): runs those units, writes no results
    (a later call without it assembles them). ``address``: a Ray cluster to run the units on;
    ``cpus``: the local Ray's CPUs (default every core this process may use; 1: no Ray)."""
    # ~90 lines kept as one: the steps (check the output, pick units, run or reuse each, assemble,
    # write atomically) must run in this order, and each is a few lines
    out = Path(out)
    if only is None:
        check_output_dir(out, overwrite)  # fail before hours of work, not after
    work = Path(work) if work is not None else out.parent / f"{out.name}.work"
    config = exp.config(quick)
    units = exp.units(config)
    ids = [u["id"] for u in units]
    if len(set(ids)) != len(ids):
        raise LMSanitatorError(f"experiment '{exp.name}': duplicate unit ids")
    work.mkdir(parents=True, exist_ok=True)
    (work / "units").mkdir(exist_ok=True)
    # a work folder belongs to one configuration: resuming with another would mix numbers
    cfg_file = work / "config.json"
    key = {"experiment": exp.name, "config": config}
    if cfg_file.exists():
        try:
            old = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != key:
            raise LMSanitatorError(
                f"work folder '{work}' holds another configuration of '{old and old.get('experiment')}'"
                " (remove it or give another --work)"
            )
    else:
        write_json_atomic(cfg_file, key)
    ctx = Context(
        work=work,
        device=device,
        progress=progress,
        models=Path(model_cache) if model_cache is not None else None,
    )
    t0 = time.perf_counter()
    mine = list(units)
    if only is not None:
        mine = [u for u in mine if fnmatch.fnmatchcase(u["id"], only)]
        if not mine:
            raise LMSanitatorError(f"--only '{only}' matches no unit of '{exp.name}'")
    todo = [u for u in mine if not _unit_file(work, u["id"]).exists()]
    if len(todo) < len(mine):
        ctx.say(f"{exp.name}: {len(mine) - len(todo)} of {len(mine)} units already done in {work}")
    _run_units(exp, todo, config, ctx, address=address, cpus=cpus, cpus_per_unit=cpus_per_unit)
    if only is not None:
        return None
    records = [json.loads(_unit_file(work, u["id"]).read_text(encoding="utf-8")) for u in units]
    summary, table = exp.summarize(config, records)
    results = {
        "experiment": exp.name,
        "paper": exp.paper,
        "quick": quick,
        "summary": summary,
        "config": config,
        "records": records,
        # compute time of all units (resumed and sharded runs included) and this call's wall time
        "unit_seconds_total": round(sum(r.get("unit_seconds", 0) for r in records), 1),
        "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
        "provenance": provenance(),
    }
    with atomic_output_dir(out, overwrite) as tmp:
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        plots = exp.plot(config, records, summary, tmp)
        head = (
            f"# {exp.name}: {exp.paper}\n\n{exp.description}\n\n"
            f"Command: `{results['provenance']['command']}`  \n"
            f"Compute: {results['unit_seconds_total']:.0f} s of units on "
            f"{results['provenance']['cores']} cores "
            f"({results['provenance']['cpu']}){' - quick mode' if quick else ''}.\n\n"
        )
        figs = "".join(f"\n![{p}]({p})\n" for p in plots)
        (tmp / "table.md").write_text(head + table.rstrip() + "\n" + figs, encoding="utf-8")
    return results
