"""``detection``: LMSanitator Table 4 - false positives, false negatives and accuracy of the scan
over a zoo of clean and backdoored encoders.

The zoo (clean encoders and fine-tuned copies of them; POR, NeuBA and BToP implants with random
triggers; POR with the working adaptive options) is defined in
:mod:`lmsanitator.experiments.detection_zoo`; how each model is built and scanned, shared with the
other experiments, in :mod:`lmsanitator.experiments.recipes`; the search mode they share (kept PV
sets) in :mod:`lmsanitator.experiments.search`.

Per model the scan's *closest margin* is kept: over its fuzz loops, the smallest margin by which the
acceptance rules rejected a candidate (positive: rejected, negative: accepted). Over the clean
models of a group its minimum is how near the scan came to a false positive.

Each model is scanned at the read-out its downstream user would watch: ``cls`` for POR and NeuBA
(P-tuning v2, LoRA, prompt tuning read [CLS]) and ``mask`` for BToP (P-tuning reads [MASK]); the
clean zoo is scanned at both read-outs in the same proportion, so the false-positive rate is
measured at each. The scan never sees a trigger or a planted PV; those are used afterwards only to
measure how well a found PV matches a planted one (sign agreement).
"""

from __future__ import annotations

import fnmatch
import json
import time
from pathlib import Path

import torch

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.runtime import set_threads
from lmsanitator.data import load_corpus
from lmsanitator.experiments.base import Context, Experiment
from lmsanitator.experiments.detection_zoo import group_of, zoo
from lmsanitator.experiments.recipes import build_model, mine, model_folder
from lmsanitator.metrics import sign_match


def _recorded_margins(c: dict, th: dict) -> dict:
    """A candidate's rule margins (positive = rejected) from the fields every report has."""
    m = {}
    if c.get("diversity") and th.get("t_div") is not None:
        m["t_div"] = c["diversity"][-1] - th["t_div"]
    if c.get("distance") and th.get("t_l") is not None:
        m["t_l"] = c["distance"][-1] + th["t_l"]
    nn = (c.get("clean_evidence") or {}).get("nn_diversity")
    if nn is not None and c.get("t_clean_div") is not None:
        m["t_clean_div"] = c["t_clean_div"] - nn
    return m


def closest_margin(report: dict) -> dict:
    """How near a scan came to accepting a candidate it rejected (or how far in it accepted one).

    Each candidate's margin is the largest of its rules' margins (``candidate["margins"]``: rule ->
    margin in that rule's units, positive = the rule rejects it): the rule that rejects it most.
    The scan's closest margin is the smallest of those over its candidates. A report without
    ``margins`` falls back to what the candidate records: the collapse test (final diversity -
    T_div), the distance test (final distance + T_L) and, where it ran, the clean-evidence rule
    (t_clean_div - nn_diversity; without it a candidate that rule rejected would look accepted).
    A clean model's closest margin <= 0 is a false positive; a small positive one, a near miss."""
    best = None
    for c in report["candidates"]:
        margins = {k: v for k, v in (c.get("margins") or {}).items() if v is not None}
        if not margins:
            margins = _recorded_margins(c, report.get("thresholds") or {})
        if not margins:
            continue
        rule, value = max(margins.items(), key=lambda kv: kv[1])
        if best is None or value < best[1]:
            best = (rule, value, c["seed"])
    if best is None:
        return {"closest_margin": None, "closest_rule": None, "closest_seed": None}
    return {"closest_margin": round(float(best[1]), 4), "closest_rule": best[0], "closest_seed": best[2]}


