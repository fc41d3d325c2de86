"""``pv-search``: LMSanitator Figure 6 - how many of the attacker's PVs the search mode recovers.

Each unit implants an attack with the paper's six triggers (six PVs) into a bundled encoder, then
runs the search mode (keep mining; stop after ``patience`` fuzz loops without a new PV, at most
``loops``). A planted PV counts as recovered when some found PV agrees with it in at least 90% of
signs (``recall``); the share at the guard's T_match = 0.8 is reported beside it. Found PVs that
match no planted one are "unintended" (the paper: superpositions of attack PVs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from lmsanitator.data import load_corpus
from lmsanitator.experiments.base import Context, Experiment
from lmsanitator.experiments.recipes import build_model, model_recipe
from lmsanitator.experiments.search import search_config, search_pvs
from lmsanitator.metrics import sign_match

RECOVERED_AT = 0.9
T_MATCH = 0.8


def _unit(base: str, attack: str, **settings) -> dict:
    return {"id": f"{base}.{attack}", **model_recipe(base, attack, **settings)}


class PVSearch(Experiment):
    name = "pv-search"
    paper = "LMSanitator Figure 6 (PV recall of the search mode)"
    description = (
        "Attacks with the paper's six triggers; search mode until `patience` loops without a new PV. "
        f"Recall: planted PVs matched by a found PV in >= {RECOVERED_AT:.0%} of signs."
    )

    def config(self, quick: bool) -> dict:
        if quick:
            units = [_unit("splade-tiny", "por", per_trigger=400)]
            search = search_config({"loops": 12, "patience": 6})
        else:
            units = [_unit("splade-tiny", a) for a in ("por", "neuba", "btop")] + [_unit("minilm", "por")]
            search = search_config()  # shared with the other search experiments
        return {
            "units": units,
            "corpus": "austen",
            "attack_verify_sentences": 100 if quick else 200,
            "search": search,
            "recovered_at": RECOVERED_AT,
            "t_match": T_MATCH,
        }

    def units(self, config: dict) -> list[dict]:
        return config["units"]

    def run_unit(self, unit: dict, config: dict, ctx: Context) -> dict:
        corpus = load_corpus(config["corpus"])
        _, planted, rec = build_model(unit, corpus, ctx, config["attack_verify_sentences"], cache=True)
        pvset, info = search_pvs(unit, corpus, config["search"], ctx, config["attack_verify_sentences"])
        found = pvset.pvs.float().cpu()
        agree = sign_match(found, planted.float()) if len(found) else torch.zeros(0, len(planted))
        best_per_planted = agree.max(dim=0).values.tolist() if len(found) else [0.0] * len(planted)
        best_per_found = agree.max(dim=1).values.tolist() if len(found) else []
        from_probe = [i for i, x in enumerate(pvset.losses) if x.get("probe_of") is not None]
        # planted PVs only an antipode probe recovered (no fuzz-found PV reaches the bar)
        fuzz_only = [i for i in range(len(found)) if i not in from_probe]
        best_fuzz = agree[fuzz_only].max(dim=0).values.tolist() if fuzz_only else [0.0] * len(planted)
        rec["search"] = {
            "loops_run": info["loops_run"],
            "probes_run": info.get("probes_run", 0),
            "seconds": info["seconds"],
            "found": len(found),
            "found_by_probes": len(from_probe),
            "recovered_only_by_probes": sum(
                b >= config["recovered_at"] > f for b, f in zip(best_per_planted, best_fuzz)
            ),
            "pv_seeds": pvset.seeds,
            "best_agreement_per_planted": [round(x, 4) for x in best_per_planted],
            "best_agreement_per_found": [round(x, 4) for x in best_per_found],
            "recovered": sum(x >= config["recovered_at"] for x in best_per_planted),
            "recovered_at_t_match": sum(x >= config["t_match"] for x in best_per_planted),
            "unintended": sum(x < config["t_match"] for x in best_per_found),
            "planted": len(planted),
        }
        r = rec["search"]
        ctx.say(
            f"{unit['id']}: {r['recovered']}/{r['planted']} planted PVs recovered, {r['found']} found, "
            f"{r['loops_run']} loops, {r['seconds']:.0f} s"
        )
        return rec

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        planted = sum(r["search"]["planted"] for r in records)
        found = sum(r["search"]["recovered"] for r in records)
        found8 = sum(r["search"]["recovered_at_t_match"] for r in records)
        summary = {
            "recall": round(found / planted, 4),
            "found": found,
            "planted": planted,
            "recall_at_t_match": round(found8 / planted, 4),
            "unintended": sum(r["search"]["unintended"] for r in records),
            "loops_run": sum(r["search"]["loops_run"] for r in records),
            "probes_run": sum(r["search"].get("probes_run", 0) for r in records),
            "recovered_only_by_probes": sum(r["search"].get("recovered_only_by_probes", 0) for r in records),
        }
        lines = [
            "| model | attack | target | planted PVs | recovered (>= 0.9) | of them only by a probe | "
            "recovered (>= 0.8) | unintended | loops + antipode probes | seconds | "
            "agreement per planted PV |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in records:
            u, s = r["unit"], r["search"]
            lines.append(
                f"| {u['base']} | {u['attack']['name']} | {u['target']} | {s['planted']} | "
                f"{s['recovered']} | "
                f"{s.get('recovered_only_by_probes', 0)} | {s['recovered_at_t_match']} | {s['unintended']} | "
                f"{s['loops_run']} + {s.get('probes_run', 0)} | {s['seconds']:.0f} | "
                + " ".join(f"{x:.2f}" for x in s["best_agreement_per_planted"])
                + " |"
            )
        lines.append(
            f"| **all** | | | {planted} | **{found} ({100 * summary['recall']:.1f}%)** | "
            f"{summary['recovered_only_by_probes']} | {found8} ({100 * summary['recall_at_t_match']:.1f}%) | "
            f"{summary['unintended']} | {summary['loops_run']} + {summary['probes_run']} | | |"
        )
        return summary, "\n".join(lines)

    def plot(self, config: dict, records: list[dict], summary: dict, folder: Path) -> list[str]:
        import matplotlib  # noqa: PLC0415  heavy: matplotlib loads only for plots

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415  heavy: matplotlib loads only for plots

        names = [f"{r['unit']['attack']['name']}\n{r['unit']['base']}" for r in records]
        x = range(len(records))
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(records), 3.2))
        w = 0.27
        ax.bar([i - w for i in x], [r["search"]["planted"] for r in records], w, label="attack PVs")
        ax.bar(list(x), [r["search"]["recovered"] for r in records], w, label="recovered (>= 0.9 signs)")
        ax.bar([i + w for i in x], [r["search"]["unintended"] for r in records], w, label="unintended PVs")
        ax.set_xticks(list(x), names)
        ax.set_ylabel("PVs")
        ax.set_title(f"PV search: recall {100 * summary['recall']:.1f}%")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "pv_recall.png", dpi=120)
        plt.close(fig)
        return ["pv_recall.png"]
