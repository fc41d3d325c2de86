"""``psim``: PSIM paper Tables 1-3 at small scale - weight-poisoning attacks (BadNet, InSent;
full-data and full-task knowledge) against victims tuned with LoRA, P-tuning, P-tuning v2 and prompt
tuning, before and behind PSIM; and PSIM's cost on a clean encoder.

Per scenario (one unit): the attacker fully fine-tunes the encoder on a clean-label poisoned set
(kept in the work folder with its classifier head, as `lmsanitator attack badnet|insent` writes it);
the user tunes each victim on the task; PSIM is trained on the task with labels reset at random and
its threshold gamma set at 1% false rejections on clean validation inputs (the paper's 0.7 is
reported beside it). CA on clean test inputs (a rejected input is an error), targeted ASR on
non-target test inputs with the trigger (a rejected input is a failed attack).
"""

from __future__ import annotations

import hashlib
import json

from lmsanitator.attacks import WEIGHT_POISONING_ATTACKS, PoisonConfig
from lmsanitator.attacks.poisoning import resolve_label
from lmsanitator.core.io import atomic_output_dir
from lmsanitator.data import load_task
from lmsanitator.experiments.base import Context, Experiment, sized_task
from lmsanitator.metrics.poisoning import PoisonSpec
from lmsanitator.models import load_encoder
from lmsanitator.psim import PSIM, PSIMConfig
from lmsanitator.psim.evaluate import evaluate_psim
from lmsanitator.tuning import TuneConfig, Tuner

METHODS = ("lora", "p-tuning", "p-tuning-v2", "prompt-tuning")


def _scenario(name: str, attack: str | None, proxy: str | None = None) -> dict:
    return {"id": name, "attack": attack, "proxy_task": proxy}