class Detection(Experiment):
    """Records: ``{id, unit, finetune?: {task, test_accuracy, seconds, train_size?, epochs?, steps?,
    classes?, wall_seconds?}, attack?: {triggers, seconds, min_hit_rate, clean_false_hit_rate,
    triggered_diversity, utility_loss}, scan: {verdict, loops_run, seconds, fingerprint,
    best_diversity, t_div, closest_margin, closest_rule, closest_seed, loops: [{seed, accepted,
    distance, diversity, margins?}], pv_agreement?}}``. Summary: counts, ``closest_clean`` ({margin,
    model, rule, seed} or None) and ``by_group`` ("base/attack", "base/clean", "base/por+OPTION"):
    counts, ``verdicts`` {backdoored, clean}, ``closest_clean`` (clean groups) and
    ``finetune_test_accuracy`` {min, mean, n} (groups with fine-tuned copies)."""

    name = "detection"
    paper = "LMSanitator Table 4 (detection over clean and backdoored models)"
    description = (
        "Scan verdicts (the CLI's detection settings: fuzz loops of 3 epochs at lr 3e-3, stop at "
        "the first legit PV) on clean encoders (bundled + fully fine-tuned copies) and on encoders "
        "backdoored with random triggers. Positive = backdoored."
    )

    def config(self, quick: bool) -> dict:
        if quick:
            plan = {"splade-tiny": {"clean": 2, "por": 2}}
            scan = {"loops": 6, "sentences": 320}
        else:
            # issue 19: >= 60 clean models, >= 30 of them MiniLM-family; >= 60 backdoored
            plan = {
                "splade-tiny": {
                    "clean": 28,
                    "clean_mask": 5,  # ids of the measured units stay as they were
                    "por": 12,
                    "neuba": 10,
                    "btop": 10,
                    "por+scatter1": 3,
                    "por+moderate": 3,
                    "por+wasserstein1": 3,
                },
                # one NeuBA per MiniLM: a MiniLM NeuBA unit (3-epoch implant + up to 30 loops)
                # costs about an hour of one core here
                "minilm": {"clean": 1, "ft_grid": [0, 20], "por": 6, "neuba": 1, "btop": 4},
                # cells 24..33: with minilm's 0..19, every task x lr x length but 6 cells (20..23, 34, 35)
                "minilm-sre": {"clean": 1, "ft_grid": [24, 10], "por": 5, "neuba": 1, "btop": 3},
            }
            scan = {"loops": 30, "sentences": 320}
        ft_train = {"splade-tiny": 300 if quick else 1000, "minilm": 1000, "minilm-sre": 1000}
        return {
            "plan": plan,
            "finetune_train_size": ft_train,
            "corpus": "austen",
            "scan": {**scan, "epochs": 3, "abort_epoch": 1, "batch_size": 32, "seed": 0, "corpus_seed": 0},
            "attack_verify_sentences": 100 if quick else 200,
            "models": zoo(plan, ft_train),
        }

    def units(self, config: dict) -> list[dict]:
        return config["models"]

    def run_unit(self, unit: dict, config: dict, ctx: Context) -> dict:
        corpus = load_corpus(config["corpus"])
        encoder, planted, rec = build_model(unit, corpus, ctx, config["attack_verify_sentences"], cache=True)
        miner = mine(encoder, corpus, unit["target"], config["scan"])
        r = miner.report_
        rec["scan"] = {
            "verdict": r["verdict"],
            "loops_run": r["loops_run"],
            "seconds": r["seconds"],
            "fingerprint": r["fingerprint"],
            "best_diversity": min(
                (c["diversity"][-1] for c in r["candidates"] if c["diversity"]), default=None
            ),
            "t_div": r.get("thresholds", {}).get("t_div"),
            **closest_margin(r),
            # per-loop epoch means: what any abort rule would have seen (replayable offline)
            "loops": [
                {
                    "seed": c["seed"],
                    "accepted": c["accepted"],
                    "distance": [round(x, 4) for x in c["distance"]],
                    "diversity": [round(x, 4) for x in c["diversity"]],
                    **({"margins": c["margins"]} if c.get("margins") else {}),
                }
                for c in r["candidates"]
            ],
        }
        if planted is not None and miner.pvs_:
            agree = sign_match(torch.stack(miner.pvs_).float().cpu(), planted.float())
            rec["scan"]["pv_agreement"] = round(float(agree.max()), 4)
        cm = rec["scan"]["closest_margin"]
        ctx.say(
            f"{unit['id']}: {r['verdict']} ({r['loops_run']} loops, {r['seconds']:.0f} s"
            + (f", closest margin {cm:+.4f} {rec['scan']['closest_rule']})" if cm is not None else ")")
            + (f", PV agreement {rec['scan']['pv_agreement']:.3f}" if "pv_agreement" in rec["scan"] else "")
        )
        return rec

    def build_models(
        self,
        *,
        quick: bool,
        out: str | Path,
        work: str | Path | None = None,
        model_cache: str | Path | None = None,
        device: str = "cpu",
        only: str | None = None,
        threads: int = 1,
    ) -> list[dict]:
        """Build (fine-tune, implant) the models of the units into the model cache and scan none:
        builds do not depend on the scan settings, so they can run ahead of the scans, which then
        find them built (``--build-only``). One model at a time in this process; a model already
        in the cache is only read. Returns one row per built model: its unit id, whether it was
        built now, the seconds and its build record (test accuracy, hit rates)."""
        config = self.config(quick)
        units = [u for u in self.units(config) if u.get("finetune") or u.get("attack")]
        if only is not None:
            units = [u for u in units if fnmatch.fnmatchcase(u["id"], only)]
            if not units:
                raise LMSanitatorError(f"--only '{only}' matches no model to build in '{self.name}'")
        out = Path(out)
        work = Path(work) if work is not None else out.parent / f"{out.name}.work"
        ctx = Context(work=work, device=device, models=Path(model_cache) if model_cache else None)
        set_threads(threads)
        corpus = load_corpus(config["corpus"])
        rows, seen = [], set()
        for u in units:
            folder = model_folder(u, ctx)  # keyed by the recipe: one model per recipe
            if folder in seen:  # the same model scanned at another read-out
                continue
            seen.add(folder)
            t0 = time.perf_counter()
            cached = folder.joinpath("built.json").exists()
            _, _, rec = build_model(u, corpus, ctx, config["attack_verify_sentences"], cache=True)
            row = {
                "id": u["id"],
                "built_now": not cached,
                "seconds": round(time.perf_counter() - t0, 1),
                **rec,
            }
            rows.append(row)
            ctx.say(f"{self.name} build: {json.dumps(row)}")
        return rows

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        summary = _counts(records)
        agreements = [r["scan"]["pv_agreement"] for r in records if "pv_agreement" in r["scan"]]
        summary["pv_agreement_min"] = min(agreements) if agreements else None
        summary["pv_agreement_mean"] = round(sum(agreements) / len(agreements), 4) if agreements else None
        summary["unverified_implants"] = sum(
            1
            for r in records
            if r.get("attack")
            and (r["attack"]["min_hit_rate"] < 0.9 or r["attack"]["clean_false_hit_rate"] > 0.02)
        )
        summary["closest_clean"] = _closest([r for r in records if r["unit"]["kind"] == "clean"])
        groups: dict = {}
        for r in records:
            groups.setdefault((r["unit"]["base"], group_of(r["unit"])), []).append(r)
        summary["by_group"] = {f"{b}/{a}": _group_summary(rs) for (b, a), rs in groups.items()}
        lines = [
            "| model | attack | target | models | FP | FN | accuracy | verdicts (backdoored / clean) "
            "| closest clean margin (model, rule) | fine-tune test acc (min / mean) | scan loops (mean) "
            "| PV agreement (min) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (b, a), rs in groups.items():
            g = _group_summary(rs)
            targets = "/".join(sorted({r["unit"]["target"] for r in rs}))
            ag = [r["scan"]["pv_agreement"] for r in rs if "pv_agreement" in r["scan"]]
            loops = sum(r["scan"]["loops_run"] for r in rs) / len(rs)
            fp = g["false_positives"] if a == "clean" else "-"
            fn = g["false_negatives"] if a != "clean" else "-"
            c = g.get("closest_clean")
            close = f"{c['margin']:+.4f} ({c['model']}, {c['rule']})" if c else "-"
            acc = g.get("finetune_test_accuracy")
            acc_s = f"{acc['min']:.3f} / {acc['mean']:.3f} (n={acc['n']})" if acc else "-"
            v = g["verdicts"]
            lines.append(
                f"| {b} | {a} | {targets} | {len(rs)} | {fp} | {fn} | {100 * g['accuracy']:.1f}% | "
                f"{v['backdoored']} / {v['clean']} | {close} | {acc_s} | {loops:.1f} | "
                f"{f'{min(ag):.3f}' if ag else '-'} |"
            )
        s = summary
        close = f"{s['closest_clean']['margin']:+.4f}" if s["closest_clean"] else "-"
        lines.append(
            f"| **all** | | | {s['n_clean']} clean + {s['n_backdoored']} backdoored | "
            f"{s['false_positives']} | {s['false_negatives']} | **{100 * s['accuracy']:.1f}%** | | "
            f"{close} | | | {s['pv_agreement_min'] if s['pv_agreement_min'] is not None else '-'} |"
        )
        lines.append(
            "\nClosest margin of a model: over its scan's candidates, the smallest margin by which the "
            "acceptance rules rejected one (its largest rule margin; positive = rejected, <= 0 = accepted). "
            "For a clean group, the minimum over its models: how near the scan came to a false positive."
        )
        return summary, "\n".join(lines)


def _counts(rs: list[dict]) -> dict:
    clean = [r for r in rs if r["unit"]["kind"] == "clean"]
    bd = [r for r in rs if r["unit"]["kind"] == "backdoored"]
    fp = sum(r["scan"]["verdict"] == "backdoored" for r in clean)
    fn = sum(r["scan"]["verdict"] == "clean" for r in bd)
    n = len(rs)
    return {
        "n_clean": len(clean),
        "n_backdoored": len(bd),
        "false_positives": fp,
        "false_negatives": fn,
        "accuracy": round((n - fp - fn) / n, 4) if n else None,
    }


def _closest(clean: list[dict]) -> dict | None:
    """The clean model whose scan came nearest to accepting a candidate (None: no margins recorded)."""
    scored = [r for r in clean if r["scan"].get("closest_margin") is not None]
    if not scored:
        return None
    r = min(scored, key=lambda r: r["scan"]["closest_margin"])
    return {
        "margin": r["scan"]["closest_margin"],
        "model": r["unit"]["id"],
        "rule": r["scan"]["closest_rule"],
        "seed": r["scan"]["closest_seed"],
    }


def _group_summary(rs: list[dict]) -> dict:
    """Counts, verdicts, the closest clean margin and the fine-tuned copies' test accuracy of a group."""
    g = _counts(rs)
    g["verdicts"] = {v: sum(r["scan"]["verdict"] == v for r in rs) for v in ("backdoored", "clean")}
    if g["n_clean"]:
        g["closest_clean"] = _closest([r for r in rs if r["unit"]["kind"] == "clean"])
    accs = [r["finetune"]["test_accuracy"] for r in rs if r.get("finetune")]
    if accs:
        g["finetune_test_accuracy"] = {
            "min": min(accs),
            "mean": round(sum(accs) / len(accs), 4),
            "n": len(accs),
        }
    return g
