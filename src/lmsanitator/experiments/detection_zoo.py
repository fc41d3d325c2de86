"""The detection zoo: the clean and backdoored models that ``detection`` (LMSanitator Table 4)
scans, as units.

Clean models are real: the bundled clean encoders and copies of them fully fine-tuned on real
tasks with different seeds (the paper's way of making 120 clean models per architecture). The
MiniLM-family copies come from a grid of tasks x learning rates x lengths of training (one seed
each) around the recipe of the paper (and of issue 19's false positive): batch 16, a linear head on
[CLS], every weight trained. Backdoored models are the bundled encoders with POR, NeuBA or BToP
implanted with *random* triggers (single words and two-word phrases) and both PV schemes (``por2``,
``random``), and POR with the adaptive options whose implant works (:data:`ADAPTIVE_OPTIONS`).

A unit's id names its work-folder record and its recipe its built model
(:func:`~lmsanitator.experiments.recipes.model_folder`): both must stay as they are for the
committed results and the built models to be reused. How a unit's model is built is in
:mod:`lmsanitator.experiments.recipes`.
"""

from __future__ import annotations

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.experiments.recipes import ATTACK_SETTINGS, FEW_TRIGGER_SETTINGS, TARGET_OF

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


def ft_grid_cell(g: int) -> dict:
    """The fine-tuning recipe of grid cell ``g`` (0..35: every task x lr x length once)."""
    return {
        "task": FT_GRID_TASKS[g % len(FT_GRID_TASKS)],
        "seed": g,
        "lr": FT_GRID_LRS[g % len(FT_GRID_LRS)],
        "steps": FT_GRID_STEPS[(g // 3 + g // 12) % len(FT_GRID_STEPS)],
        "batch_size": FT_GRID_BATCH,
    }


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
