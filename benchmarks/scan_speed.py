"""PV-mining step time, three ways on the same batches in one process:

* naive: the clean outputs recomputed every step, every position through the last layer;
* full last layer: clean outputs cached, every position through the last layer;
* ours: clean outputs cached, the last layer only for the target row (``Encoder.target_features``).

The ratios are what matter (absolute times depend on the machine and its load). Optionally times a
full detection scan (``--full``: 30 fuzz loops at the default settings).

    python benchmarks/scan_speed.py --model minilm --steps 20 [--full] [--roofline] [--parallel 4]

``--roofline`` counts one fuzz epoch's FLOPs (torch's FlopCounterMode) and measures the fp32 peak of
a 2048x2048 matrix product at the same thread count: their quotient is the least time a clean
scan can take here, whatever the implementation.

``--parallel N`` times N clean fuzz loops of a detection scan twice in one run: in one process with
intra-op threads on every core (``workers=1``), and in one forked one-thread worker per core (the
CLI's default). ``--full`` uses the CLI's default too.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lmsanitator.core.runtime import available_cores, set_threads
from lmsanitator.data import load_corpus, sample, split_corpus
from lmsanitator.models import load_encoder
from lmsanitator.scan import PVMiner, ScanConfig


def time_steps(miner: PVMiner, steps: int) -> float:
    setup = miner.setup_
    prompt = torch.nn.Parameter(setup.init_soft_prompt(0))
    opt = torch.optim.Adam([prompt], lr=1e-3)
    t0 = time.perf_counter()
    for i in range(steps):
        b = setup.batches[i % len(setup.batches)]
        f = setup.z(setup.step_features(b, prompt))
        clean = setup.z(setup.clean_of(b))
        loss = -torch.nn.functional.mse_loss(f, clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def epoch_flops(miner: PVMiner) -> int:
    """Floating-point operations of one fuzz epoch (forward + backward over every batch), as
    torch's FLOP counter sees them (matrix products and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    setup = miner.setup_
    prompt = torch.nn.Parameter(setup.init_soft_prompt(0))
    with FlopCounterMode(display=False) as fc:
        for b in setup.batches:
            f = setup.z(setup.step_features(b, prompt))
            loss = -torch.nn.functional.mse_loss(f, setup.z(b.clean))
            loss.backward()
    return fc.get_total_flops()


def peak_flops(seconds: float = 3.0) -> float:
    """Sustained fp32 FLOP/s of a large matrix product at the current thread count."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return n * 2 * 2048**3 / (time.perf_counter() - t0)


def main() -> None:
    # ~80 lines: the flags, then one optional measurement after another into one JSON line
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--full", action="store_true", help="also time a 30-loop detection scan")
    ap.add_argument(
        "--roofline",
        action="store_true",
        help="also count a fuzz step's FLOPs and give the "
        "least time a 30-loop clean scan can take at this machine's measured matmul peak",
    )
    ap.add_argument(
        "--parallel",
        type=int,
        default=0,
        metavar="N",
        help="also time N fuzz loops with intra-op threads vs one forked worker per core",
    )
    a = ap.parse_args()
    set_threads()
    enc = load_encoder(a.model)
    cfg = ScanConfig(max_length=128)  # the step times in RESULTS.md were measured at 128 tokens
    sents = sample(split_corpus(load_corpus("austen"), "defence"), cfg.sentences, 0)
    ours = PVMiner(cfg)
    ours.prepare(enc, sents)
    naive = PVMiner(cfg)
    naive._recompute_clean = True
    naive.prepare(enc, sents)
    naive.setup_.clean_mean, naive.setup_.clean_std = ours.setup_.clean_mean, ours.setup_.clean_std
    time_steps(ours, 2)  # warm-up
    fast_last = enc._last_bert_layer()
    enc._bert_last = None  # the full pass: every position through the last layer
    t_naive = time_steps(naive, a.steps)
    t_full = time_steps(ours, a.steps)
    enc._bert_last = fast_last
    t_ours = time_steps(ours, a.steps)
    res = {
        "model": a.model,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "steps": a.steps,
        "naive_s_per_step": round(t_naive, 4),
        "full_last_layer_s_per_step": round(t_full, 4),
        "ours_s_per_step": round(t_ours, 4),
        "speedup": round(t_naive / t_ours, 2),
        "target_rows_speedup": round(t_full / t_ours, 2),
        "target_rows_last_layer": fast_last is not None,
        "prepare_s": round(ours.prepare_seconds_, 2),
    }
    if a.roofline:
        fl = epoch_flops(ours)
        steps = len(ours.setup_.batches)
        peak = peak_flops()
        clean_scan = fl * cfg.epochs * 30  # a clean model's loops run every epoch (no PV to stop at)
        res.update(
            step_gflop=round(fl / steps / 1e9, 2),
            peak_gflops=round(peak / 1e9, 1),
            step_gflops_achieved=round(fl / steps / t_ours / 1e9, 1),
            clean_scan_tflop=round(clean_scan / 1e12, 1),
            clean_scan_floor_s=round(clean_scan / peak, 1),
        )
    if a.parallel:
        cores = available_cores()
        secs = {}
        for workers in (1, cores):
            m = PVMiner(ScanConfig(loops=a.parallel, workers=workers, max_length=64)).fit(
                enc, sents, progress=False
            )
            secs[workers] = m.seconds_
            res[f"loops_{a.parallel}_workers_{workers}_s"] = round(m.seconds_, 1)
        res["parallel_speedup"] = round(secs[1] / secs[cores], 2)
    if a.full:
        t0 = time.perf_counter()
        m = PVMiner(ScanConfig(loops=30, workers=available_cores(), max_length=64)).fit(
            enc, sents, progress=False
        )
        res.update(
            full_scan_s=round(time.perf_counter() - t0, 1),
            verdict=m.report_["verdict"],
            loops_run=m.report_["loops_run"],
            workers=m.report_["workers"],
        )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