class PSIMExperiment(Experiment):
    name = "psim"
    paper = "PSIM Tables 1-3 (weight poisoning vs PEFT victims, before and behind PSIM)"
    description = (
        "Clean-label BadNet / InSent weight poisoning; victims tuned with PEFT; PSIM (LoRA, random "
        "labels, gamma calibrated at 1% FRR on clean validation inputs)."
    )

    def config(self, quick: bool) -> dict:
        if quick:
            base, methods = "splade-tiny", ("lora",)
            scenarios = [_scenario("badnet-full-data", "badnet")]
            attack = {"train_size": 600, "poison_count": 150, "epochs": 2, "lr": 1e-4}
            sizes = {"train": 300, "validation": 100, "test": 100, "epochs": 2, "psim_train": 300}
        else:
            base, methods = "minilm", METHODS
            scenarios = [
                _scenario("badnet-full-data", "badnet"),
                _scenario("insent-full-data", "insent"),
                _scenario("badnet-full-task", "badnet", "tweets-binary:proxy"),
                _scenario("clean", None),
            ]
            attack = {"train_size": 2000, "poison_count": 500, "epochs": 3, "lr": 5e-5}
            sizes = {"train": 1000, "validation": 300, "test": 500, "epochs": 2, "psim_train": 1000}
        return {
            "base": base,
            "task": "tweets-binary",
            "target_label": "positive",
            "methods": list(methods),
            "scenarios": scenarios,
            "attack": attack,
            "sizes": sizes,
            "seed": 0,
            "calibrate_frr": 0.01,
            "clean_scenario_trigger": "badnet",
        }

    def units(self, config: dict) -> list[dict]:
        return config["scenarios"]

    def _poisoned(self, unit: dict, config: dict, task, ctx: Context):
        """The poisoned encoder's folder (encoder + the attacker's head), built once."""
        # per-attack settings over the shared ones (SynAttack: fewer, dirty-label examples)
        a = {**config["attack"], **(config.get("attack_overrides", {}).get(unit["attack"]) or {})}
        recipe = {
            "base": config["base"],
            "task": config["task"],
            "attack": unit["attack"],
            "proxy": unit["proxy_task"],
            "settings": a,
            "target": config["target_label"],
            "seed": config["seed"],
        }
        folder = ctx.models / hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
        if (folder / "attack.json").exists():
            return folder, json.loads((folder / "attack.json").read_text(encoding="utf-8"))
        attack = WEIGHT_POISONING_ATTACKS[unit["attack"]](
            PoisonConfig(
                target_label=config["target_label"],
                poison_count=a["poison_count"],
                dirty_label=a.get("dirty_label", False),
                epochs=a["epochs"],
                lr=a["lr"],
                train_size=a["train_size"],
                seed=config["seed"],
                device=ctx.device,
            )
        )
        encoder = load_encoder(config["base"], device=ctx.device)
        proxy = load_task(unit["proxy_task"]) if unit["proxy_task"] else None
        attack.fit(encoder, task, poison_task=proxy, progress=ctx.progress)
        report = attack.report(encoder, task, attack.verify(task))
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output_dir(folder, overwrite=True) as tmp:
            encoder.save(tmp)
            attack.save_classifier(tmp)
            (tmp / "attack.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        return folder, report

    def run_unit(self, unit: dict, config: dict, ctx: Context) -> dict:
        # ~70 lines kept as one: build the scenario, tune each victim, fit and evaluate PSIM - one
        # linear recipe whose intermediate results all go into the record
        sz = config["sizes"]
        full = load_task(config["task"])
        task = sized_task(full, sz["train"], sz["validation"], sz["test"])
        rec: dict = {}
        if unit["attack"]:
            folder, report = self._poisoned(unit, config, full, ctx)
            model_path = str(folder)
            v = report.get("verification", {})
            rec["attack"] = {
                "clean_accuracy": v.get("clean_accuracy"),
                "asr": v.get("asr"),
                "knowledge": report.get("knowledge"),
                "triggers": report.get("triggers"),
                **({"syntactic": report["syntactic"]} if "syntactic" in report else {}),
            }
            attack_name = unit["attack"]
        else:  # PSIM's cost on a clean encoder; ASR measured with the BadNet trigger for reference
            model_path, attack_name = config["base"], config["clean_scenario_trigger"]
        cls = WEIGHT_POISONING_ATTACKS[attack_name]
        spec = PoisonSpec(cls.default_trigger, resolve_label(task, config["target_label"]), cls.insertion)
        victims = []
        for method in config["methods"]:
            m = Tuner(TuneConfig(method, epochs=sz["epochs"], seed=config["seed"], device=ctx.device)).fit(
                load_encoder(model_path, device=ctx.device), task
            )
            victims.append((method, m))
        psim_task = full.with_train_size(sz["psim_train"]).with_validation_size(sz["validation"])
        psim = PSIM(PSIMConfig(seed=config["seed"], device=ctx.device)).fit(
            load_encoder(model_path, device=ctx.device), psim_task
        )
        res = evaluate_psim(
            psim,
            victims,
            task,
            spec,
            calibrate_frr=config["calibrate_frr"],
            val_size=sz["validation"],
            seed=config["seed"],
        )
        rec["psim"] = {
            k: res[k]
            for k in (
                "gamma",
                "folder_gamma",
                "flagged_clean",
                "flagged_poisoned",
                "flagged_clean_folder_gamma",
                "flagged_poisoned_folder_gamma",
                "n",
                "n_poisoned",
            )
        }
        rec["victims"] = [
            {
                "method": r["method"],
                "before": r["before"],
                "after": r["after"],
                "after_default_gamma": r.get("after_folder_gamma", r["after"]),
            }
            for r in res["results"]
        ]
        for r in rec["victims"]:
            ctx.say(
                f"{unit['id']} {r['method']}: CA {100 * r['before']['clean_accuracy']:.1f} -> "
                f"{100 * r['after']['clean_accuracy']:.1f}, ASR {100 * r['before']['asr']:.1f} -> "
                f"{100 * r['after']['asr']:.1f}"
            )
        return rec

    def summarize(self, config: dict, records: list[dict]) -> tuple[dict, str]:
        attacked = [(r, v) for r in records if r["unit"]["attack"] for v in r["victims"]]
        clean = [(r, v) for r in records if not r["unit"]["attack"] for v in r["victims"]]
        summary = {
            "max_asr_after": max((v["after"]["asr"] for _, v in attacked), default=None),
            "max_ca_loss_attacked": max(
                (v["before"]["clean_accuracy"] - v["after"]["clean_accuracy"] for _, v in attacked),
                default=None,
            ),
            "max_ca_loss_clean_encoder": max(
                (v["before"]["clean_accuracy"] - v["after"]["clean_accuracy"] for _, v in clean), default=None
            ),
        }
        lines = [
            "| scenario | victim | CA | ASR | CA PSIM (gamma default) | ASR PSIM (gamma default) | "
            "CA PSIM (cal.) | ASR PSIM (cal.) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in records:
            for v in r["victims"]:
                b, d, c = v["before"], v["after_default_gamma"], v["after"]
                lines.append(
                    f"| {r['unit']['id']} | {v['method']} | {100 * b['clean_accuracy']:.1f} "
                    f"| {100 * b['asr']:.1f} | {100 * d['clean_accuracy']:.1f} | {100 * d['asr']:.1f} "
                    f"| {100 * c['clean_accuracy']:.1f} | {100 * c['asr']:.1f} |"
                )
            p = r["psim"]
            lines.append(
                f"| {r['unit']['id']} | *flagged clean / poisoned* | | | "
                f"{100 * p['flagged_clean_folder_gamma']:.1f}"
                f" / {100 * (p['flagged_poisoned_folder_gamma'] or 0):.1f} | gamma {p['folder_gamma']:.3f} | "
                f"{100 * p['flagged_clean']:.1f} / {100 * (p['flagged_poisoned'] or 0):.1f} | "
                f"gamma {p['gamma']:.3f} |"
            )
            syn = (r.get("attack") or {}).get("syntactic")
            if syn:  # SynAttack poisons and measures only what the paraphraser can rewrite
                train, test = syn.get("train_rewrite_share") or 0, syn.get("test_rewrite_share") or 0
                lines.append(
                    f"| {r['unit']['id']} | *rewritable: train {100 * train:.1f}%, test {100 * test:.1f}% "
                    f"({syn.get('test_poisoned')} measured)* | | | | | | |"
                )
        return summary, "\n".join(lines)


class PSIMDecoderExperiment(PSIMExperiment):
    """The PSIM paper's LLaMA row on ``smollm2`` (SmolLM2-135M, the LLaMA architecture): BadNet,
    InSent and SynAttack (dirty-label, as Hidden Killer; the paraphraser rewrites a few percent of
    tweets, so only those are poisoned and measured) against the four PEFT victims and a fully
    fine-tuned one, whose ASR the paper contrasts with PEFT's. The target feature is the last
    non-padding token. Sized for a GPU (``--device cuda``); ``--quick`` fits a CPU in minutes."""

    name = "psim-llama"
    paper = "PSIM Tables 1-2, LLaMA row (weight poisoning vs PEFT and full-FT decoder victims)"
    description = (
        "smollm2 (LLaMA architecture), last-token features. BadNet / InSent clean-label and SynAttack "
        "dirty-label weight poisoning; victims tuned with PEFT and full fine-tuning; PSIM (LoRA, random "
        "labels, gamma calibrated at 1% FRR on clean validation inputs)."
    )

    def config(self, quick: bool) -> dict:
        cfg = super().config(quick=False)
        if quick:
            scenarios = [_scenario("badnet-full-data", "badnet")]
            attack = {"train_size": 400, "poison_count": 100, "epochs": 1, "lr": 5e-5}
            sizes = {"train": 200, "validation": 100, "test": 100, "epochs": 1, "psim_train": 200}
            methods, synattack = ["lora"], None
        else:
            scenarios = [
                _scenario("badnet-full-data", "badnet"),
                _scenario("insent-full-data", "insent"),
                _scenario("synattack-full-data", "synattack"),
                _scenario("clean", None),
            ]
            attack = {"train_size": 6000, "poison_count": 1000, "epochs": 2, "lr": 5e-5}
            sizes = {"train": 1000, "validation": 300, "test": 1000, "epochs": 3, "psim_train": 1000}
            # the paraphraser rewrites ~6% of tweets: 150 of the ~180 rewritable non-target ones
            methods, synattack = [*METHODS, "full"], {"poison_count": 150, "dirty_label": True}
        return {
            **cfg,
            "base": "smollm2",
            "methods": methods,
            "scenarios": scenarios,
            "attack": attack,
            "attack_overrides": {"synattack": synattack} if synattack else {},
            "sizes": sizes,
        }
