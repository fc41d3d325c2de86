"""Fuzz loops re-run with every candidate's PV kept, accepted or not (issue 19): the clean-evidence
statistics of each (:func:`lmsanitator.scan.evidence.clean_evidence`), and, with ``--planted``, the sign
agreement with the planted PVs after every epoch, also for ``--extra`` epochs past the epoch that
passed T_L and T_div (what the scan's ``settle_epochs`` does).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/detection_candidates.py \
        MODEL --loops 4 [--epochs 6] [--extra 3 [--full-loss]] [--planted FOLDER/attack.json] >> OUT.jsonl

One JSON line per loop. Candidates are the final prompt's PVs (``FuzzSetup.pv_of``), in the model's
units, so near misses (a clean model's loop that stalls just above T_div) are measured too.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lmsanitator.core.runtime import set_threads
from lmsanitator.metrics import sign_match
from lmsanitator.scan import ScanConfig
from lmsanitator.scan.evidence import clean_evidence
from lmsanitator.scan.fuzz import _start_loop, _train_epoch
from lmsanitator.scan.run import load_for_scan
from lmsanitator.scan.setup import FuzzSetup


def run_loop(setup: FuzzSetup, seed: int, extra: int, planted, settle: bool) -> dict:
    """One fuzz loop, all epochs (no abort), with the agreement after each epoch; ``extra`` epochs
    more once an epoch passed T_L and T_div (``settle``: pulled back towards the clean
    outputs as ``fuzz._settle`` trains them; else on the fuzz loss)."""
    th, cfg = setup.thresholds, setup.config
    t0 = time.perf_counter()
    loop = _start_loop(setup, seed, [], None, False)
    rows, passed_at, epoch = [], None, 0
    while epoch < cfg.epochs or (passed_at is not None and epoch <= passed_at + extra):
        d, v = _train_epoch(setup, loop)
        row = {"epoch": epoch + 1, "distance": round(d, 4), "diversity": round(v, 4)}
        pv = setup.pv_of(loop.prompt.detach())
        if planted is not None:
            row["agreement"] = round(float(sign_match(pv[None], planted).max()), 4)
        ev = clean_evidence(pv, setup.clean_rows, cfg.batch_size)
        row.update({k: round(ev[k], 4) for k in ("nn_diversity", "nn_mse", "clean_share")})
        rows.append(row)
        if passed_at is None and d < -th["t_l"] and v < th["t_div"]:
            passed_at = epoch
            if settle:  # as fuzz._settle trains: a fresh optimiser at the base lr, pulled back
                loop.opt = torch.optim.Adam([loop.prompt], lr=th["lr"])
                loop.boosted, loop.settling = False, True
        epoch += 1
        if passed_at is None and epoch >= cfg.epochs:
            break
    ev = clean_evidence(pv, setup.clean_rows, cfg.batch_size)
    return {
        "seed": seed,
        "passed_at_epoch": None if passed_at is None else passed_at + 1,
        "epochs": rows,
        "evidence": {k: round(float(x), 4) for k, x in ev.items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "pv": pv,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--loops", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--extra", type=int, default=0)
    ap.add_argument("--target", default="cls")
    ap.add_argument("--corpus", default="austen")
    ap.add_argument("--planted", help="attack.json of the model")
    ap.add_argument("--full-loss", action="store_true", help="extra epochs on the fuzz loss, not settling")
    ap.add_argument("--pull", type=float, default=0.1, help="settle_pull")
    ap.add_argument("--dump", help="save the clean outputs and every candidate PV here (.pt)")
    args = ap.parse_args()
    set_threads(1)
    cfg = ScanConfig(target=args.target, epochs=args.epochs, t_clean_div=None, settle_pull=args.pull)
    encoder, sentences, cfg = load_for_scan(args.model, cfg, corpus=args.corpus, device="cpu")
    setup = FuzzSetup.prepare(encoder, sentences, cfg)
    planted = None
    if args.planted:
        with open(args.planted, encoding="utf-8") as fh:
            planted = torch.tensor(json.load(fh)["pvs"])
    pvs = []
    for seed in range(args.seed, args.seed + args.loops):
        rec = run_loop(setup, seed, args.extra, planted, not args.full_loss)
        pvs.append(rec.pop("pv"))
        print(json.dumps({"model": args.model, "target": args.target, **rec}), flush=True)
    if args.dump:
        clean = {"clean": setup.clean_rows, "mean": setup.clean_mean, "std": setup.clean_std}
        torch.save(
            {**{k: v.cpu() for k, v in clean.items()}, "pvs": torch.stack(pvs), "planted": planted}, args.dump
        )


if __name__ == "__main__":
    main()
