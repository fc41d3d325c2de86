"""``dataset-size``: LMSanitator Appendix A (Figure 10) - ASR after full fine-tuning vs after prompt
tuning as the downstream training set grows.

One POR-backdoored encoder (built once, shared by every unit). Each unit tunes it on the first N
training examples of a real task, with full fine-tuning (the encoder moves and can forget the
backdoor) or P-tuning v2 (the encoder stays frozen), then measures clean accuracy, ASR with the
attack's triggers and how close the triggered inputs' encoder outputs stay to the planted PVs
(mean best sign agreement - the paper's Figure 10b shows the same with t-SNE).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from lmsanitator.data import insert_trigger, load_corpus
from lmsanitator.experiments.base import Context, Experiment, sized_task
from lmsanitator.experiments.recipes import build_model, model_recipe
from lmsanitator.metrics import sign_match
from lmsanitator.metrics.asr import evaluate_asr
from lmsanitator.tuning import TuneConfig, Tuner


class DatasetSize(Experiment):
    name = "dataset-size"
    paper = "LMSanitator Appendix A / Figure 10 (ASR vs training set size: fine-tuning vs prompt tuning)"
    description = (
        "POR-backdoored encoder tuned on growing training sets, fully (`full`) or with the encoder frozen "
        "(`p-tuning-v2`); clean accuracy, ASR, and sign agreement of triggered outputs with the planted PVs."
    )

    def config(self, quick: bool) -> dict:
        if quick:
            sizes, extra = [60, 240], {"per_trigger": 400}
            evaluation = {"validation": 50, "test": 100}
        else:
            sizes, extra = [250, 500, 1000, 2000, 4000], {}
            evaluation = {"validation": 300, "test": 500}
        return {
            "model": model_recipe("splade-tiny", "por", **extra),
            "corpus": "austen",
            "task": "wordnet-topic",
            "train_sizes": sizes,
            "methods": ["full", "p-tuning-v2"],
            "epochs": 3,
            "seed": 0,
            **evaluation,
            "attack_verify_sentences": 100,
        }

    def units(self, config: dict) -> list[dict]:
        return [
            {"id": f"{m}.n{n}", "method": m, "train_size": n}
            for m in config["methods"]
            for n in config["train_sizes"]
        ]

    def run_unit(self, unit: dict, config: dict, ctx: Context) -> dict:
        corpus = load_corpus(config["corpus"])
        encoder, planted, rec = build_model(
            config["model"], corpus, ctx, config["attack_verify_sentences"], cache=True
        )
        task = sized_task(config["task"], unit["train_size"], config["validation"], config["test"])
        tune = TuneConfig(unit["method"], epochs=config["epochs"], seed=config["seed"], device=ctx.device)
        model = Tuner(tune).fit(encoder, task)
        res = evaluate_asr(model, task.test, rec["attack"]["triggers"], seed=config["seed"])
        # how close the tuned model's own encoder output on triggered inputs stays to a planted PV
        rng = random.Random(config["seed"])
        texts = [e.text for e in task.test[:100]]
        agree = []
        for t in rec["attack"]["triggers"]:
            fo = model.forward_with_features([insert_trigger(s, t, rng, times=1) for s in texts])
            agree.append(sign_match(fo.features.float().cpu(), planted.float()).max(dim=1).values.mean())
        rec.update(
            {
                "accuracy": model.report["accuracy"],
                "asr": res["asr"],
                "weighted_asr": res["weighted_asr"],
                "per_trigger_asr": res["per_trigger"],
                "triggered_pv_agreement": round(float(torch.stack(agree).mean()), 4),
                "tune_seconds": model.report["seconds"],
            }
        )
        ctx.say(
            f"{unit['id']}: accuracy {100 * rec['accuracy']:.1f}%, ASR {100 * res['asr']:.1f}%, "
            f"PV agreement {rec['triggered_pv_agreement']:.3f}"
        )
        return rec

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        by = {(r["unit"]["method"], r["unit"]["train_size"]): r for r in records}
        methods, sizes = config["methods"], config["train_sizes"]
        summary = {
            m: {
                str(n): {
                    "accuracy": by[m, n]["accuracy"],
                    "asr": by[m, n]["asr"],
                    "triggered_pv_agreement": by[m, n]["triggered_pv_agreement"],
                }
                for n in sizes
            }
            for m in methods
        }
        head = (
            "| training examples | "
            + " | ".join(f"{m} accuracy | {m} ASR | {m} PV agreement" for m in methods)
            + " |"
        )
        lines = [head, "|---|" + "---|" * (3 * len(methods))]
        for n in sizes:
            cells = " | ".join(
                f"{100 * by[m, n]['accuracy']:.1f}% | {100 * by[m, n]['asr']:.1f}% | "
                f"{by[m, n]['triggered_pv_agreement']:.3f}"
                for m in methods
            )
            lines.append(f"| {n} | {cells} |")
        return summary, "\n".join(lines)

    def plot(self, config: dict, records: list[dict], summary: dict, folder: Path) -> list[str]:
        import matplotlib  # noqa: PLC0415  heavy: matplotlib loads only for plots

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415  heavy: matplotlib loads only for plots

        fig, ax = plt.subplots(figsize=(5, 3.2))
        xs = config["train_sizes"]
        for k, m in enumerate(config["methods"]):  # offset markers: equal ASR curves stay visible
            ax.plot(
                xs,
                [100 * summary[m][str(n)]["asr"] for n in xs],
                marker="os"[k % 2],
                ms=7 - 3 * k,
                label=f"{m}: ASR",
            )
            ax.plot(
                xs,
                [100 * summary[m][str(n)]["accuracy"] for n in xs],
                marker=".",
                ls="--",
                label=f"{m}: accuracy",
            )
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(n) for n in xs])
        ax.minorticks_off()
        ax.set_xlabel("training examples")
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
        ax.set_title(f"POR {config['model']['base']}, {config['task']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "asr_vs_size.png", dpi=120)
        plt.close(fig)
        return ["asr_vs_size.png"]
