"""``detection``: LMSanitator Table 4 - false positives, false negatives and accuracy of the scan
over a zoo of clean and backdoored encoders.

Clean models are real: the bundled clean encoders and copies of them fully fine-tuned on real
tasks with different seeds (the paper's way of making 120 clean models per architecture).
Backdoored models are the bundled encoders with POR, NeuBA or BToP implanted with *random*
triggers (single words and two-word phrases) and both PV schemes (``por2``, ``random``).

Each model is scanned at the read-out its downstream user would watch: ``cls`` for POR and NeuBA
(P-tuning v2, LoRA, prompt tuning read [CLS]) and ``mask`` for BToP (P-tuning reads [MASK]); the
clean zoo is scanned at both read-outs in the same proportion, so the false-positive rate is
measured at each. The scan never sees a trigger or a planted PV; those are used afterwards only to
measure how well a found PV matches a planted one (sign agreement).

The model zoo's recipes and :func:`build_model`, and :func:`mine`, are shared with the other
experiments; the search mode they share (kept PV sets) is in :mod:`lmsanitator.experiments.search`.
"""

from __future__ import annotations

import hashlib
import json

try:
    import fcntl  # POSIX: a lock file serialises builds that parallel units share
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

import torch

from lmsanitator.attacks import TASK_AGNOSTIC_ATTACKS, AttackConfig
from lmsanitator.core.io import atomic_output_dir
from lmsanitator.data import load_corpus, sample, split_corpus
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
FT_TASKS = ("tweets-binary", "wordnet-topic", "austen-author")
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
    k, words, scheme = TRIGGER_PLANS[i % len(TRIGGER_PLANS)]
    seed = 100 + i
    return {
        "id": f"{base}.{attack}.t{k}w{words}-{scheme}-s{seed}",
        "base": base,
        "kind": "backdoored",
        "target": TARGET_OF[attack],
        "finetune": None,
        "attack": {
            "name": attack,
            "random_triggers": k,
            "trigger_words": words,
            "pv_scheme": scheme,
            "seed": seed,
            **ATTACK_SETTINGS[base][attack],
            **FEW_TRIGGER_SETTINGS.get(base, {}).get(attack, {}),
        },
    }


def zoo(plan: dict, ft_train: dict) -> list[dict]:
    """``plan``: base -> {"clean": n, "clean_mask": n_at_mask, "por": n, "neuba": n, "btop": n}."""
    units = []
    for base, p in plan.items():
        n_mask = p.get("clean_mask", 0)
        for i in range(p.get("clean", 0)):
            # the base model at cls; fine-tuned copies alternate so that n_mask of them are scanned at mask
            target = "mask" if 0 < i <= n_mask else "cls"
            units.append(_clean(base, i, target, ft_train[base]))
        for attack in ("por", "neuba", "btop"):
            for i in range(p.get(attack, 0)):
                units.append(_backdoored(base, attack, i))
    return units


class Detection(Experiment):
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
            plan = {
                "splade-tiny": {"clean": 18, "clean_mask": 5, "por": 6, "neuba": 5, "btop": 5},
                # NeuBA runs on splade-tiny only: a MiniLM NeuBA unit (3-epoch implant + up to 30
                # loops) costs about an hour of one core here
                "minilm": {"clean": 1, "por": 2, "btop": 1},
                "minilm-sre": {"clean": 1, "por": 1},
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
            # per-loop epoch means: what any abort rule would have seen (replayable offline)
            "loops": [
                {
                    "seed": c["seed"],
                    "accepted": c["accepted"],
                    "distance": [round(x, 4) for x in c["distance"]],
                    "diversity": [round(x, 4) for x in c["diversity"]],
                }
                for c in r["candidates"]
            ],
        }
        if planted is not None and miner.pvs_:
            agree = sign_match(torch.stack(miner.pvs_).float().cpu(), planted.float())
            rec["scan"]["pv_agreement"] = round(float(agree.max()), 4)
        ctx.say(
            f"{unit['id']}: {r['verdict']} ({r['loops_run']} loops, {r['seconds']:.0f} s)"
            + (f", PV agreement {rec['scan']['pv_agreement']:.3f}" if "pv_agreement" in rec["scan"] else "")
        )
        return rec

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        def counts(rs):
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

        summary = counts(records)
        agreements = [r["scan"]["pv_agreement"] for r in records if "pv_agreement" in r["scan"]]
        summary["pv_agreement_min"] = min(agreements) if agreements else None
        summary["pv_agreement_mean"] = round(sum(agreements) / len(agreements), 4) if agreements else None
        summary["unverified_implants"] = sum(
            1
            for r in records
            if r.get("attack")
            and (r["attack"]["min_hit_rate"] < 0.9 or r["attack"]["clean_false_hit_rate"] > 0.02)
        )
        groups = {}
        for r in records:
            u = r["unit"]
            groups.setdefault((u["base"], u["attack"]["name"] if u["attack"] else "clean"), []).append(r)
        summary["by_group"] = {f"{b}/{a}": counts(rs) for (b, a), rs in groups.items()}
        lines = [
            "| model | attack | target | models | FP | FN | accuracy | scan loops (mean) "
            "| PV agreement (min) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (b, a), rs in groups.items():
            c = counts(rs)
            targets = "/".join(sorted({r["unit"]["target"] for r in rs}))
            ag = [r["scan"]["pv_agreement"] for r in rs if "pv_agreement" in r["scan"]]
            loops = sum(r["scan"]["loops_run"] for r in rs) / len(rs)
            fp = c["false_positives"] if a == "clean" else "-"
            fn = c["false_negatives"] if a != "clean" else "-"
            lines.append(
                f"| {b} | {a} | {targets} | {len(rs)} | {fp} | {fn} | {100 * c['accuracy']:.1f}% | "
                f"{loops:.1f} | {f'{min(ag):.3f}' if ag else '-'} |"
            )
        s = summary
        lines.append(
            f"| **all** | | | {s['n_clean']} clean + {s['n_backdoored']} backdoored | "
            f"{s['false_positives']} | {s['false_negatives']} | **{100 * s['accuracy']:.1f}%** | | "
            f"{s['pv_agreement_min'] if s['pv_agreement_min'] is not None else '-'} |"
        )
        return summary, "\n".join(lines)


def _finetune(encoder, ft: dict, ctx: Context) -> dict:
    """Fully fine-tune ``encoder`` (+ a linear head) on a real task and keep the new encoder weights."""
    task = sized_task(ft["task"], ft["train_size"], 200, 300)
    model = Tuner(TuneConfig("full", epochs=ft["epochs"], seed=ft["seed"], device=ctx.device)).fit(
        encoder, task
    )
    encoder.backbone.load_state_dict(model.backbone.state_dict())
    encoder.weights_changed()
    return {
        "task": ft["task"],
        "test_accuracy": round(model.report["metrics"]["test"]["accuracy"], 4),
        "seconds": round(model.report.get("seconds", 0), 1),
    }


def build_model(
    unit: dict, corpus: list[str], ctx: Context, verify_sentences: int = 200, *, cache: bool = False
):
    """Load ``unit["base"]``, fine-tune it or implant its backdoor: ``(encoder, planted PVs or None,
    record)``.

    ``cache``: keep the built model in ``<work>/models/`` so that several units (an ablation's
    variants) share one implant instead of repeating it."""
    recipe = {k: unit.get(k) for k in ("base", "finetune", "attack")}
    folder = ctx.models / hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
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
