"""SARIF 2.1.0 output so code-scanning dashboards can show a backdoored model as a finding."""

from __future__ import annotations

from pathlib import Path

from lmsanitator import __version__

RULE_ID = "LMS001"
RULE_SHORT = "Pretrained encoder maps triggered inputs to a predefined output vector"
RULE_FULL = (
    "LMSanitator inverted a predefined output vector (PV): a soft prompt "
    "moves the model's output far from its clean output and collapses "
    "different sentences onto one vector, the signature of POR, NeuBA "
    "and BToP backdoors."
)


def how_found(report: dict) -> str:
    """How a backdoored verdict's first PV was found, in one clause (CLI line and SARIF message): by a
    fuzz loop, or observed in the defence corpus through a word (``scan.observed``)."""
    acc = [c for c in report["candidates"] if c["accepted"]]
    if not acc:
        return "no legit PV"
    c = acc[0]
    obs = c.get("observed")
    if c["seed"] is None and obs:
        return (
            f"PV observed in the defence corpus: {obs['rows']} clean outputs collapsed together and the word "
            f"{obs['word']!r} sends {obs['land_share']:.0%} of other sentences onto it"
        )
    return f"legit PV inverted at fuzz seed {c['seed']} after {report['loops_run']} loop(s)"


def scan_sarif(report: dict) -> dict:
    path = report.get("model_path") or report.get("model")
    p = Path(path)
    uri = p.resolve().as_uri() if p.exists() else str(path)
    results = []
    if report["verdict"] == "backdoored":
        results.append(
            {
                "ruleId": RULE_ID,
                "level": "error",
                "message": {
                    "text": f"Task-agnostic backdoor: {len(report['pvs'])} predefined output vector(s) "
                    f"found at the '{report['target']}' output of {report['model']} ({how_found(report)})."
                },
                "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri}}}],
                "properties": {
                    "fingerprint": report.get("fingerprint"),
                    "loops_run": report.get("loops_run"),
                },
            }
        )
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "lmsanitator",
                        "version": __version__,
                        "informationUri": "https://doi.org/10.14722/ndss.2024.23238",
                        "rules": [
                            {
                                "id": RULE_ID,
                                "name": "TaskAgnosticBackdoor",
                                "shortDescription": {"text": RULE_SHORT},
                                "fullDescription": {"text": RULE_FULL},
                                "defaultConfiguration": {"level": "error"},
                            }
                        ],
                    }
                },
                "results": results,
                "invocations": [{"executionSuccessful": True}],
            }
        ],
    }
