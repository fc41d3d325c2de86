"""How every experiment builds and scans a model.

A model is described by its *recipe*: the bundled ``base`` encoder, an optional full fine-tuning
(``finetune``) and an optional task-agnostic backdoor (``attack``, run with the settings of
:data:`ATTACK_SETTINGS` for its base). :func:`build_model` loads the base, fine-tunes it
(:func:`_finetune`) or implants the backdoor, and with ``cache=True`` keeps the result in the model
cache, where every experiment's units with the same recipe find it built. :func:`scan_config` and
:func:`mine` run the scan with an experiment's settings at :data:`EXPERIMENT_MAX_LENGTH`.

The model cache key must not change: :func:`model_folder` names a model's folder by a hash of its
recipe (the JSON of ``base``, ``finetune`` and ``attack``, keys sorted), so models already built
(hours of CPU each) are found only while the hash, and every recipe and default that feeds it,
stays as it is.
"""

from __future__ import annotations

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
from lmsanitator.core.io import atomic_output_dir
from lmsanitator.data import load_task, sample, split_corpus
from lmsanitator.experiments.base import Context, sized_task
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


# here, not beside the grid in detection_zoo: building a grid copy needs it, and the zoo imports this
# module (the other way round would be a cycle)
def ft_schedule(steps: int, batch_size: int, available: int) -> tuple[int, int]:
    """``(train_size, epochs)`` that make about ``steps`` optimiser steps from ``available`` training
    examples: as few epochs as reach the steps (a task with fewer examples, e.g. bbc-news, repeats
    them), and the examples spread evenly over those epochs. TuneConfig counts epochs, not steps."""
    epochs = max(1, math.ceil(steps * batch_size / available))
    return math.ceil(steps * batch_size / epochs), epochs


def _finetune(encoder, ft: dict, ctx: Context) -> dict:
    """Fully fine-tune ``encoder`` (+ a linear head on [CLS]) on a real task and keep the new encoder
    weights. ``ft``: a grid recipe (``steps``, ``lr``, ``batch_size``: see
    :func:`~lmsanitator.experiments.detection_zoo.ft_grid_cell`) or the first recipe (``train_size`` x
    ``epochs`` at the "full" method's defaults)."""
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
