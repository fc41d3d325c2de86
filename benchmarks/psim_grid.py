"""Robustness grid of PSIM's defaults (issue 23): does PSIM hold beyond the setting it was measured on?

One *cell* = one weight-poisoned encoder (BadNet or InSent, clean- or dirty-label, a poison count, the
attacker's training-set size, a target label, a K = 2 or K = 3 task, a seed) + one victim the user
tunes on clean data (LoRA, P-tuning, P-tuning v2 or prompt tuning) + PSIM with its *defaults*
(``PSIMConfig(seed=seed)``, trained on the task's whole training split, as a user runs it; gamma from
its own clean validation inputs). Per cell: the attacker's verification, the victim's CA and targeted
ASR without and behind PSIM, FRR (clean test inputs PSIM flags), PSIM's confidence spread and its
self-check warnings, every clean / poisoned test confidence (for the plot).

    python benchmarks/psim_grid.py list [--plan session|full]
    python benchmarks/psim_grid.py run [--plan session|full] [--only CELL_ID ...] [--work /tmp/psim-grid]
    python benchmarks/psim_grid.py table       # results/psim-grid/table.md + confidence.png

Resumable: each finished cell is ``results/psim-grid/cells/<id>.json`` and is skipped on the next run;
poisoned encoders, victims and PSIM modules are cached under ``--work`` (never committed: weights).
The ``full`` plan (every axis crossed, invalid poison counts dropped) is days of CPU; ``session`` is the
prioritised list one CPU session ran (see the table for which cells exist).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lmsanitator.attacks import WEIGHT_POISONING_ATTACKS, PoisonConfig
from lmsanitator.core.io import atomic_output_dir, write_json_atomic
from lmsanitator.data import load_task
from lmsanitator.metrics.poisoning import PoisonSpec
from lmsanitator.models import load_encoder
from lmsanitator.psim import PSIM, PSIMConfig, confidence_stats
from lmsanitator.psim.evaluate import evaluate_psim
from lmsanitator.tuning import TuneConfig, TunedModel, Tuner

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "psim-grid"
BASE = "minilm"
VICTIM = {"train": 1000, "validation": 300, "epochs": 2}  # the user's own tuning, as in psim_results.md
ATTACK = {"epochs": 3, "lr": 5e-5, "val_size": 200}  # PoisonConfig defaults but the validation split
PSIM_VAL = 1000  # clean validation inputs PSIM calibrates gamma on (`psim train`'s default --val-size)
EVAL_SIZE = 300  # first test examples (their non-target ones poisoned) per cell
WORKS = 0.8  # an attack "works" in a cell when the victim's ASR before PSIM is at least this


@dataclass(frozen=True)
class Cell:
    attack: str = "badnet"  # badnet | insent
    label: str = "clean"  # clean | dirty
    poison: int = 500
    train: int = 3000  # the attacker's poisoned training-set size
    target: int = 0
    task: str = "tweets-binary"  # tweets-binary (K = 2) | tweets (K = 3)
    victim: str = "lora"
    seed: int = 0

    @property
    def attack_key(self) -> str:
        k = "k3" if self.task == "tweets" else "k2"
        return f"{self.attack}-{self.label}-p{self.poison}-n{self.train}-t{self.target}-{k}-s{self.seed}"

    @property
    def id(self) -> str:
        return f"{self.attack_key}-{self.victim}"


# the session plan, in priority order: the reproduction scaled down (3000 / 500 poisoned, the
# same poison rate), a second victim on it, a K = 3 cell, an InSent dirty-label cell, a dirty-label
# BadNet, the exact setting (6000 / 1000: its attack alone is ~15 min of one core), a seed
SESSION = [
    Cell(),
    Cell(victim="prompt-tuning"),
    Cell(label="clean", poison=250, train=1000, target=0, task="tweets"),
    Cell(attack="insent", label="dirty", poison=250, train=1000, target=1, victim="p-tuning-v2"),
    Cell(label="dirty", poison=250, train=1000, target=1, victim="p-tuning"),
    Cell(poison=1000, train=6000),
    Cell(seed=1),
    # then the largest poison count on the largest set, and a K = 3 dirty-label InSent on another seed
    Cell(attack="insent", poison=2000, train=6000, target=1, victim="p-tuning"),
    Cell(
        attack="insent", label="dirty", poison=500, train=3000, task="tweets", victim="prompt-tuning", seed=1
    ),
]


def full_plan() -> list[Cell]:
    """Every axis of the issue crossed; poison counts above what the split can hold are dropped."""
    cells = []
    for a, lab, p, n, t, task, v, s in itertools.product(
        ("badnet", "insent"),
        ("clean", "dirty"),
        (250, 500, 1000, 2000),
        (1000, 3000, 6000),
        (0, 1),
        ("tweets-binary", "tweets"),
        ("lora", "p-tuning", "p-tuning-v2", "prompt-tuning"),
        (0, 1),
    ):
        k = 3 if task == "tweets" else 2
        eligible = n // k if lab == "clean" else n - n // k  # roughly balanced splits
        if p <= 0.8 * eligible:
            cells.append(Cell(a, lab, p, n, t, task, v, s))
    return cells


# ---- the three cached stages ---------------------------------------------------------------------
def poisoned_encoder(cell: Cell, work: Path) -> tuple[Path, dict]:
    """The attacker's fully fine-tuned encoder + classifier (``lmsanitator attack`` layout), cached."""
    folder = work / "attacks" / cell.attack_key
    if (folder / "attack.json").is_file():
        return folder, json.loads((folder / "attack.json").read_text())
    attack = WEIGHT_POISONING_ATTACKS[cell.attack](
        PoisonConfig(
            target_label=cell.target,
            poison_count=cell.poison,
            dirty_label=cell.label == "dirty",
            train_size=cell.train,
            verify_examples=EVAL_SIZE,
            seed=cell.seed,
            **ATTACK,
        )
    )
    task = load_task(cell.task)
    encoder = load_encoder(BASE)
    attack.fit(encoder, task, progress=True)
    report = attack.report(encoder, task, attack.verify(task))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(folder, overwrite=True) as tmp:
        encoder.save(tmp)
        attack.save_classifier(tmp)
        (tmp / "attack.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return folder, report


def victim(cell: Cell, model: Path, work: Path) -> TunedModel:
    """The user's own model: ``cell.victim`` tuned on the first 1000 clean training examples."""
    folder = work / "victims" / cell.id
    if (folder / "tune.json").is_file():
        return TunedModel.load(folder)
    task = load_task(cell.task).with_train_size(VICTIM["train"]).with_validation_size(VICTIM["validation"])
    task = replace(task, test=task.test[:EVAL_SIZE])  # its report's test pass: the evaluated inputs only
    cfg = TuneConfig(cell.victim, epochs=VICTIM["epochs"], seed=cell.seed)
    m = Tuner(cfg).fit(load_encoder(str(model)), task, progress=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(folder, overwrite=True) as tmp:
        m.save(tmp)
    return m


def psim_module(cell: Cell, model: Path, work: Path) -> PSIM:
    """PSIM with its defaults on the whole training split (one per poisoned encoder and seed)."""
    folder = work / "psim" / cell.attack_key
    task = load_task(cell.task).with_validation_size(PSIM_VAL)
    if (folder / "psim.json").is_file():
        psim = PSIM.load(folder)
        if psim.info_["validation_confidence"].get("n") != len(task.validation):
            # fitted with another validation size (the module does not depend on it): gamma again
            psim.calibrate([e.text for e in task.validation], frr=psim.config.frr)
        return psim
    psim = PSIM(PSIMConfig(seed=cell.seed)).fit(load_encoder(str(model)), task, progress=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output_dir(folder, overwrite=True) as tmp:
        psim.save(tmp)
    return psim


def run_cell(cell: Cell, work: Path) -> dict:
    """Attack, victim, PSIM, evaluation of one cell (each stage cached); the cell's record."""
    t = {}
    t0 = time.perf_counter()
    model, report = poisoned_encoder(cell, work)
    t["attack"] = round(time.perf_counter() - t0, 1)
    v = victim(cell, model, work)
    t["victim"] = round(time.perf_counter() - t0 - sum(t.values()), 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        psim = psim_module(cell, model, work)
    t["psim"] = round(time.perf_counter() - t0 - sum(t.values()), 1)
    task = load_task(cell.task)
    spec, _ = PoisonSpec.from_attack_json(model)
    res = evaluate_psim(psim, [(cell.victim, v)], task, spec, max_examples=EVAL_SIZE, keep_confidences=True)
    t["evaluate"] = round(time.perf_counter() - t0 - sum(t.values()), 1)
    r = res["results"][0]
    return {
        "cell": asdict(cell),
        "id": cell.id,
        "attack_verification": report.get("verification"),
        "poison": {k: report.get(k) for k in ("poison_count", "poison_rate", "label_mode", "knowledge")},
        "before": r["before"],
        "after": r["after"],
        "gamma": res["gamma"],
        "gamma_rule": res["gamma_rule"],
        "frr": res["flagged_clean"],
        "flagged_poisoned": res["flagged_poisoned"],
        "psim": {k: psim.info_.get(k) for k in ("validation_confidence", "warnings", "steps", "head_init")},
        "psim_warnings_raised": [str(w.message) for w in caught],
        "confidence_clean_stats": confidence_stats(res["confidence_clean"]),
        "confidence_poisoned_stats": confidence_stats(res["confidence_poisoned"]),
        "confidence_clean": res["confidence_clean"],
        "confidence_poisoned": res["confidence_poisoned"],
        "seconds": t,
        "commit": _commit(),
        "command": "python benchmarks/psim_grid.py run --only " + cell.id,
    }


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---- the table and the plot ---------------------------------------------------------------------
def _pct(x) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def table(out: Path = OUT) -> str:
    """``table.md`` from every cell JSON (ASR / CA before and after, FRR, the worst working cell)."""
    recs = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    lines = [
        "| cell | K | poison rate | attack CA / ASR | victim | CA | CA PSIM | ASR | ASR PSIM | FRR | "
        "gamma | clean p99 | poisoned min | works | holds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    worst = None
    for r in recs:
        b, a, av = r["before"], r["after"], r["attack_verification"] or {}
        works = b["asr"] >= WORKS
        ca_loss = b["clean_accuracy"] - a["clean_accuracy"]
        holds = a["asr"] <= 0.05 and r["frr"] <= 0.02 and ca_loss <= 0.02
        if works:
            key = (a["asr"], r["frr"], ca_loss)
            worst = max(worst or (key, r["id"]), (key, r["id"]))
        k = 3 if r["cell"]["task"] == "tweets" else 2
        lines.append(
            f"| {r['id']} | {k} | {r['poison'].get('poison_rate')} | {_pct(av.get('clean_accuracy'))} / "
            f"{_pct(av.get('asr'))} | {r['cell']['victim']} | {_pct(b['clean_accuracy'])} | "
            f"{_pct(a['clean_accuracy'])} | {_pct(b['asr'])} | {_pct(a['asr'])} | {_pct(r['frr'])} | "
            f"{r['gamma']:.4f} | {r['confidence_clean_stats']['p99']:.3f} | "
            f"{min(r['confidence_poisoned']):.3f} | {'yes' if works else 'no'} | "
            f"{'yes' if holds else '**no**'} |"
        )
    head = [
        "# PSIM robustness grid (issue 23): PSIM with its defaults",
        "",
        f"Generated by `python benchmarks/psim_grid.py table` from {len(recs)} cell file(s) in `cells/`.",
        "CA, ASR, FRR in % on the first 300 test examples (ASR: the non-target ones with the trigger);",
        "FRR = clean test inputs PSIM flags; *works* = victim ASR before PSIM >= 80%; *holds* = ASR behind",
        "PSIM <= 5%, FRR <= 2% and CA loss <= 2 points. `confidence.png`: PSIM's confidence on clean and",
        "poisoned test inputs per cell, gamma dashed.",
        "",
    ]
    tail = [
        "",
        f"Worst working cell: **{worst[1]}** (ASR behind PSIM, FRR, CA loss = "
        f"{', '.join(_pct(x) for x in worst[0])} %)."
        if worst
        else "No cell where the attack works.",
    ]
    text = "\n".join(head + lines + tail) + "\n"
    (out / "table.md").write_text(text, encoding="utf-8")
    _plot(recs, out / "confidence.png")
    return text


def _plot(recs: list[dict], path: Path) -> None:
    import matplotlib  # noqa: PLC0415  heavy: only the table needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  heavy: only the table needs it

    if not recs:
        return
    cols = min(3, len(recs))
    rows = -(-len(recs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, r in zip(axes.flat, recs):
        bins = [i / 100 for i in range(30, 101)]
        ax.hist(r["confidence_clean"], bins=bins, alpha=0.6, label="clean", color="tab:blue")
        ax.hist(r["confidence_poisoned"], bins=bins, alpha=0.6, label="poisoned", color="tab:red")
        ax.axvline(r["gamma"], ls="--", color="k", lw=1)
        ax.set_title(r["id"], fontsize=7)
        ax.set_xlabel("PSIM confidence (max softmax)", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(recs) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("list", "run", "table"))
    p.add_argument("--plan", choices=("session", "full"), default="session")
    p.add_argument("--only", nargs="*", help="cell ids (default: every cell of the plan)")
    p.add_argument("--work", default="/tmp/psim-grid", help="cache of poisoned encoders, victims, PSIM")
    a = p.parse_args(argv)
    cells = SESSION if a.plan == "session" else full_plan()
    if a.only:
        known = {c.id: c for c in SESSION + full_plan()}
        cells = [known[i] for i in a.only]
    if a.command == "list":
        for c in cells:
            done = (OUT / "cells" / f"{c.id}.json").is_file()
            print(("done " if done else "todo ") + c.id)
        print(f"{len(cells)} cells", file=sys.stderr)
        return 0
    if a.command == "run":
        (OUT / "cells").mkdir(parents=True, exist_ok=True)
        for c in cells:
            f = OUT / "cells" / f"{c.id}.json"
            if f.is_file():
                continue
            print(f"== {c.id}", file=sys.stderr, flush=True)
            rec = run_cell(c, Path(a.work))
            write_json_atomic(f, rec)
            print(
                f"{c.id}: ASR {_pct(rec['before']['asr'])} -> {_pct(rec['after']['asr'])}, CA "
                f"{_pct(rec['before']['clean_accuracy'])} -> {_pct(rec['after']['clean_accuracy'])}, "
                f"FRR {_pct(rec['frr'])}, gamma {rec['gamma']:.4f}",
                file=sys.stderr,
                flush=True,
            )
    print(table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
