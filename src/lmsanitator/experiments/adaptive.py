"""``adaptive``: LMSanitator Tables 7, 8, 17 and 18 at small scale - the scan's detection rate
against adaptive attackers: fewer triggers (one or two PVs; word or phrase triggers), a scattering
loss, triggers from frequent words, a Wasserstein loss.

Every unit implants POR with one adaptive option and runs the detection scan at the scan's own
defaults (``lmsanitator scan``: 30 fuzz loops of 3 epochs at lr 3e-3, early acceptance, clean
evidence, PVs observed in the defence corpus), seeds 0-2. The attack's own strength is reported
beside the detection rate: the verification hit rate (share of triggered held-out sentences that
land on the PV) - a strong enough scattering or Wasserstein loss makes the backdoor untargeted,
which is the paper's point about these attacks.
"""

from __future__ import annotations

from lmsanitator.experiments.detection import Detection
from lmsanitator.experiments.recipes import ATTACK_SETTINGS


def _unit(table: str, cell: str, base: str, seed: int, **attack) -> dict:
    spec = {
        "name": "por",
        "random_triggers": 1,
        "trigger_words": 1,
        "pv_scheme": "random",
        "seed": seed,
        **ATTACK_SETTINGS[base]["por"],
        **attack,
    }
    return {
        "id": f"{table}.{cell.replace(' ', '_')}.{base}.s{seed}",
        "table": table,
        "cell": cell,
        "base": base,
        "kind": "backdoored",
        "target": "cls",
        "finetune": None,
        "attack": spec,
    }


def adaptive_units(
    seeds: list[int], base: str, scatter=(1.0, 5.0, 10.0), wasserstein=(1.0, 10.0, 50.0)
) -> list[dict]:
    units = []
    for s in seeds:
        for k in (1, 2):
            for words, kind in ((1, "word"), (2, "phrase")):
                units.append(
                    _unit("table7", f"{k} PV {kind}", base, s, random_triggers=k, trigger_words=words)
                )
        for w in scatter:
            units.append(_unit("table8", f"scatter {w:g}", base, s, random_triggers=2, scatter_weight=w))
        for band in ("rare", "moderate", "frequent"):
            units.append(_unit("table17", f"{band} words", base, s, random_triggers=2, trigger_band=band))
        for w in wasserstein:
            units.append(
                _unit("table18", f"wasserstein {w:g}", base, s, random_triggers=2, wasserstein_weight=w)
            )
    return units


class Adaptive(Detection):
    name = "adaptive"
    paper = (
        "LMSanitator Tables 7, 8, 17, 18 (adaptive attacks: fewer triggers, scattering, frequent words, "
        "Wasserstein)"
    )
    description = (
        "Detection rate of the scan (the CLI's detection defaults: fuzz loops of 3 epochs at lr 3e-3, "
        "stop at the first legit PV, PVs observed in the defence corpus first) on POR models built with "
        "one adaptive option each, seeds 0-2; hit rate = the implant's own strength on held-out text."
    )
    # the paper's detection rates, where it reports them (LMSanitator Tables 17-18; its triggers and
    # weight scales differ from ours, see benchmarks/RESULTS.md)
    paper_rates = {
        "table17/frequent words": "0.93-1.00 (frequent words formed into phrases)",
        "table18": ">= 0.87 at the weights that leave ASR >= 0.83",
    }

    def config(self, quick: bool) -> dict:
        if quick:
            units = [
                _unit("table7", "1 PV phrase", "splade-tiny", 0, trigger_words=2),
                _unit("table8", "scatter 5", "splade-tiny", 0, random_triggers=2, scatter_weight=5.0),
            ]
            scan = {"loops": 6}
        else:
            units = adaptive_units([0, 1, 2], "splade-tiny")
            scan = {"loops": 30}
        return {
            "models": units,
            "corpus": "austen",
            "attack_verify_sentences": 100 if quick else 200,
            # the scan's defaults (epochs, lr, thresholds, corpus evidence left to ScanConfig), written
            # out where the experiment's records depend on them
            "scan": {**scan, "sentences": 320, "batch_size": 32, "seed": 0, "corpus_seed": 0},
        }

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        cells: dict = {}
        for r in records:
            cells.setdefault((r["unit"]["table"], r["unit"]["cell"]), []).append(r)
        summary = {}
        lines = [
            "| table | adaptive option | models | detection rate | hit rate (mean) | "
            "clean false-hit (mean) | PV agreement (min) |",
            "|---|---|---|---|---|---|---|",
        ]
        for (table, cell), rs in cells.items():
            det = sum(r["scan"]["verdict"] == "backdoored" for r in rs) / len(rs)
            hit = sum(r["attack"]["min_hit_rate"] for r in rs) / len(rs)
            fh = sum(r["attack"]["clean_false_hit_rate"] for r in rs) / len(rs)
            ag = [r["scan"]["pv_agreement"] for r in rs if "pv_agreement" in r["scan"]]
            summary[f"{table}/{cell}"] = {
                "models": len(rs),
                "detection_rate": round(det, 4),
                "hit_rate": round(hit, 4),
            }
            lines.append(
                f"| {table} | {cell} | {len(rs)} | {det:.2f} | {hit:.2f} | {100 * fh:.1f}% | {min(ag):.3f} |"
                if ag
                else f"| {table} | {cell} | {len(rs)} | {det:.2f} | {hit:.2f} | {100 * fh:.1f}% | - |"
            )
        lines.append("")
        lines.append(
            "Paper (LMSanitator): "
            + "; ".join(f"{k}: detection {v}" for k, v in self.paper_rates.items())
            + ". PV agreement: sign agreement of the accepted PV with the nearest planted PV."
        )
        n = len(records)
        summary["overall_detection_rate"] = round(
            sum(r["scan"]["verdict"] == "backdoored" for r in records) / n, 4
        )
        return summary, "\n".join(lines)

    def plot(self, config, records, summary, folder):
        return []
