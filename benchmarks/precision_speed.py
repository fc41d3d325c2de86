"""Fuzz-step time in float32 vs bf16 autocast, and how far bf16 moves the scan's losses.

The CPU here has AMX / avx512_bf16; a decoder step costs several times a MiniLM step (issue 21).
bf16 only helps the scan if it keeps its verdicts: the collapse test decides on a margin of
``DIV_MARGIN`` (0.0197 nats) between the diversity loss and a full collapse, so the figure that
matters beside the speed-up is the largest change bf16 makes to the diversity (and distance) loss of
the same step. Rounds alternate the two precisions on the same batches and soft prompts (load moves
both alike); one JSON line:

    python benchmarks/precision_speed.py --model smollm2 --steps 6 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lmsanitator.core.runtime import set_threads
from lmsanitator.data import load_corpus, sample, split_corpus
from lmsanitator.metrics import batch_entropy
from lmsanitator.models import load_encoder
from lmsanitator.scan import PVMiner, ScanConfig
from lmsanitator.scan.config import DIV_MARGIN


def steps(setup, prompt: torch.Tensor, n: int, bf16: bool) -> tuple[float, list[tuple[float, float]]]:
    """Seconds per step (forward + input-gradient backward) and each step's (distance, diversity)."""
    losses = []
    t0 = time.perf_counter()
    for i in range(n):
        b = setup.batches[i % len(setup.batches)]
        p = prompt.detach().clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            f = setup.step_features(b, p)
        f = f.float()
        z = setup.z(f)
        l_d = -torch.nn.functional.mse_loss(z, setup.z(setup.clean_of(b)))
        l_div = -batch_entropy(setup.diversity_rows(z, b))
        (l_d + l_div).backward()
        losses.append((float(l_d.detach()), float(l_div.detach())))
    return (time.perf_counter() - t0) / n, losses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--target", default=None, help="read-out (default: the model's own, last for decoders)")
    a = ap.parse_args()
    set_threads()
    enc = load_encoder(a.model)
    target = a.target or ("last" if enc.is_decoder else "cls")
    cfg = ScanConfig(max_length=64, target=target)
    sents = sample(split_corpus(load_corpus("austen"), "defence"), cfg.sentences, 0)
    miner = PVMiner(cfg)
    miner.prepare(enc, sents)
    setup = miner.setup_
    prompt = setup.init_soft_prompt(0)
    steps(setup, prompt, 1, False)  # warm-up, both paths
    steps(setup, prompt, 1, True)
    secs = {False: [], True: []}
    ref, dev_d, dev_div = None, 0.0, 0.0
    for _ in range(a.rounds):
        for bf16 in (False, True):
            s, losses = steps(setup, prompt, a.steps, bf16)
            secs[bf16].append(s)
            if not bf16:
                ref = losses
            else:
                dev_d = max(dev_d, *(abs(x[0] - y[0]) for x, y in zip(losses, ref)))
                dev_div = max(dev_div, *(abs(x[1] - y[1]) for x, y in zip(losses, ref)))
    fp32, bf16 = min(secs[False]), min(secs[True])
    print(
        json.dumps(
            {
                "model": a.model,
                "target": cfg.target,
                "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
                "steps_per_round": a.steps,
                "rounds": a.rounds,
                "fp32_s_per_step": round(fp32, 4),
                "bf16_s_per_step": round(bf16, 4),
                "bf16_speedup": round(fp32 / bf16, 2),
                "max_abs_change_distance": round(dev_d, 5),
                "max_abs_change_diversity": round(dev_div, 5),
                "collapse_margin": DIV_MARGIN,
                "prepare_s": round(miner.prepare_seconds_, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
