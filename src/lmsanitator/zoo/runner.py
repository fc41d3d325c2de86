"""Scan a zoo: each model a Ray task, verdicts cached, outputs rewritten as each model finishes.

    result = ZooRunner(config, corpus="austen").run(refs, out_dir)

The driver resolves each model to its files and hashes them (a cache hit answers without a task),
then submits the rest as Ray tasks declaring ``cpus_per_model`` CPUs (and GPUs on CUDA). A task
catches its own errors and returns them as the model's ``error`` record; a task whose worker process
dies is re-run by Ray (``TASK_RETRIES``), so a lost worker costs time, never a verdict.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from lmsanitator.core.cluster import ray_session, run_tasks
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import write_json_atomic
from lmsanitator.models import BUNDLED, BUNDLED_CAUSAL, resolve_model_path
from lmsanitator.scan.config import ScanConfig
from lmsanitator.zoo.cache import VerdictCache
from lmsanitator.zoo.plots import plot_loops, plot_pvs
from lmsanitator.zoo.report import write_outputs
from lmsanitator.zoo.sources import ModelRef, unique_names
from lmsanitator.zoo.task import scan_task

WORK = ".work"  # per-model attempt logs (a task appends its PID when it starts)


def _record(ref: ModelRef, name: str, **kw) -> dict:
    base = {
        "name": name,
        "source": ref.source,
        "kind": ref.kind,
        "location": ref.location,
        "revision": ref.revision,
        "commit": None,
        "content_hash": None,
        "key": None,
        "verdict": "error",
        "error": None,
        "model_type": None,
        "target": None,
        "pvs": None,
        "loops": None,
        "seconds": None,
        "cache_hit": False,
        "attempts": None,
        "report": None,
        "plots": {},
    }
    base.update(kw)
    return base


def _hub_snapshot(ref: ModelRef) -> tuple[str, str]:
    """Local folder and commit hash of a hub model (from the cache when offline)."""
    from huggingface_hub import snapshot_download  # noqa: PLC0415  heavy: only for hub ids

    try:
        folder = snapshot_download(ref.location, revision=ref.revision)
    except Exception as exc:  # offline, unknown repo, bad revision: one line for the record
        raise LMSanitatorError(
            f"cannot fetch {ref.location} from the hub: {str(exc).splitlines()[0]}"
        ) from None
    return folder, Path(folder).name


def resolve(ref: ModelRef) -> tuple[str, str | None]:
    """The local path to load and hash (folder or .gguf file), and the hub commit when from the hub."""
    if ref.kind == "invalid":
        raise LMSanitatorError(ref.problem or f"'{ref.source}' names no model")
    if ref.kind == "hub":
        return _hub_snapshot(ref)
    if ref.kind == "bundled":
        if ref.location not in BUNDLED and ref.location not in BUNDLED_CAUSAL:
            raise LMSanitatorError(f"'{ref.location}' is not a bundled model")
        return resolve_model_path(ref.location), None
    return ref.location, None


@dataclass
class ZooResult:
    records: list[dict]
    seconds: float
    out: Path

    def count(self, verdict: str) -> int:
        return sum(r["verdict"] == verdict for r in self.records)

    @property
    def exit_code(self) -> int:
        """1 any model backdoored; else 2 any error or nothing scanned; else 0."""
        if self.count("backdoored"):
            return 1
        return 2 if self.count("error") or not self.records else 0


@dataclass
class ZooRunner:
    config: ScanConfig = field(default_factory=ScanConfig)
    corpus: str = "austen"
    device: str = "cpu"
    cache: VerdictCache = field(default_factory=VerdictCache)
    rescan: bool = False
    address: str | None = None
    cpus_per_model: int = 1
    progress: bool = True

    @property
    def settings(self) -> dict:
        """What decides a verdict besides the model (workers only change the speed)."""
        scan = self.config.to_dict()
        scan.pop("workers", None)
        return {"scan": scan, "corpus": self.corpus, "device": self.device}

    def _config_for(self, ref: ModelRef) -> ScanConfig:
        cfg = self.config if ref.target is None else dataclasses.replace(self.config, target=ref.target)
        # one scan = one process: fork pools inside a Ray worker would oversubscribe its CPUs
        return dataclasses.replace(cfg, workers=1)

    def _plan(self, ref: ModelRef, name: str) -> tuple[dict | None, dict | None]:
        """(finished record, None) for an error or a cache hit, or (None, job) to scan."""
        try:
            path, commit = resolve(ref)
            content = self.cache.content_hash(path)
        except (LMSanitatorError, OSError) as exc:
            return _record(ref, name, error=str(exc).splitlines()[0]), None
        cfg = self._config_for(ref)
        settings = dict(self.settings, scan={**self.settings["scan"], "target": cfg.target})
        key = VerdictCache.key(content, settings)
        ids = dict(commit=commit, content_hash=content, key=key, target=cfg.target)
        if not self.rescan:
            hit = self.cache.get(key)
            if hit is not None:
                return dict(
                    _record(ref, name, **ids), **_verdict_fields(hit), cache_hit=True, _report=hit["report"]
                ), None
        job = {
            "name": name,
            "path": path,
            "config": cfg.to_dict(),
            "corpus": self.corpus,
            "device": self.device,
            "threads": self.cpus_per_model,
            "attempts_file": None,
            "ids": ids,
        }
        return None, job

    def run(self, refs: list[ModelRef], out: str | Path) -> ZooResult:
        out = Path(out)
        (out / "models").mkdir(parents=True, exist_ok=True)
        (out / "plots").mkdir(exist_ok=True)
        (out / WORK).mkdir(exist_ok=True)
        t0, started = time.time(), datetime.now(UTC).isoformat(timespec="seconds")
        names = unique_names(refs)
        records: dict[str, dict] = {}
        reports: dict[str, dict] = {}
        jobs = []
        bar = tqdm(total=len(refs), desc="zoo", unit="model", disable=not self.progress)

        def finish(rec: dict) -> None:
            report = rec.pop("_report", None)
            if report is not None:
                reports[rec["name"]] = report
                self._write_model(out, rec, report)
            records[rec["name"]] = rec
            ordered = [records[n] for n in names if n in records]
            write_outputs(
                out,
                ordered,
                reports,
                total=len(refs),
                settings=self.settings,
                seconds=time.time() - t0,
                started=started,
            )
            bar.update(1)

        for ref, name in zip(refs, names, strict=True):
            rec, job = self._plan(ref, name)
            if rec is not None:
                finish(rec)
            else:
                job["attempts_file"] = str(out / WORK / f"{name}.attempts")
                Path(job["attempts_file"]).unlink(missing_ok=True)
                jobs.append((ref, job))
        self.cache.save_memo()
        if jobs:
            gpus = 1 if self.device.startswith("cuda") else 0
            with ray_session(self.address, num_gpus=None if self.address else gpus or None):
                by_name = {job["name"]: ref for ref, job in jobs}
                for job, result, crash in run_tasks(
                    scan_task, [j for _, j in jobs], num_cpus=self.cpus_per_model, num_gpus=gpus, name="scan"
                ):
                    finish(self._from_task(by_name[job["name"]], job, result, crash))
        bar.close()
        ordered = [records[n] for n in names]
        return ZooResult(ordered, time.time() - t0, out)

    def _from_task(self, ref: ModelRef, job: dict, result: dict | None, crash: str | None) -> dict:
        attempts = _count_lines(job["attempts_file"])
        if crash is not None or not result or not result.get("ok"):
            reason = crash or (result or {}).get("error") or "the scan returned nothing"
            return _record(ref, job["name"], **job["ids"], error=reason, attempts=attempts)
        report = result["report"]
        rec = dict(
            _record(ref, job["name"], **job["ids"], attempts=attempts),
            **_verdict_fields({"report": report}),
            _report=report,
        )
        self.cache.put(job["ids"]["key"], {"key": job["ids"]["key"], "report": report})
        return rec

    @staticmethod
    def _write_model(out: Path, rec: dict, report: dict) -> None:
        name = rec["name"]
        write_json_atomic(out / "models" / f"{name}.json", report)
        rec["report"] = f"models/{name}.json"
        plots = {"loops": f"plots/{name}-loops.png"}
        plot_loops(report, out / plots["loops"], name)
        if report.get("pvs"):
            plots["pvs"] = f"plots/{name}-pvs.png"
            plot_pvs(report, out / plots["pvs"], name)
        rec["plots"] = plots


def _verdict_fields(hit: dict) -> dict:
    rep = hit["report"]
    return {
        "verdict": rep["verdict"],
        "error": None,
        "model_type": rep.get("model_type"),
        "target": rep.get("target"),  # what the scan read (a decoder's default cls becomes last)
        "pvs": len(rep.get("pvs") or []),
        "loops": rep.get("loops_run"),
        "seconds": rep.get("seconds"),
    }


def _count_lines(path: str | None) -> int | None:
    try:
        return len(Path(path).read_text().split()) if path else None
    except OSError:
        return None
