"""``attack-defense``: LMSanitator Tables 2-3 - clean accuracy on the clean and on the backdoored
encoder, ASR without and with the guard, over attacks x PEFT methods x tasks.

Per backdoored model (built once, shared by its units): the search mode mines its PVs (the guard
never sees the attacker's PVs or triggers). Per unit (model x method x task): the user's victim is
tuned on the backdoored encoder and, for the CA column, the same recipe on the clean encoder; the
guard (T_match 0.8, per-PV thresholds calibrated on clean validation inputs at 1% FRR, trigger
removal with windows of 1-3 words) protects the victim; triggers are inserted as `evaluate asr`
inserts them (each trigger at a random word position of correctly classified test inputs).
"""

from __future__ import annotations

from lmsanitator.data import load_corpus
from lmsanitator.experiments.base import Context, Experiment, sized_task
from lmsanitator.experiments.recipes import build_model, model_recipe
from lmsanitator.experiments.search import search_config, search_pvs
from lmsanitator.guard.evaluate import evaluate_guard
from lmsanitator.guard.guard import Guard, GuardConfig
from lmsanitator.models import load_encoder
from lmsanitator.tuning import TuneConfig, Tuner

METHODS_FOR = {"cls": ("p-tuning-v2", "lora", "prompt-tuning"), "mask": ("p-tuning",)}


class AttackDefense(Experiment):
    name = "attack-defense"
    paper = "LMSanitator Tables 2-3 (CA clean/backdoored, ASR without/with the guard)"
    description = (
        "Victims tuned with PEFT on backdoored encoders; the guard uses PVs found by the search mode "
        "(no attacker knowledge), calibrated on clean validation inputs."
    )

    def config(self, quick: bool) -> dict:
        if quick:
            models = [(model_recipe("splade-tiny", "por", per_trigger=400), {"cls": ("p-tuning-v2",)})]
            tasks = ("tweets-binary",)
            sizes = {"train": 300, "validation": 100, "test": 100, "epochs": 2}
            search = search_config({"loops": 12, "patience": 6})
        else:
            # MiniLM: P-tuning v2 only (a MiniLM unit costs about 5 SPLADE-tiny units on 2 cores)
            models = [
                (model_recipe("minilm", "por"), {"cls": ("p-tuning-v2",)}),
                (model_recipe("splade-tiny", "por"), METHODS_FOR),
                (model_recipe("splade-tiny", "btop"), METHODS_FOR),
            ]
            tasks = ("tweets-binary", "wordnet-topic")
            sizes = {"train": 1000, "validation": 300, "test": 500, "epochs": 3}
            search = search_config()  # shared with the other search experiments
        units = []
        for m, methods in models:
            for method in methods.get(m["target"], ()):
                for task in tasks:
                    units.append(
                        {
                            "id": f"{m['base']}.{m['attack']['name']}.{method}.{task}",
                            "model": m,
                            "method": method,
                            "task": task,
                        }
                    )
        return {
            "units": units,
            "corpus": "austen",
            "sizes": sizes,
            "seed": 0,
            "attack_verify_sentences": 100,
            "search": search,
            "guard": {"t_match": 0.8, "w_max": 3, "on_unresolved": "best", "calibrate_frr": 0.01},
        }

    def units(self, config: dict) -> list[dict]:
        return config["units"]

    def run_unit(self, unit: dict, config: dict, ctx: Context) -> dict:
        corpus = load_corpus(config["corpus"])
        sz = config["sizes"]
        task = sized_task(unit["task"], sz["train"], sz["validation"], sz["test"])
        tune = TuneConfig(unit["method"], epochs=sz["epochs"], seed=config["seed"], device=ctx.device)
        clean = (
            Tuner(tune).fit(load_encoder(unit["model"]["base"], device=ctx.device), task)
            if config.get("clean_ca", True)
            else None
        )
        encoder, planted, rec = build_model(
            unit["model"], corpus, ctx, config["attack_verify_sentences"], cache=True
        )
        victim = Tuner(tune).fit(encoder, task)
        # after the tuning, so units that share a model tune while one of them runs its search
        pvset, _ = search_pvs(unit["model"], corpus, config["search"], ctx, config["attack_verify_sentences"])
        g = config["guard"]
        guard = Guard(
            victim,
            pvset,
            GuardConfig(t_match=g["t_match"], w_max=g["w_max"], on_unresolved=g["on_unresolved"]),
        )
        val = task.validation
        guard.calibrate(
            [e.text for e in val],
            [e.text_pair for e in val] if victim.task.pair else None,
            frr=g["calibrate_frr"],
        )
        res = evaluate_guard(guard, task.test, rec["attack"]["triggers"], seed=config["seed"])
        rec.update(
            {
                "pvs_found": len(pvset),
                "ca_clean_encoder": clean.report["accuracy"] if clean else None,
                "ca_backdoored_encoder": victim.report["accuracy"],
                "clean_accuracy": res["clean_accuracy"],
                "clean_accuracy_guarded": res["clean_accuracy_guarded"],
                "asr": res["asr"],
                "asr_guarded": res["asr_guarded"],
                "per_trigger": res["per_trigger"],
                "clean_flagged": res["clean_flagged"],
                "triggered_flagged": res["triggered_flagged"],
                "tune_seconds": victim.report["seconds"],
            }
        )
        self.extra(unit, config, ctx, victim, task, rec)
        ctx.say(
            f"{unit['id']}: CA {100 * res['clean_accuracy']:.1f} -> "
            f"{100 * res['clean_accuracy_guarded']:.1f}, "
            f"ASR {100 * res['asr']:.1f} -> {100 * res['asr_guarded']:.1f} ({len(pvset)} PVs)"
        )
        return rec

    def extra(self, unit: dict, config: dict, ctx: Context, victim, task, rec: dict) -> None:
        """More measurements on the same victim (subclasses: ONION beside the guard)."""

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        high = [r for r in records if r["asr"] >= 0.5]
        summary = {
            "units": len(records),
            "max_asr_guarded_where_asr_ge_50": max((r["asr_guarded"] for r in high), default=None),
            "units_asr_ge_50": len(high),
            "units_guarded_asr_le_2": sum(r["asr_guarded"] <= 0.02 for r in high),
            "max_ca_drop_from_guard": max(
                (r["clean_accuracy"] - r["clean_accuracy_guarded"] for r in records), default=None
            ),
        }
        lines = [
            "| model | attack | method | task | PVs found | CA clean enc. | CA backdoored enc. | ASR | "
            "CA guarded | ASR guarded |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in records:
            u = r["unit"]
            lines.append(
                f"| {u['model']['base']} | {u['model']['attack']['name']} | {u['method']} | {u['task']} | "
                f"{r['pvs_found']} | {100 * r['ca_clean_encoder']:.1f} | {100 * r['clean_accuracy']:.1f} | "
                f"{100 * r['asr']:.1f} | {100 * r['clean_accuracy_guarded']:.1f} | "
                f"{100 * r['asr_guarded']:.1f} |"
            )
        return summary, "\n".join(lines)
