"""A bounded load test of the guard service: N clients post for a fixed time, then it stops by itself
and reports requests/s, p50 / p99 latency and errors, with clean and flagged traffic mixed.

    # against a running `lmsanitator serve`:
    python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 8 --duration 20 --trigger cf
    # or let it start one (the guard's own defaults; --t-match as for `lmsanitator guard`):
    python benchmarks/load_test.py --adapter DIR --pvs PVSET --clients 4 --duration 10 --trigger zebra

Flagged traffic is the clean texts with ``--trigger`` inserted (``--flagged-share`` of the requests,
seeded); whether the service flagged them is counted from its answers. Each request carries
``--batch`` inputs. 503 (busy) and 504 (deadline) answers count as errors, by status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time

import httpx

from lmsanitator.data.triggers import insert_trigger

CLEAN = [
    "the film was a quiet delight from start to finish",
    "a dull plot and wooden acting made the evening drag",
    "i would watch it again with friends on a rainy day",
    "the music carried scenes that the script could not",
    "nothing in this story surprised me at all",
    "an honest and warm portrait of a small town",
]

SERVER = """
import sys
from lmsanitator.guard import Guard, GuardConfig
from lmsanitator.guard.service import serve
adapter, pvs, port, t_match = sys.argv[1:5]
serve(Guard(adapter, pvs, GuardConfig(t_match=float(t_match))), "127.0.0.1", int(port))
"""


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def _client(c: httpx.AsyncClient, url: str, bodies, rng: random.Random, stop: float, share: float, out):
    while time.monotonic() < stop:
        kind = "flagged" if rng.random() < share else "clean"
        t0 = time.perf_counter()
        try:
            r = await c.post(f"{url}/predict", json=rng.choice(bodies[kind]))
            status = r.status_code
            flagged = sum(x["flagged"] for x in r.json()["results"]) if status == 200 else 0
        except httpx.HTTPError as exc:
            status, flagged = type(exc).__name__, 0
        out.append((kind, status, time.perf_counter() - t0, flagged))


async def run_load(
    url: str, clients: int, duration: float, batch: int, share: float, trigger: str, seed: int
):
    rng = random.Random(seed)
    clean = [{"inputs": [{"text": rng.choice(CLEAN)} for _ in range(batch)]} for _ in range(32)]
    flagged = [
        {"inputs": [{"text": insert_trigger(rng.choice(CLEAN), trigger, rng)} for _ in range(batch)]}
        for _ in range(32)
    ]
    bodies = {"clean": clean, "flagged": flagged}
    out: list = []
    async with httpx.AsyncClient(timeout=60) as c:
        await c.post(f"{url}/predict", json=clean[0])  # warm-up, not counted
        stop = time.monotonic() + duration
        t0 = time.perf_counter()
        await asyncio.gather(
            *(_client(c, url, bodies, random.Random(seed + k), stop, share, out) for k in range(clients))
        )
        wall = time.perf_counter() - t0
    return summarize(out, wall, clients, batch, share)


def summarize(out: list, wall: float, clients: int, batch: int, share: float) -> dict:
    ok = [x for x in out if x[1] == 200]
    errors: dict = {}
    for x in out:
        if x[1] != 200:
            errors[str(x[1])] = errors.get(str(x[1]), 0) + 1
    res = {
        "clients": clients,
        "batch": batch,
        "flagged_share": share,
        "seconds": round(wall, 2),
        "requests": len(out),
        "requests_per_s": round(len(out) / wall, 2),
        "ok_per_s": round(len(ok) / wall, 2),
        "errors": errors,
    }
    for kind in ("clean", "flagged"):
        lat = [x[2] for x in ok if x[0] == kind]
        res[kind] = {
            "ok": len(lat),
            "p50_ms": round(1000 * _percentile(lat, 0.5), 1),
            "p99_ms": round(1000 * _percentile(lat, 0.99), 1),
            "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else float("nan"),
            "inputs_flagged": sum(x[3] for x in ok if x[0] == kind),
        }
    lat = [x[2] for x in ok]
    res["p50_ms"] = round(1000 * _percentile(lat, 0.5), 1)
    res["p99_ms"] = round(1000 * _percentile(lat, 0.99), 1)
    return res


def _start(adapter: str, pvs: str, t_match: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, adapter, pvs, str(port), str(t_match)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit("the server exited before it answered")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not come up in 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running service")
    where.add_argument("--adapter", help="start a service on this tuned model (with --pvs)")
    ap.add_argument("--pvs")
    ap.add_argument("--t-match", type=float, default=0.8, help="for a service this script starts")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of load (then it stops)")
    ap.add_argument("--batch", type=int, default=1, help="inputs per request")
    ap.add_argument("--flagged-share", type=float, default=0.3)
    ap.add_argument("--trigger", default="cf", help="inserted into the flagged traffic")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.adapter and not a.pvs:
        ap.error("--adapter needs --pvs")
    if not (a.clients >= 1 and 0 < a.duration <= 3600 and a.batch >= 1 and 0 <= a.flagged_share <= 1):
        ap.error("--clients >= 1, 0 < --duration <= 3600, --batch >= 1, 0 <= --flagged-share <= 1")
    proc, url = _start(a.adapter, a.pvs, a.t_match) if a.adapter else (None, a.url)
    try:
        res = asyncio.run(run_load(url, a.clients, a.duration, a.batch, a.flagged_share, a.trigger, a.seed))
        res["health"] = {
            k: v for k, v in httpx.get(f"{url}/health").json().items() if k in ("requests", "rejected")
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(res, indent=2))
    print(
        f"{res['requests_per_s']} requests/s ({a.clients} clients, batch {a.batch}); latency p50 "
        f"{res['p50_ms']} ms, p99 {res['p99_ms']} ms; clean p99 {res['clean']['p99_ms']} ms, flagged p99 "
        f"{res['flagged']['p99_ms']} ms ({res['flagged']['inputs_flagged']} inputs flagged); "
        f"errors {res['errors']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
