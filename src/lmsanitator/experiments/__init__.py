"""``lmsanitator experiment NAME``: the papers' experiments on the bundled models.

Each experiment writes ``results.json`` (every number, the full configuration, versions, seeds,
machine), ``table.md`` laid out like the paper's table and PNG plots where the paper has figures.
"""

from __future__ import annotations

import importlib

from lmsanitator.core.errors import LMSanitatorError
from lmsanitator.experiments.base import Context, Experiment, provenance, run_experiment

# name -> "module:Class" (imported on use, so the CLI starts fast)
EXPERIMENTS: dict[str, str] = {
    "detection": "lmsanitator.experiments.detection:Detection",
    "pv-search": "lmsanitator.experiments.pv_search:PVSearch",
    "ablation": "lmsanitator.experiments.ablation:Ablation",
    "attack-defense": "lmsanitator.experiments.attack_defense:AttackDefense",
    "adaptive": "lmsanitator.experiments.adaptive:Adaptive",
    "monitor-overhead": "lmsanitator.experiments.monitor_overhead:MonitorOverhead",
    "psim": "lmsanitator.experiments.psim:PSIMExperiment",
    "psim-llama": "lmsanitator.experiments.psim:PSIMDecoderExperiment",
    "onion-compare": "lmsanitator.experiments.onion_compare:OnionCompare",
    "dataset-size": "lmsanitator.experiments.dataset_size:DatasetSize",
}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise LMSanitatorError(f"unknown experiment '{name}': choose one of {', '.join(EXPERIMENTS)}")
    mod, cls = EXPERIMENTS[name].split(":")
    return getattr(importlib.import_module(mod), cls)()


__all__ = ["EXPERIMENTS", "Context", "Experiment", "get_experiment", "provenance", "run_experiment"]
