"""Guard speed, measured in one run on one machine:

1. overhead of the guard on clean inputs vs the unguarded tuned model (``TunedModel.predict``), at
   batch 1 and batch 32 (A/B interleaved, median of rounds);
2. trigger removal on triggered inputs: batched with the saliency order (the guard's default) and
   in reading order, vs the paper's sequential loop (one candidate per forward pass); candidates
   scored, and how often each removed exactly the trigger; p50 / p99 seconds per flagged input
   purged alone within the guard's budget;
3. requests per second of ``lmsanitator serve`` on loopback (a real server process, httpx client).

    python benchmarks/guard_speed.py --adapter DIR --pvs PVSET --task tweets-binary \
        --trigger cf,mn,tq [--n 64] [--rounds 7] [--no-service]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from lmsanitator.core.runtime import set_threads
from lmsanitator.data.tasks import load_task
from lmsanitator.data.triggers import insert_trigger
from lmsanitator.guard import Guard, purge, purge_sequential
from lmsanitator.guard.purge import to_fields
from lmsanitator.guard.speed import ab_overhead


def purge_speed(guard: Guard, texts: list[str], triggers: list[str], w_max: int) -> dict:
    """Trigger removal on the flagged triggered inputs, three ways in one run: batched with the
    saliency order (the guard's default), batched in reading order, and the paper's sequential
    loop. Each trigger at a seeded random word position of every text."""
    rng = random.Random(0)
    trig, words = [], []
    for trigger in triggers:
        for t in texts:
            trig.append(insert_trigger(t, trigger, rng))
            words.append(trigger.split())
    recs = guard.predict(trig)
    keep = [i for i, r in enumerate(recs) if r["flagged"]]
    flagged = [to_fields(trig[i]) for i in keep]
    want = [words[i] for i in keep]
    if not flagged:
        return {"flagged": 0}
    out = {"flagged": len(flagged), "triggers": triggers}
    runs = {}
    for name, fn in (
        ("saliency", lambda xs: purge(guard.model, guard.monitor, xs, w_max, order="saliency")),
        ("reading", lambda xs: purge(guard.model, guard.monitor, xs, w_max, order="reading")),
        ("sequential", lambda xs: purge_sequential(guard.model, guard.monitor, xs, w_max)),
    ):
        fn(flagged[:4])  # warm-up (first autograd pass, allocator), not timed
        t0 = time.perf_counter()
        runs[name] = fn(flagged)
        out[f"{name}_s"] = round(time.perf_counter() - t0, 3)
        out[f"{name}_candidates"] = sum(x.candidates for x in runs[name])
        out[f"{name}_trigger_removed"] = round(
            sum(x.removed == w for x, w in zip(runs[name], want)) / len(want), 4
        )
        out[f"{name}_resolved"] = round(sum(x.resolved for x in runs[name]) / len(want), 4)
    out.update(per_input_latency(guard, flagged))
    for name in ("saliency", "reading"):
        out[f"{name}_speedup"] = round(out["sequential_s"] / out[f"{name}_s"], 2)
        same = sum(
            (x.removed, x.fields) == (y.removed, y.fields) for x, y in zip(runs[name], runs["sequential"])
        )
        out[f"{name}_same_as_sequential"] = f"{same}/{len(flagged)}"
    return out


def per_input_latency(guard: Guard, flagged: list) -> dict:
    """Trigger removal of each flagged input alone, as the guard runs it (its order and budget):
    p50 / p99 / max seconds per input, and how many the budget stopped."""
    cfg = guard.config
    times, budget = [], 0
    for x in flagged:
        t0 = time.perf_counter()
        (r,) = purge(
            guard.model,
            guard.monitor,
            [x],
            cfg.w_max,
            order=cfg.purge_order,
            max_candidates=cfg.max_candidates,
            max_seconds=cfg.max_seconds,
            max_words=cfg.max_words,
            grow_margin=cfg.grow_margin,
        )
        times.append(time.perf_counter() - t0)
        budget += r.reason == "budget"
    times.sort()
    return {
        "per_input_p50_s": round(times[len(times) // 2], 4),
        "per_input_p99_s": round(times[min(len(times) - 1, int(0.99 * len(times)))], 4),
        "per_input_max_s": round(times[-1], 4),
        "per_input_budget_stopped": budget,
    }


def service_rps(adapter: str, pvs: str, texts: list[str], batch: int, requests: int, workers: int) -> dict:
    import httpx

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    exe = Path(sys.executable).with_name("lmsanitator")
    proc = subprocess.Popen(
        [str(exe), "serve", "--adapter", adapter, "--pvs", pvs, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        bodies = [
            {"inputs": [{"text": t} for t in texts[(i * batch) % len(texts) :][:batch] or texts[:batch]]}
            for i in range(requests)
        ]
        with httpx.Client(timeout=120) as c:
            c.post(f"{url}/predict", json=bodies[0])  # warm-up

            def one(body):
                r = c.post(f"{url}/predict", json=body)
                r.raise_for_status()
                return len(r.json()["results"])

            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as ex:
                n = sum(ex.map(one, bodies))
            dt = time.perf_counter() - t0
        return {
            "batch": batch,
            "requests": requests,
            "workers": workers,
            "seconds": round(dt, 3),
            "requests_per_s": round(requests / dt, 2),
            "inputs_per_s": round(n / dt, 1),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:  # long: options, the three measurements, then their one-line summaries
    ap = argparse.ArgumentParser()
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--pvs", required=True)
    ap.add_argument("--task", required=True)
    ap.add_argument(
        "--trigger", required=True, help="comma-separated triggers, each inserted into every text"
    )
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--w-max", type=int, default=3)
    ap.add_argument(
        "--calibrate",
        type=int,
        default=300,
        metavar="N",
        help="calibrate per-PV thresholds on the first N validation texts, as `evaluate guard` does (0: off)",
    )
    ap.add_argument("--no-service", action="store_true")
    ap.add_argument("--no-purge", action="store_true")
    a = ap.parse_args()
    set_threads()
    guard = Guard(a.adapter, a.pvs, w_max=a.w_max)
    task = load_task(a.task)
    if a.calibrate:
        guard.calibrate([e.text for e in task.validation[: a.calibrate]])
    texts = [e.text for e in task.test[: a.n]]
    res = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "adapter": a.adapter,
        "task": a.task,
        "n": len(texts),
        "calibration": guard.calibration,
    }
    res["overhead"] = [
        ab_overhead(guard, texts, 1, max(1, a.rounds // 2)),
        ab_overhead(guard, texts, 32, a.rounds),
    ]
    res["trigger_removal"] = {} if a.no_purge else purge_speed(guard, texts, a.trigger.split(","), a.w_max)
    if not a.no_service:
        res["service"] = [
            service_rps(a.adapter, a.pvs, texts, 1, 64, 4),
            service_rps(a.adapter, a.pvs, texts, 32, 16, 4),
        ]
    print(json.dumps(res, indent=2))
    for o in res["overhead"]:
        print(
            f"guard overhead at batch {o['batch']}: {100 * o['overhead']:+.1f}% "
            f"({o['guarded_s']:.3f} s vs {o['unguarded_s']:.3f} s for {o['inputs']} inputs); "
            f"full guard.predict {o['guard_predict_s']:.3f} s with {o['clean_flagged']} clean input(s) "
            "flagged and purged",
            file=sys.stderr,
        )
    t = res["trigger_removal"]
    if t.get("flagged"):
        print(
            f"trigger removal on {t['flagged']} flagged inputs: sequential {t['sequential_s']} s "
            f"({t['sequential_candidates']} candidates); batched, saliency order {t['saliency_s']} s "
            f"({t['saliency_candidates']}) -> {t['saliency_speedup']}x, trigger removed "
            f"{t['saliency_trigger_removed']}; batched, reading order {t['reading_s']} s "
            f"({t['reading_candidates']}) -> {t['reading_speedup']}x; per input p99 {t['per_input_p99_s']} s",
            file=sys.stderr,
        )
    for s in res.get("service", []):
        print(
            f"service: {s['requests_per_s']} requests/s at batch {s['batch']} ({s['inputs_per_s']} inputs/s, "
            f"{s['workers']} concurrent clients)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
