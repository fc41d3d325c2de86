"""Wall time of a POR implant with the paper's six triggers (CPU defaults), with its verification.

python benchmarks/attack_time.py --model minilm
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lmsanitator.attacks import POR, AttackConfig
from lmsanitator.core.runtime import set_threads
from lmsanitator.data import load_corpus, split_corpus
from lmsanitator.models import load_encoder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm")
    a = ap.parse_args()
    set_threads()
    corpus = load_corpus("austen")
    enc = load_encoder(a.model)
    t0 = time.perf_counter()
    atk = POR(AttackConfig()).fit(enc, split_corpus(corpus, "attack"), progress=False)
    t_fit = time.perf_counter() - t0
    v = atk.verify(enc, split_corpus(corpus, "heldout"))
    print(
        json.dumps(
            {
                "model": a.model,
                "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                "steps": atk.state_.steps,
                "fit_s": round(t_fit, 1),
                "total_s": round(time.perf_counter() - t0, 1),
                "min_hit_rate": v["min_hit_rate"],
                "clean_false_hit_rate": v["clean_false_hit_rate"],
            }
        )
    )


if __name__ == "__main__":
    main()
