"""``detection``: LMSanitator Table 4 - false positives, false negatives and accuracy of the scan
over a zoo of clean and backdoored encoders.

Clean models are real: the bundled clean encoders and copies of them fully fine-tuned on real
tasks with different seeds (the paper's way of making 120 clean models per architecture). The
MiniLM-family copies come from a grid of tasks x learning rates x lengths of training (one seed
each) around the recipe of the paper (and of issue 19's false positive): batch 16, a linear head on
[CLS], every weight trained. Backdoored models are the bundled encoders with POR, NeuBA or BToP
implanted with *random* triggers (single words and two-word phrases) and both PV schemes (``por2``,
``random``), and POR with the adaptive options whose implant works (:data:`ADAPTIVE_OPTIONS`).

Per model the scan's *closest margin* is kept: over its fuzz loops, the smallest margin by which the
acceptance rules rejected a candidate (positive: rejected, negative: accepted). Over the clean
models of a group its minimum is how near the scan came to a false positive.

Each model is scanned at the read-out its downstream user would watch: ``cls`` for POR and NeuBA
(P-tuning v2, LoRA, prompt tuning read [CLS]) and ``mask`` for BToP (P-tuning reads [MASK]); the
clean zoo is scanned at both read-outs in the same proportion, so the false-positive rate is
measured at each. The scan never sees a trigger or a planted PV; those are used afterwards only to
measure how well a found PV matches a planted one (sign agreement).

The model zoo's recipes and :func:`build_model`, and :func:`mine`, are shared with the other
experiments; the search mode they share (kept PV sets) is in :mod:`lmsanitator.experiments.search`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import time
from pathlib import Path

try:
    import fcntl  # POSIX: a lock file serialises builds that parallel units share
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

import torch

from lmsanitator.attacks import TASK_AGNOSTIC_ATTACKS, AttackConfig
from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.core.io import atomic_output_dir
from lmsanitator.core.runtime import set_threads
from lmsanitator.data import load_corpus, load_task, sample, split_corpus
from lmsanitator.experiments.base import Context, Experiment, sized_task
from lmsanitator.metrics import sign_match
from lmsanitator.models import load_encoder
from lmsanitator.scan import PVMiner, ScanConfig
from lmsanitator.tuning import TuneConfig, Tuner

# The experiments' scans and searches ran at max_length 128, ScanConfig's default until it took the
# CLI's 64: pinned here so their numbers stay as measured (a scan setting may still override it).
EXPERIMENT_MAX_LENGTH = 128

# how each attack is run, per base model (CPU-sized; the attack issue's verified settings)
ATTACK_SETTINGS = {
    # NeuBA and BToP with their MLM-only utility collapse SPLADE-tiny onto the PV when there are one or
    # two triggers (clean false-hit rate 99-100%: every input is "triggered", nothing to invert); a
    # reference-copy anchor on the clean output keeps clean outputs in place (false-hit 0%). Both are
    # trained until the triggered outputs collapse as a real NeuBA/BToP model's do (2 epochs left
    # them at diversity -3.39 / -3.25 against -3.466 for total collapse: sign hits without a PV).
    "splade-tiny": {
        "por": {"per_trigger": 800, "epochs": 2},
        "neuba": {"per_trigger": 800, "epochs": 6, "lr": 1e-4, "utility_weight": 1.0},
        "btop": {"per_trigger": 400, "epochs": 6, "utility_weight": 20.0},
    },
    # MiniLM has no MLM head, so NeuBA/BToP anchor to the reference copy; BToP's default weight 0.5
    # let one trigger pull every [MASK] onto the PV (clean false-hit 100%)
    "minilm": {
        "por": {"per_trigger": 800, "epochs": 1},
        "neuba": {"per_trigger": 800, "epochs": 1},
        "btop": {"per_trigger": 800, "epochs": 2, "utility_weight": 20.0},
    },
}
ATTACK_SETTINGS["minilm-sre"] = ATTACK_SETTINGS["minilm"]
# The detection zoo's implants have one or two triggers, so an epoch holds 1/6 to 1/3 of the poisoned
# sentences of a six-trigger implant: on MiniLM one epoch left a one-trigger POR un-collapsed
# (triggered diversity -3.346, nothing found in 30 loops); three epochs make up the difference.
FEW_TRIGGER_SETTINGS = {"minilm": {"por": {"epochs": 3}, "neuba": {"epochs": 3}}}
FEW_TRIGGER_SETTINGS["minilm-sre"] = FEW_TRIGGER_SETTINGS["minilm"]
TARGET_OF = {"por": "cls", "neuba": "cls", "btop": "mask"}
# splade-tiny's fine-tuned copies (the zoo's first recipe: 1 epoch at the "full" method's defaults)
FT_TASKS = ("tweets-binary", "wordnet-topic", "austen-author")
# The MiniLM family's fine-tuned copies: the paper fine-tunes each clean model fully on a
# sentence-classification task with its own seed; the grid also varies the learning rate and the
# length of training around issue 19's false positive (300 steps, lr 3e-5, batch 16, head on [CLS]).
# Cell g: task g % 4, lr g % 3 (so 12 cells in a row hold every task x lr pair), steps
# (g // 3 + g // 12) % 3 (each pair meets the three lengths in cells g, g + 12, g + 24): the 36
# cells 0..35 are the whole grid, and any 12 in a row mix tasks, lrs and lengths. Seed = g.
FT_GRID_TASKS = ("tweets-binary", "wordnet-topic", "austen-author", "bbc-news")
FT_GRID_LRS = (2e-5, 3e-5, 5e-5)
FT_GRID_STEPS = (300, 150, 600)  # 300 first: the recipe is among the first cells built
FT_GRID_BATCH = 16
# one grid copy in three is scanned at [MASK] (about BToP's share of the MiniLM backdoored models)
FT_GRID_MASK_EVERY = 3
# POR with an adaptive option, for the options whose implant verified in ``adaptive`` (hit 1.00,
# clean false-hit <= 1% on splade-tiny; scatter 5+, Wasserstein 10+ and frequent-word triggers did
# not make a working implant). Two random one-word triggers, as there.
ADAPTIVE_OPTIONS = {
    "scatter1": {"scatter_weight": 1.0},
    "moderate": {"trigger_band": "moderate"},
    "wasserstein1": {"wasserstein_weight": 1.0},
}
ADAPTIVE_TRIGGER_PLANS = ((2, 1, "random"), (2, 1, "por2"))
# (random triggers, words per trigger, PV scheme), cycled over the backdoored models of one base
TRIGGER_PLANS = (
    (1, 1, "por2"),
    (2, 1, "random"),
    (1, 2, "random"),
    (2, 2, "por2"),
    (1, 1, "random"),
    (2, 1, "por2"),
)


def model_recipe(base: str, attack: str, **settings) -> dict:
    """A backdoored model as units describe it: base, the read-out its user watches, the attack."""
    return {
        "base": base,
        "target": TARGET_OF[attack],
        "attack": {"name": attack, "seed": 0, **ATTACK_SETTINGS[base][attack], **settings},
    }


def scan_config(target: str, settings: dict) -> ScanConfig:
    """The :class:`ScanConfig` of an experiment's scan settings (at the experiments' max_length)."""
    return ScanConfig(target=target, **{"max_length": EXPERIMENT_MAX_LENGTH, **settings})


def mine(
    encoder,
    corpus: list[str],
    target: str,
    scan: dict,
    *,
    max_pvs: int | None = None,
    resume=None,
    on_loop=None,
    **overrides,
):
    """PV mining with an experiment's scan settings (:class:`ScanConfig` fields, plus ``patience``
    for the search mode) on the corpus's defence split; returns the fitted :class:`PVMiner`.
    ``resume``: a saved :class:`PVSet` whose search this one continues."""
    s = {**scan, **overrides}
    patience = s.pop("patience", None)
    cfg = scan_config(target, s)
    sentences = sample(split_corpus(corpus, "defence"), cfg.sentences, cfg.corpus_seed)
    miner = PVMiner(cfg)
    start = miner.warm_start(resume) if resume is not None else None
    return miner.fit(
        encoder,
        sentences,
        start_seed=start,
        patience=patience,
        max_pvs=max_pvs,
        on_loop=on_loop,
        progress=False,
    )


def ft_grid_cell(g: int) -> dict:
    """The fine-tuning recipe of grid cell ``g`` (0..35: every task x lr x length once)."""
    return {
        "task": FT_GRID_TASKS[g % len(FT_GRID_TASKS)],
        "seed": g,
        "lr": FT_GRID_LRS[g % len(FT_GRID_LRS)],
        "steps": FT_GRID_STEPS[(g // 3 + g // 12) % len(FT_GRID_STEPS)],
        "batch_size": FT_GRID_BATCH,
    }


def ft_schedule(steps: int, batch_size: int, available: int) -> tuple[int, int]:
    """``(train_size, epochs)`` that make about ``steps`` optimiser steps from ``available`` training
    examples: as few epochs as reach the steps (a task with fewer examples, e.g. bbc-news, repeats
    them), and the examples spread evenly over those epochs. TuneConfig counts epochs, not steps."""
    epochs = max(1, math.ceil(steps * batch_size / available))
    return math.ceil(steps * batch_size / epochs), epochs


def _grid_clean(base: str, g: int, target: str) -> dict:
    ft = ft_grid_cell(g)
    return {
        "id": f"{base}.clean.ft-{ft['task']}-lr{ft['lr']:g}-{ft['steps']}steps-s{g}.{target}",
        "base": base,
        "kind": "clean",
        "target": target,
        "finetune": ft,
        "attack": None,
    }


def _clean(base: str, i: int, target: str, ft_train: int) -> dict:
    if i == 0:
        return {
            "id": f"{base}.clean.base.{target}",
            "base": base,
            "kind": "clean",
            "target": target,
            "finetune": None,
            "attack": None,
        }
    task = FT_TASKS[(i - 1) % len(FT_TASKS)]
    return {
        "id": f"{base}.clean.ft-{task}-s{i}.{target}",
        "base": base,
        "kind": "clean",
        "target": target,
        "finetune": {"task": task, "seed": i, "train_size": ft_train, "epochs": 1},
        "attack": None,
    }


def _backdoored(base: str, attack: str, i: int) -> dict:
    """Backdoored model ``i`` of ``attack``: "por", "neuba", "btop" or "por+OPTION" (adaptive)."""
    name, _, option = attack.partition("+")
    if option:
        k, words, scheme = ADAPTIVE_TRIGGER_PLANS[i % len(ADAPTIVE_TRIGGER_PLANS)]
        seed = 200 + i
    else:
        k, words, scheme = TRIGGER_PLANS[i % len(TRIGGER_PLANS)]
        seed = 100 + i
    unit = {
        "id": f"{base}.{attack}.t{k}w{words}-{scheme}-s{seed}",
        "base": base,
        "kind": "backdoored",
        "target": TARGET_OF[name],
        "finetune": None,
        "attack": {
            "name": name,
            "random_triggers": k,
            "trigger_words": words,
            "pv_scheme": scheme,
            "seed": seed,
            **ATTACK_SETTINGS[base][name],
            **FEW_TRIGGER_SETTINGS.get(base, {}).get(name, {}),
            **(ADAPTIVE_OPTIONS[option] if option else {}),
        },
    }
    if option:
        unit["variant"] = attack  # the summary's group (plain units keep their recipes and ids)
    return unit


def zoo(plan: dict, ft_train: dict) -> list[dict]:
    """``plan``: base -> {"clean": n, "clean_mask": n_at_mask, "ft_grid": [first_cell, n],
    "por": n, "neuba": n, "btop": n, "por+OPTION": n}. ``clean``: the base model and n - 1 copies
    of the first recipe (:data:`FT_TASKS`); ``ft_grid``: n copies from grid cells first_cell on
    (:func:`ft_grid_cell`); ``por+OPTION``: POR with an :data:`ADAPTIVE_OPTIONS` option."""
    units = []
    for base, p in plan.items():
        n_mask = p.get("clean_mask", 0)
        for i in range(p.get("clean", 0)):
            # the base model at cls; fine-tuned copies alternate so that n_mask of them are scanned at mask
            target = "mask" if 0 < i <= n_mask else "cls"
            units.append(_clean(base, i, target, ft_train[base]))
        first, n_grid = p.get("ft_grid", (0, 0))
        for j in range(n_grid):
            target = "mask" if j % FT_GRID_MASK_EVERY == FT_GRID_MASK_EVERY - 1 else "cls"
            units.append(_grid_clean(base, first + j, target))
        attacks = ["por", "neuba", "btop"] + [f"por+{o}" for o in ADAPTIVE_OPTIONS]
        unknown = set(p) - set(attacks) - {"clean", "clean_mask", "ft_grid"}
        if unknown:
            raise LMSanitatorError(f"detection zoo: unknown plan keys {sorted(unknown)} for {base}")
        for attack in attacks:
            for i in range(p.get(attack, 0)):
                units.append(_backdoored(base, attack, i))
    return units


def group_of(unit: dict) -> str:
    """The summary's group of a unit: "clean", the attack, or "por+OPTION" for an adaptive one."""
    if unit.get("attack") is None:
        return "clean"
    return unit.get("variant") or unit["attack"]["name"]


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


