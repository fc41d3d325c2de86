"""Guard overhead on clean inputs vs the unguarded tuned model, A/B interleaved (median of rounds).

Shared by ``benchmarks/guard_speed.py`` and ``lmsanitator experiment monitor-overhead``.
"""

from __future__ import annotations

import statistics
import time


def ab_overhead(guard, texts: list[str], batch: int, rounds: int) -> dict:
    model = guard.model
    chunks = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    plain, guarded = [], []
    guard.predict(chunks[0])  # warm-up
    model.predict(chunks[0], batch_size=batch)
    full = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for c in chunks:
            model.predict(c, batch_size=batch)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for c in chunks:  # the monitor path every clean input takes: same pass + sign match + flag
            _, m = guard.monitor_batch(c)
            guard.monitor.flag(m)
        guarded.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    flagged = sum(
        r["flagged"] for c in chunks for r in guard.predict(c)
    )  # incl. purging flagged clean inputs
    full.append(time.perf_counter() - t0)
    p, g = statistics.median(plain), statistics.median(guarded)
    return {
        "batch": batch,
        "inputs": len(texts),
        "unguarded_s": round(p, 4),
        "guarded_s": round(g, 4),
        "overhead": round(g / p - 1, 4),
        "guard_predict_s": round(full[0], 4),
        "clean_flagged": flagged,
    }
