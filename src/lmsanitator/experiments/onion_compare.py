"""``onion-compare``: LMSanitator Table 6 - LMSanitator vs ONION on the same victims and inputs.

Each unit is an ``attack-defense`` unit (backdoored encoder, PVs from the search mode, a PEFT
victim, the calibrated guard); ONION (perplexity under the bundled SmolLM2, threshold 0) purifies
the same clean test inputs and the same triggered inputs (same trigger positions), and the victim
classifies the purified text. Deltas are against no defence: for CA smaller |delta| is better, for
ASR a larger drop.
"""

from __future__ import annotations

from lmsanitator.baselines.onion import ONION, ONIONConfig
from lmsanitator.experiments.attack_defense import AttackDefense
from lmsanitator.experiments.base import Context
from lmsanitator.experiments.recipes import model_recipe
from lmsanitator.metrics.asr import example_inputs, triggered_inputs
from lmsanitator.metrics.classification import attack_success


class OnionCompare(AttackDefense):
    name = "onion-compare"
    paper = "LMSanitator Table 6 (comparison with ONION)"
    description = (
        "The same victims and inputs without defence, behind LMSanitator's guard (found PVs, calibrated), "
        "and after ONION (SmolLM2 perplexity, threshold 0)."
    )

    def config(self, quick: bool) -> dict:
        cfg = super().config(quick)
        if quick:
            cfg["sizes"] = {
                **cfg["sizes"],
                "test": 20,
            }  # ONION scores every word of every input: ~1.6 s per text
        else:
            units = [
                {
                    "id": "minilm.por.p-tuning-v2.tweets-binary",
                    "model": model_recipe("minilm", "por"),
                    "method": "p-tuning-v2",
                    "task": "tweets-binary",
                },
                {
                    "id": "splade-tiny.btop.p-tuning.tweets-binary",
                    "model": model_recipe("splade-tiny", "btop"),
                    "method": "p-tuning",
                    "task": "tweets-binary",
                },
            ]
            cfg["units"] = units
            cfg["sizes"] = {**cfg["sizes"], "test": 200}
        cfg["clean_ca"] = False
        cfg["onion"] = {"lm": "smollm2", "threshold": 0.0}
        return cfg

    def extra(self, unit: dict, config: dict, ctx: Context, victim, task, rec: dict) -> None:
        onion = ONION(
            ONIONConfig(lm=config["onion"]["lm"], threshold=config["onion"]["threshold"], device=ctx.device)
        )
        texts, pairs, y = example_inputs(task.test, False)
        plain = victim.predict_labels(texts, pairs)
        correct = [i for i in range(len(y)) if y[i] == plain[i]]

        def purify(xs):
            return onion.purify(xs) if xs is not None else None

        clean_onion = victim.predict_labels(purify(texts), purify(pairs))
        trig = {}
        for k, t in enumerate(rec["attack"]["triggers"]):
            ts, ps, _ = triggered_inputs(
                texts, pairs, correct, t, k, seed=config["seed"], field="longer", token=False
            )
            pred = list(clean_onion)
            for i, p in zip(correct, victim.predict_labels(purify(ts), purify(ps)) if correct else []):
                pred[i] = p
            trig[t] = pred
        res = attack_success(y, clean_onion, trig, victim.num_labels)
        rec["onion"] = {
            "clean_accuracy": res["clean_accuracy"],
            "asr": res["asr"],
            "per_trigger": res["per_trigger"],
        }
        ctx.say(f"{unit['id']} ONION: CA {100 * res['clean_accuracy']:.1f}, ASR {100 * res['asr']:.1f}")

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        summary = {
            "units": [
                {
                    "id": r["id"],
                    "ca": r["clean_accuracy"],
                    "asr": r["asr"],
                    "lmsanitator": {"ca": r["clean_accuracy_guarded"], "asr": r["asr_guarded"]},
                    "onion": {"ca": r["onion"]["clean_accuracy"], "asr": r["onion"]["asr"]},
                }
                for r in records
            ]
        }
        lines = [
            "| victim | CA w/o defence | CA LMSanitator (delta) | CA ONION (delta) | ASR w/o defence | "
            "ASR LMSanitator (delta) | ASR ONION (delta) |",
            "|---|---|---|---|---|---|---|",
        ]

        def d(x, base):
            return f"{100 * x:.1f} ({100 * (x - base):+.1f})"

        for r in records:
            ca, asr = r["clean_accuracy"], r["asr"]
            lines.append(
                f"| {r['id']} | {100 * ca:.1f} | {d(r['clean_accuracy_guarded'], ca)} | "
                f"{d(r['onion']['clean_accuracy'], ca)} | {100 * asr:.1f} | {d(r['asr_guarded'], asr)} | "
                f"{d(r['onion']['asr'], asr)} |"
            )
        return summary, "\n".join(lines)