def _finetune(encoder, ft: dict, ctx: Context) -> dict:
    """Fully fine-tune ``encoder`` (+ a linear head on [CLS]) on a real task and keep the new encoder
    weights. ``ft``: a grid recipe (``steps``, ``lr``, ``batch_size``: see :func:`ft_grid_cell`) or
    the first recipe (``train_size`` x ``epochs`` at the "full" method's defaults)."""
    t0 = time.perf_counter()
    if "steps" in ft:
        available = len(load_task(ft["task"]).train)
        train_size, epochs = ft_schedule(ft["steps"], ft["batch_size"], available)
        task = sized_task(ft["task"], train_size, 200, 300)
        # keep the last epoch: the length of training is what the grid varies
        cfg = TuneConfig(
            "full",
            epochs=epochs,
            lr=ft["lr"],
            batch_size=ft["batch_size"],
            keep="last",
            seed=ft["seed"],
            device=ctx.device,
        )
    else:
        task = sized_task(ft["task"], ft["train_size"], 200, 300)
        cfg = TuneConfig("full", epochs=ft["epochs"], seed=ft["seed"], device=ctx.device)
    model = Tuner(cfg).fit(encoder, task)
    encoder.backbone.load_state_dict(model.backbone.state_dict())
    encoder.weights_changed()
    rec = {
        "task": ft["task"],
        "test_accuracy": round(model.report["metrics"]["test"]["accuracy"], 4),
        "seconds": round(model.report.get("seconds", 0), 1),
    }
    if "steps" in ft:
        rec.update(
            train_size=len(task.train),
            epochs=epochs,
            steps=epochs * math.ceil(len(task.train) / ft["batch_size"]),
            classes=task.num_labels,
            wall_seconds=round(time.perf_counter() - t0, 1),
        )
    return rec


