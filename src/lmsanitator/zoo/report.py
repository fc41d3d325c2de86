"""The zoo's outputs: ``zoo.json`` (schema ``zoo.schema.json``), ``zoo.sarif`` and ``index.html``.

All three are rewritten atomically after every model, so an interrupted zoo leaves a consistent
folder and a rerun resumes from it (the verdict cache answers the models already done).

SARIF levels: a backdoored model is a result at level ``error`` (rule LMS001, the scan's own rule);
a model that could not be scanned is a tool execution notification at level ``error`` (rule
LMS002) with ``executionSuccessful: false``; clean models produce no result. Each result's
``partialFingerprints["modelContentHash/v1"]`` is the model's content hash, so a dashboard shows
one alert per model content, whatever folder or name it was scanned under.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from lmsanitator import __version__
from lmsanitator.core.io import atomic_file, write_json_atomic
from lmsanitator.scan.sarif import scan_sarif

SCHEMA_ID = "https://lmsanitator.invalid/schemas/zoo-1.json"
SCHEMA_VERSION = 1
ERROR_RULE_ID = "LMS002"


def load_schema() -> dict:
    return json.loads(resources.files("lmsanitator.zoo").joinpath("zoo.schema.json").read_text("utf-8"))


def summary(records: list[dict], total: int, seconds: float) -> dict:
    count = {v: sum(r["verdict"] == v for r in records) for v in ("clean", "backdoored", "error")}
    return {
        "models": total,
        "done": len(records),
        **count,
        "cache_hits": sum(bool(r.get("cache_hit")) for r in records),
        "seconds": round(seconds, 2),
    }


def zoo_json(records: list[dict], total: int, settings: dict, seconds: float, started: str) -> dict:
    return {
        "$schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "lmsanitator", "version": __version__},
        "started": started,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "summary": summary(records, total, seconds),
        "models": records,
    }


def zoo_sarif(records: list[dict], reports: dict[str, dict]) -> dict:
    """One SARIF run: a result per backdoored model, a notification per model that errored."""
    results, notes = [], []
    for r in records:
        if r["verdict"] == "backdoored" and r["name"] in reports:
            for res in scan_sarif(reports[r["name"]])["runs"][0]["results"]:
                res["partialFingerprints"] = {"modelContentHash/v1": r["content_hash"]}
                res.setdefault("properties", {}).update({"zoo_model": r["name"], "source": r["source"]})
                results.append(res)
        elif r["verdict"] == "error":
            notes.append(
                {
                    "level": "error",
                    "descriptor": {"id": ERROR_RULE_ID},
                    "message": {"text": f"{r['source']}: {r['error']}"},
                }
            )
    log = scan_sarif({"verdict": "clean", "model": "zoo", "candidates": [], "pvs": []})
    run = log["runs"][0]
    run["tool"]["driver"]["notifications"] = [
        {
            "id": ERROR_RULE_ID,
            "name": "ModelNotScanned",
            "shortDescription": {"text": "The model could not be loaded or scanned"},
            "defaultConfiguration": {"level": "error"},
        }
    ]
    run["results"] = results
    run["invocations"] = [{"executionSuccessful": not notes, "toolExecutionNotifications": notes}]
    return log


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>LMSanitator zoo</title>
<style>
body{{font:14px system-ui,sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}} th{{cursor:pointer;background:#f3f3f3}}
th[aria-sort=ascending]::after{{content:" \\25B2"}} th[aria-sort=descending]::after{{content:" \\25BC"}}
.backdoored{{background:#fde2e2}} .error{{background:#fff4d6}} details{{margin:12px 0}} img{{max-width:100%}}
</style></head><body>
<h1>LMSanitator zoo</h1>
<p id="summary">{summary}</p>
<table id="models"><thead><tr>
<th data-type="text">model</th><th data-type="text">architecture</th><th data-type="text">verdict</th>
<th data-type="num">PVs</th><th data-type="num">loops</th><th data-type="num">seconds</th>
<th data-type="text">cache hit</th></tr></thead>
<tbody>
{rows}
</tbody></table>
<h2>Why each verdict</h2>
{details}
<script>
document.querySelectorAll("#models th").forEach(function (th, col) {{
  th.addEventListener("click", function () {{
    var body = document.querySelector("#models tbody");
    var asc = th.getAttribute("aria-sort") !== "ascending";
    document.querySelectorAll("#models th").forEach(function (h) {{ h.removeAttribute("aria-sort"); }});
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var num = th.dataset.type === "num";
    Array.from(body.rows).sort(function (a, b) {{
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var c = num ? (parseFloat(x) || 0) - (parseFloat(y) || 0) : x.localeCompare(y);
      return asc ? c : -c;
    }}).forEach(function (r) {{ body.appendChild(r); }});
  }});
}});
</script>
</body></html>
"""


def _cell(value, shown=None) -> str:
    v = "" if value is None else str(value)
    return f'<td data-v="{html.escape(v)}">{html.escape(v if shown is None else shown)}</td>'


def index_html(records: list[dict], total: int, seconds: float) -> str:
    s = summary(records, total, seconds)
    rows, details = [], []
    for r in records:
        e = html.escape
        rows.append(
            f'<tr class="{e(r["verdict"])}">'
            + _cell(r["name"])
            + _cell(r.get("model_type"))
            + _cell(r["verdict"], r["verdict"] if r["verdict"] != "error" else f"error: {r.get('error')}")
            + _cell(r.get("pvs"))
            + _cell(r.get("loops"))
            + _cell(r.get("seconds"))
            + _cell("yes" if r.get("cache_hit") else "no")
            + "</tr>"
        )
        if r.get("plots"):
            imgs = "".join(
                f'<img alt="{e(k)} of {e(r["name"])}" src="{e(v)}">' for k, v in r["plots"].items()
            )
            details.append(f"<details><summary>{e(r['name'])}: {e(r['verdict'])}</summary>{imgs}</details>")
    text = (
        f"{s['done']} of {s['models']} models: {s['backdoored']} backdoored, {s['clean']} clean, "
        f"{s['error']} error(s); {s['cache_hits']} from the cache; {s['seconds']:.0f} s."
    )
    return _PAGE.format(summary=html.escape(text), rows="\n".join(rows), details="\n".join(details))


def write_outputs(
    out: Path,
    records: list[dict],
    reports: dict[str, dict],
    *,
    total: int,
    settings: dict,
    seconds: float,
    started: str,
) -> None:
    write_json_atomic(out / "zoo.json", zoo_json(records, total, settings, seconds, started))
    write_json_atomic(out / "zoo.sarif", zoo_sarif(records, reports))
    with atomic_file(out / "index.html") as tmp:
        tmp.write_text(index_html(records, total, seconds), encoding="utf-8")
