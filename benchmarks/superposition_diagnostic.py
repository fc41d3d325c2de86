"""Diagnostic with attacker knowledge (the planted PVs), not a defence: do superposition PVs hide
a planted PV from the search by steering the path loss?

Continues a kept search-mode PV set on fresh fuzz seeds twice: with all its PVs (``keep``) and
without the PVs that match no planted PV at >= 0.9 of signs (``drop``); prints each loop and the
agreement of any new PV with the planted ones (benchmarks/RESULTS.md, pv-search session 12).

    python benchmarks/superposition_diagnostic.py keep|drop MODEL_DIR PVSET FIRST_SEED LOOPS
    (MODEL_DIR: a model built by the experiments, whose built.json holds the planted PVs)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from lmsanitator.data import load_corpus, sample, split_corpus
from lmsanitator.data.pvset import PVSet
from lmsanitator.experiments.recipes import scan_config
from lmsanitator.experiments.search import SEARCH_SETTINGS
from lmsanitator.metrics import sign_match
from lmsanitator.models import load_encoder
from lmsanitator.scan import PVMiner


def main(mode: str, model_dir: str, pvset: str, start: int, loops: int) -> None:
    planted = torch.tensor(json.loads((Path(model_dir) / "built.json").read_text())["planted"])
    kept = PVSet.load(pvset)
    best = sign_match(kept.pvs.float(), planted).max(dim=1).values
    keep = [i for i in range(len(kept)) if not (mode == "drop" and best[i] < 0.9)]
    subset = PVSet(
        pvs=kept.pvs[keep],
        target=kept.target,
        seeds=[kept.seeds[i] for i in keep],
        losses=[kept.losses[i] for i in keep],
        last_seed=start - 1,
    )
    miner = PVMiner(
        scan_config(
            kept.target, {**SEARCH_SETTINGS, "loops": loops, "mode": "search", "stop_at_first": False}
        )
    )
    miner.warm_start(subset)
    n0 = len(miner.pvs_)
    sentences = sample(split_corpus(load_corpus("austen"), "defence"), miner.config.sentences, 0)
    miner.fit(
        load_encoder(model_dir),
        sentences,
        start_seed=start,
        progress=False,
        on_loop=lambda m: print(
            m.candidates_[-1].seed, m.candidates_[-1].accepted, m.candidates_[-1].reason[:80], flush=True
        ),
    )
    new = miner.pvs_[n0:]
    print(f"{mode}: {n0} PVs kept, {len(new)} new; agreement of new PVs with the planted ones:")
    if new:
        print(sign_match(torch.stack(new).float(), planted).numpy().round(3))


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] not in ("keep", "drop"):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
