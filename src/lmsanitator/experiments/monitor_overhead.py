"""``monitor-overhead``: LMSanitator Table 16 - the cost of PV monitoring on P-tuning v2 inference.

Per model: the PVs found by the search mode on a POR-backdoored encoder (as ``attack-defense``), a
P-tuning v2 victim, and clean test inputs timed through the unguarded model and through the guard's
monitor path (the same forward pass + the sign match + the flag), A/B interleaved, median of
rounds, at batch 1 and batch 32. The paper's post-monitor costs 11%; the goal here is <= 3%.
"""

from __future__ import annotations

from lmsanitator.data import load_corpus
from lmsanitator.experiments.attack_defense import AttackDefense
from lmsanitator.experiments.base import Context, sized_task
from lmsanitator.experiments.recipes import build_model, model_recipe
from lmsanitator.experiments.search import search_config, search_pvs
from lmsanitator.guard.guard import Guard, GuardConfig
from lmsanitator.guard.speed import ab_overhead
from lmsanitator.tuning import TuneConfig, Tuner


class MonitorOverhead(AttackDefense):
    name = "monitor-overhead"
    paper = "LMSanitator Table 16 (overhead of PV monitoring on P-tuning v2 inference)"
    description = (
        "Unguarded P-tuning v2 inference vs the guard's monitor path on clean inputs (A/B interleaved, "
        "median of rounds); overhead = guarded / unguarded - 1."
    )

    def config(self, quick: bool) -> dict:
        if quick:
            models = [model_recipe("splade-tiny", "por", per_trigger=400)]
            sizes = {"train": 200, "validation": 100, "test": 64, "epochs": 1}
            timing = {"inputs": 64, "rounds": {"1": 3, "32": 5}}
            search = search_config({"loops": 8, "patience": 4})
        else:
            models = [model_recipe("splade-tiny", "por"), model_recipe("minilm", "por")]
            sizes = {"train": 1000, "validation": 300, "test": 256, "epochs": 2}
            timing = {"inputs": 256, "rounds": {"1": 5, "32": 9}}
            search = search_config()  # shared with the other search experiments
        units = [
            {
                "id": f"{m['base']}.{m['attack']['name']}.p-tuning-v2",
                "model": m,
                "method": "p-tuning-v2",
                "task": "tweets-binary",
            }
            for m in models
        ]
        return {
            "units": units,
            "corpus": "austen",
            "sizes": sizes,
            "timing": timing,
            "seed": 0,
            "attack_verify_sentences": 100,
            "search": search,
            "guard": {"t_match": 0.8},
        }

    def run_unit(self, unit: dict, config: dict, ctx: Context) -> dict:
        corpus = load_corpus(config["corpus"])
        pvset, _ = search_pvs(unit["model"], corpus, config["search"], ctx, config["attack_verify_sentences"])
        sz = config["sizes"]
        task = sized_task(unit["task"], sz["train"], sz["validation"], sz["test"])
        encoder, _, rec = build_model(
            unit["model"], corpus, ctx, config["attack_verify_sentences"], cache=True
        )
        victim = Tuner(
            TuneConfig(unit["method"], epochs=sz["epochs"], seed=config["seed"], device=ctx.device)
        ).fit(encoder, task)
        guard = Guard(victim, pvset, GuardConfig(t_match=config["guard"]["t_match"]))
        texts = [e.text for e in task.test][: config["timing"]["inputs"]]
        rec["pvs"] = len(pvset)
        rec["timing"] = [ab_overhead(guard, texts, int(b), r) for b, r in config["timing"]["rounds"].items()]
        ctx.say(
            f"{unit['id']}: "
            + ", ".join(f"batch {t['batch']}: {100 * t['overhead']:+.1f}%" for t in rec["timing"])
        )
        return rec

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        rows = [(r["unit"]["model"]["base"], t) for r in records for t in r["timing"]]
        summary = {
            "max_overhead": max(t["overhead"] for _, t in rows),
            "overhead": {f"{m}/batch{t['batch']}": t["overhead"] for m, t in rows},
        }
        lines = [
            "| model | PVs | batch | inputs | unguarded (s) | monitored (s) | overhead |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in records:
            for t in r["timing"]:
                lines.append(
                    f"| {r['unit']['model']['base']} | {r['pvs']} | {t['batch']} | {t['inputs']} | "
                    f"{t['unguarded_s']:.3f} | {t['guarded_s']:.3f} | {100 * t['overhead']:+.1f}% |"
                )
        return summary, "\n".join(lines)
