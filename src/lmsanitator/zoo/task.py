"""The body of one zoo task, run in a Ray worker: scan one model, never raise."""

from __future__ import annotations

import os
import time

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.runtime import set_threads
from lmsanitator.scan.config import ScanConfig
from lmsanitator.scan.run import scan_model


def scan_task(job: dict) -> dict:
    """``{"ok": True, "report": ...}`` or ``{"ok": False, "error": "<one line>"}``.

    The task appends its PID to ``job["attempts_file"]`` first: the driver counts the attempts (more
    than one after a lost worker) and an operator can see which process scans which model.
    """
    if job.get("attempts_file"):
        with open(job["attempts_file"], "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    set_threads(job["threads"])
    t0 = time.time()
    try:
        config = ScanConfig.from_dict(job["config"])
        report = scan_model(job["path"], config, corpus=job["corpus"], device=job["device"])
    except LMSanitatorError as exc:
        return {"ok": False, "error": str(exc).splitlines()[0]}
    except Exception as exc:  # a crash in one model is that model's record, not the zoo's end
        lines = str(exc).strip().splitlines()
        return {"ok": False, "error": f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]}
    return {"ok": True, "report": report, "seconds": round(time.time() - t0, 2)}