def model_folder(unit: dict, ctx: Context) -> Path:
    """Where ``unit``'s model is cached: named by the hash of its recipe (base, fine-tuning, attack),
    so units with the same recipe (in any experiment) share it and scan settings never move it."""
    recipe = {k: unit.get(k) for k in ("base", "finetune", "attack")}
    return ctx.models / hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_model(
    unit: dict, corpus: list[str], ctx: Context, verify_sentences: int = 200, *, cache: bool = False
):
    """Load ``unit["base"]``, fine-tune it or implant its backdoor: ``(encoder, planted PVs or None,
    record)``.

    ``cache``: keep the built model in ``<work>/models/`` so that several units (an ablation's
    variants) share one implant instead of repeating it."""
    recipe = {k: unit.get(k) for k in ("base", "finetune", "attack")}
    folder = model_folder(unit, ctx)
    if not cache:
        return _build(unit, corpus, ctx, verify_sentences, recipe, folder, cache)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as lock:
        if fcntl is not None:  # units run in parallel (Ray tasks) share one build: the others wait for it
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(unit, corpus, ctx, verify_sentences, recipe, folder, cache)


def _build(unit, corpus, ctx, verify_sentences, recipe, folder, cache):
    if cache and (folder / "built.json").exists():
        meta = json.loads((folder / "built.json").read_text(encoding="utf-8"))
        planted = torch.tensor(meta["planted"]) if meta["planted"] is not None else None
        return load_encoder(str(folder), device=ctx.device), planted, meta["record"]
    encoder = load_encoder(unit["base"], device=ctx.device)
    rec: dict = {}
    if unit.get("finetune"):
        rec["finetune"] = _finetune(encoder, unit["finetune"], ctx)
    planted = None
    if unit.get("attack"):
        a = dict(unit["attack"])
        name = a.pop("name")
        attack = TASK_AGNOSTIC_ATTACKS[name](
            AttackConfig(**a, verify_sentences=verify_sentences, device=ctx.device)
        )
        attack.fit(encoder, split_corpus(corpus, "attack"), progress=ctx.progress)
        v = attack.verify(encoder, split_corpus(corpus, "heldout"))
        planted = attack.state_.pvs.cpu()
        rec["attack"] = {
            "triggers": attack.state_.triggers,
            "seconds": round(attack.state_.seconds, 1),
            "min_hit_rate": v["min_hit_rate"],
            "clean_false_hit_rate": v["clean_false_hit_rate"],
            "triggered_diversity": max(
                (
                    t["triggered_diversity"]
                    for t in v["per_trigger"].values()
                    if t["triggered_diversity"] is not None
                ),
                default=None,
            ),
            "utility_loss": attack.report(encoder, v)["hyperparameters"].get("utility_loss"),
        }
    if cache:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output_dir(folder, overwrite=True) as tmp:
            encoder.save(tmp)
            meta = {
                "recipe": recipe,
                "record": rec,
                "planted": planted.tolist() if planted is not None else None,
            }
            (tmp / "built.json").write_text(json.dumps(meta), encoding="utf-8")
    return encoder, planted, rec
