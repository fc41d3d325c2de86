"""Per-epoch distance and diversity of fuzz loops run with no abort check (the detection scan's
settings otherwise), one JSON line per loop. Used to ask whether clean loops could be abandoned
earlier than backdoored ones (benchmarks/RESULTS.md, "where a clean scan's time goes").

    python benchmarks/fuzz_trajectories.py OUT.jsonl MODEL:LOOPS:TARGET [MODEL:LOOPS:TARGET ...]
    e.g. python benchmarks/fuzz_trajectories.py traj.jsonl minilm:6:cls runs/por-minilm:8:cls

Each model stops at its first legit PV (or after LOOPS loops).
"""

from __future__ import annotations

import json
import sys
import time

from lmsanitator.data import load_corpus
from lmsanitator.experiments.recipes import mine
from lmsanitator.models import load_encoder


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    corpus = load_corpus("austen")
    with open(argv[0], "a", encoding="utf-8") as out:
        for spec in argv[1:]:
            path, loops, target = spec.rsplit(":", 2)
            enc = load_encoder(path)
            t = time.perf_counter()
            scan = {
                "loops": int(loops),
                "sentences": 320,
                "epochs": 6,
                "abort_epoch": 5,
                "batch_size": 32,
                "seed": 0,
                "corpus_seed": 0,
            }  # abort_epoch = last epoch: never abandoned early
            m = mine(enc, corpus, target, scan)
            for c in m.candidates_:
                out.write(
                    json.dumps(
                        {
                            "model": path,
                            "seed": c.seed,
                            "accepted": c.accepted,
                            "distance": c.distance,
                            "diversity": c.diversity,
                            "seconds": round(c.seconds, 1),
                        }
                    )
                    + "\n"
                )
            out.flush()
            print(
                f"{path}: {len(m.candidates_)} loops, {len(m.pvs_)} PV(s), {time.perf_counter() - t:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
