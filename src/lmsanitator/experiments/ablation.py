"""``ablation``: LMSanitator Figure 9 - fuzz loops needed to find K unique PVs with and without the
path loss and the adaptive learning rate.

One backdoored model (POR, the paper's six triggers, built once and shared by the variants); each
variant runs the search mode until it holds K PVs (at most ``loops``). Rejections are counted by
reason: without the path loss, loops fall back onto PVs already found ("not unique").
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lmsanitator.data import load_corpus
from lmsanitator.experiments.base import Context, Experiment
from lmsanitator.experiments.recipes import build_model, mine, model_recipe

VARIANTS = {
    "path loss + adaptive lr": {"path_loss": True, "adaptive_lr": True},
    "no path loss": {"path_loss": False, "adaptive_lr": True},
    "no adaptive lr": {"path_loss": True, "adaptive_lr": False},
    "neither": {"path_loss": False, "adaptive_lr": False},
}


def _reason(text: str) -> str:
    """A rejection reason without its numbers ("not unique", "diversity", "no PV by the end of epoch 3")."""
    first = text.split(";")[0]
    if first.startswith("not unique"):
        return "not unique"
    if first.startswith("diversity"):
        return "diversity above T_div"
    return first.split(" (")[0]


class Ablation(Experiment):
    name = "ablation"
    paper = "LMSanitator Figure 9 (fuzz loops to find unique PVs: path loss, adaptive learning rate)"
    description = "Search mode on one POR-backdoored model until it holds K PVs, in four variants."

    def config(self, quick: bool) -> dict:
        model = model_recipe("splade-tiny", "por", **({"per_trigger": 400} if quick else {}))
        return {
            "model": model,
            "corpus": "austen",
            "k": 2 if quick else 3,
            "loops": 12 if quick else 60,
            # the paper's search: no antipode probes (they would find PVs outside the fuzz loops counted)
            "search": {
                "sentences": 320,
                "epochs": 6,
                "abort_epoch": 2,
                "batch_size": 32,
                "seed": 0,
                "antipode_probe": False,
            },
            "variants": VARIANTS,
            "attack_verify_sentences": 100,
        }

    def units(self, config: dict) -> list[dict]:
        return [
            {"id": name.replace(" ", "_").replace("+", "and"), "variant": name} for name in config["variants"]
        ]

    def run_unit(self, unit: dict, config: dict, ctx: Context) -> dict:
        corpus = load_corpus(config["corpus"])
        encoder, _, rec = build_model(
            config["model"], corpus, ctx, config["attack_verify_sentences"], cache=True
        )
        miner = mine(
            encoder,
            corpus,
            config["model"]["target"],
            config["search"],
            max_pvs=config["k"],
            loops=config["loops"],
            mode="search",
            stop_at_first=False,
            **config["variants"][unit["variant"]],
        )
        rejected = Counter(_reason(c.reason) for c in miner.candidates_ if not c.accepted)
        reached = len(miner.pvs_) >= config["k"]
        rec["search"] = {
            "pvs": len(miner.pvs_),
            "reached_k": reached,
            "loops_run": miner.loops_run_,
            "loops_to_k": miner.loops_run_ if reached else None,
            "pv_seeds": miner.pv_seeds_,
            "rejected": dict(rejected),
            "seconds": round(miner.seconds_, 1),
            "lr_switch_steps": sorted(
                {c.lr_switch_step for c in miner.candidates_ if c.lr_switch_step is not None}
            ),
        }
        ctx.say(f"{unit['variant']}: {len(miner.pvs_)} PVs in {miner.loops_run_} loops")
        return rec

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        k = config["k"]
        summary = {r["unit"]["variant"]: r["search"]["loops_to_k"] for r in records}
        summary = {"k": k, "loops_to_k": summary}
        lines = [
            f"| variant | loops to {k} PVs | PVs at seeds | rejected loops | seconds |",
            "|---|---|---|---|---|",
        ]
        for r in records:
            s = r["search"]
            loops = s["loops_to_k"] if s["reached_k"] else f"not reached in {s['loops_run']} ({s['pvs']} PVs)"
            rej = (
                ", ".join(f"{n} {why}" for why, n in sorted(s["rejected"].items(), key=lambda x: -x[1]))
                or "-"
            )
            lines.append(
                f"| {r['unit']['variant']} | {loops} | {', '.join(map(str, s['pv_seeds'])) or '-'} | {rej} | "
                f"{s['seconds']:.0f} |"
            )
        return summary, "\n".join(lines)

    def plot(self, config: dict, records: list[dict], summary: dict, folder: Path) -> list[str]:
        import matplotlib  # noqa: PLC0415  heavy: matplotlib loads only for plots

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415  heavy: matplotlib loads only for plots

        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = [r["unit"]["variant"] for r in records]
        vals = [r["search"]["loops_run"] for r in records]
        bars = ax.bar(
            range(len(names)), vals, color=["C0" if r["search"]["reached_k"] else "C3" for r in records]
        )
        for b, r in zip(bars, records):
            if not r["search"]["reached_k"]:
                b.set_hatch("//")
        ax.set_xticks(range(len(names)), [n.replace(" + ", "\n+ ") for n in names], fontsize=8)
        ax.set_ylabel(f"fuzz loops to {config['k']} PVs")
        ax.set_title("Figure 9 ablation (hatched: K not reached)")
        fig.tight_layout()
        fig.savefig(folder / "ablation.png", dpi=120)
        plt.close(fig)
        return ["ablation.png"]
