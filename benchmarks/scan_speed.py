"""PV-mining step time: cached clean outputs (ours) vs recomputing them every step (naive).

Both variants run the same fuzz steps on the same batches in one process; the ratio is what
matters (absolute times depend on the machine and its load). Optionally times a full detection
scan (``--full``: 30 fuzz loops at the default settings).

    python benchmarks/scan_speed.py --model minilm --steps 20 [--full]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lmsanitator.data import load_corpus, sample, split_corpus
from lmsanitator.models import load_encoder, set_threads
from lmsanitator.scan import PVMiner, ScanConfig


def time_steps(miner: PVMiner, steps: int) -> float:
    prompt = torch.nn.Parameter(miner.init_prompt(0))
    opt = torch.optim.Adam([prompt], lr=1e-3)
    t0 = time.perf_counter()
    for i in range(steps):
        b = miner.batches[i % len(miner.batches)]
        f = miner.z(miner.step_features(b, prompt))
        clean = miner.z(b.clean if b.clean is not None else miner._clean_features(b))
        loss = -torch.nn.functional.mse_loss(f, clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--full", action="store_true", help="also time a 30-loop detection scan")
    a = ap.parse_args()
    set_threads()
    enc = load_encoder(a.model)
    cfg = ScanConfig()
    sents = sample(split_corpus(load_corpus("austen"), "defence"), cfg.sentences, 0)
    ours = PVMiner(cfg)
    ours.prepare(enc, sents)
    naive = PVMiner(cfg)
    naive._recompute_clean = True
    naive.prepare(enc, sents)
    naive.mu, naive.sigma = ours.mu, ours.sigma
    time_steps(ours, 2)  # warm-up
    t_naive = time_steps(naive, a.steps)
    t_ours = time_steps(ours, a.steps)
    res = {"model": a.model, "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
           "steps": a.steps, "naive_s_per_step": round(t_naive, 4), "ours_s_per_step": round(t_ours, 4),
           "speedup": round(t_naive / t_ours, 2), "prepare_s": round(ours.prep_seconds, 2)}
    if a.full:
        t0 = time.perf_counter()
        m = PVMiner(ScanConfig(loops=30)).fit(enc, sents, progress=False)
        res.update(full_scan_s=round(time.perf_counter() - t0, 1), verdict=m.report_["verdict"],
                   loops_run=m.report_["loops_run"])
    print(json.dumps(res))


if __name__ == "__main__":
    main()
