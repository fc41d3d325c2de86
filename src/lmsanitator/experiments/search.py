"""The search mode as pv-search, attack-defense and monitor-overhead share it: one search per
backdoored-model recipe, kept beside the built models (``--model-cache``) and
continued, not repeated, when a later request asks for a larger budget (:func:`search_pvs`).
"""

from __future__ import annotations

import hashlib
import json
import time

try:
    import fcntl  # POSIX: a lock file serialises searches shared through --model-cache
except ImportError:  # pragma: no cover
    fcntl = None

from lmsanitator.core.io import write_json_atomic
from lmsanitator.data import sample, split_corpus
from lmsanitator.data.pvset import PVSet
from lmsanitator.experiments.base import Context
from lmsanitator.experiments.recipes import build_model, mine, scan_config
from lmsanitator.scan import PVMiner

# The search mode as pv-search, attack-defense and monitor-overhead run it: one shared search per
# backdoored model (see search_pvs). Full runs: stop after 60 loops without a new PV, at most 200
# loops, 120 on MiniLM (the paper: 1000 / 200). The cap follows the CPU cost: a MiniLM loop takes
# ~45 s on one core, a SPLADE-tiny loop ~3 s. The settings are the detection scan's (320
# sentences, 6 epochs, abort check after epoch 3).
SEARCH_SETTINGS = {
    "sentences": 320,
    "epochs": 6,
    "abort_epoch": 2,
    "batch_size": 32,
    "seed": 0,
    "antipode_probe": True,
}
# settings a kept search may gain later without being mined again (they only add loops to it)
CONTINUABLE = ("loops", "patience", "loops_by_base", "antipode_probe")
SEARCH_BUDGET = {"loops": 200, "patience": 60, "loops_by_base": {"minilm": 120, "minilm-sre": 120}}


def search_config(quick_budget: dict | None = None) -> dict:
    """The shared search configuration; ``quick_budget`` for ``--quick`` runs."""
    return {**(quick_budget or SEARCH_BUDGET), **SEARCH_SETTINGS}


def search_pvs(model: dict, corpus: list[str], search: dict, ctx: Context, verify_sentences: int = 100):
    """The search mode's PV set for a backdoored-model recipe, mined once and kept beside the built
    models (``ctx.models/pvsets``), so pv-search, attack-defense and monitor-overhead share one search
    when they share ``--model-cache``. Returns ``(PVSet, info)``, info with ``loops_run``, ``seconds``
    and the budget the kept search has used (``loops``, ``patience``).

    The cache key leaves the budget (``loops``, ``patience``) and ``antipode_probe`` out: a request
    with a larger budget continues the kept search from its last fuzz seed (its PVs, path loss and
    patience carry over), exactly as one longer search would have run; a request within the kept
    budget reuses it, after probing the antipodes of any PV that was never probed."""
    budget = {
        "loops": search.get("loops_by_base", {}).get(model["base"], search["loops"]),
        "patience": search["patience"],
    }
    settings = {k: v for k, v in search.items() if k not in ("loops", "patience", "loops_by_base")}
    recipe = {k: model.get(k) for k in ("base", "target", "finetune", "attack")}
    keyed = {k: v for k, v in settings.items() if k not in CONTINUABLE}
    key = hashlib.sha256(json.dumps({"model": recipe, "search": keyed}, sort_keys=True).encode()).hexdigest()[
        :16
    ]
    path = ctx.models / "pvsets" / f"{key}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        if fcntl is not None:  # units run in parallel (Ray tasks, --only) share one search: the others wait
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _kept_search(model, corpus, settings, budget, recipe, path, ctx, verify_sentences)


def _kept_search(model, corpus, settings, budget, recipe, path, ctx, verify_sentences):
    # ~65 lines kept as one: the budget arithmetic, the save callback and the three outcomes (reuse,
    # probes only, continue mining) share the kept search's state
    info_path = path.with_suffix(".json")
    previous, info = None, {"loops_run": 0, "seconds": 0.0}
    probes = settings.get("antipode_probe", False)
    budget_now = budget
    if path.exists() and info_path.exists():
        previous, info = PVSet.load(path), json.loads(info_path.read_text(encoding="utf-8"))
        since = PVMiner.loops_since_new_pv(previous, settings.get("seed", 0))
        more_loops = budget["loops"] - info["loops_run"]
        more_patience = budget["patience"] - since
        budget_now = (
            {"loops": more_loops, "patience": more_patience}
            if more_loops >= 1 and more_patience >= 1
            else None
        )
        unprobed = probes and any(
            not (x.get("probed") or x.get("probe_of") is not None) for x in previous.losses
        )
        if budget_now is None and not unprobed:
            return previous, info
    encoder, _, _ = build_model(model, corpus, ctx, verify_sentences, cache=True)
    done = dict(info)
    t0 = time.perf_counter()

    def save(m):  # after every fuzz loop and probe: a killed run keeps its progress and continues it
        nonlocal info
        PVSet.from_miner(m, encoder, m.last_seed_).save(path)  # atomic
        info = {
            "loops_run": done["loops_run"] + m.loops_run_,
            "probes_run": done.get("probes_run", 0) + m.probes_run_,
            "seconds": round(done["seconds"] + time.perf_counter() - t0, 1),
            "loops": max(budget["loops"], done.get("loops", 0)),
            "patience": max(budget["patience"], done.get("patience", 0)),
        }
        write_json_atomic(info_path, {**info, "model": recipe, "search": settings})

    if budget_now is None:  # budget spent: only the antipode probes the kept search never ran
        s = {k: v for k, v in settings.items() if k != "patience"}
        cfg = scan_config(model["target"], {**s, "mode": "search", "stop_at_first": False})
        miner = PVMiner(cfg)
        miner.warm_start(previous)
        miner.probe_antipodes(
            encoder,
            sample(split_corpus(corpus, "defence"), cfg.sentences, cfg.corpus_seed),
            on_loop=save,
            progress=False,
        )
    else:
        miner = mine(
            encoder,
            corpus,
            model["target"],
            {**settings, **budget_now},
            mode="search",
            stop_at_first=False,
            resume=previous,
            on_loop=save,
        )
    pvset = PVSet.from_miner(miner, encoder)  # what the last save wrote
    attack = (model.get("attack") or {}).get("name", "clean")
    ctx.say(
        f"{model['base']}/{attack}: {len(pvset)} PVs found in {info['loops_run']} search loops"
        + (f" and {info.get('probes_run', 0)} antipode probes" if probes else "")
        + (" (continued)" if previous is not None else "")
    )
    return pvset, info
