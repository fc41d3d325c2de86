"""PSIM's threshold rules and its self-check.

Default rule (``PSIMConfig.gamma`` unset): gamma is the clean *validation* confidence at a stated
false-rejection rate (``PSIMConfig.frr``, 1%): the smallest threshold that flags at most that share
of held-out clean inputs. Why not the paper's fixed 0.7: how far random-label training pulls clean
confidences towards 1/K depends on the model, the data and the training length (measured clean
p99 from 0.52 to 0.96 in ``benchmarks/psim_results.md``), so a fixed gamma either rejects a third
of the clean inputs or lets the backdoor through; a quantile of the clean distribution keeps the
false rejections where they were stated, whatever that spread. :func:`default_gamma` (the paper's
0.7 for K = 2) is only the fallback when there is no validation input.

Self-check (:func:`self_check`): PSIM protects nothing when the random-label training flattened
the module (every clean confidence within a hair of 1/K: measured, a backdoor's confidence goes
down with it) or when it did not take (clean inputs as confident as poisoned ones would be).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lmsanitator.core.errors import LMSanitatorError

GAMMA_SHARE = 0.4  # gamma_K = 1/K + GAMMA_SHARE * (1 - 1/K): 0.7 for K = 2 (the paper), 0.6 for K = 3
DEFAULT_FRR = 0.01  # false-rejection rate of the default gamma rule
# clean p99 within this share of the way from 1/K to 1: the module is flat (measured collapses, K = 2:
# p99 0.528 / 0.522, poisoned median 0.56 / 0.51; healthy modules: p99 0.8-0.95)
FLAT_SHARE = 0.1
SATURATED_GAMMA = 0.995  # gamma above this: no room left for a poisoned input's confidence


class PSIMWarning(UserWarning):
    """PSIM's self-check found a module that is unlikely to flag poisoned inputs."""


def default_gamma(num_labels: int) -> float:
    """The paper's threshold generalised to K classes: 40% of the way from chance (1/K) to certainty.

    K = 2 gives the paper's 0.7; K = 3 gives 0.6; K = 6 gives 0.5.
    """
    if num_labels < 2:
        raise LMSanitatorError(f"PSIM needs at least 2 classes, got {num_labels}")
    return round(1.0 / num_labels + GAMMA_SHARE * (1.0 - 1.0 / num_labels), 6)


def calibrate_gamma(confidences: Sequence[float], frr: float) -> float:
    """The smallest threshold that flags at most a share ``frr`` of these clean confidences."""
    if not 0.0 <= frr < 1.0:
        raise LMSanitatorError(f"false-rejection rate must be in [0, 1), got {frr}")
    c = np.sort(np.asarray(confidences, dtype=np.float64))
    if c.size == 0:
        raise LMSanitatorError("no clean inputs to calibrate gamma on")
    k = int(math.ceil((1.0 - frr) * c.size)) - 1  # inputs strictly above c[k] are at most frr of all
    return float(c[max(k, 0)])


def confidence_stats(x: np.ndarray) -> dict:
    """The spread of a set of confidences (what psim.json reports for the clean validation inputs)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {"n": 0}
    q = np.quantile(x, [0.5, 0.9, 0.99])
    return {
        "mean": round(float(x.mean()), 4),
        "std": round(float(x.std()), 4),
        "min": round(float(x.min()), 4),
        "median": round(float(q[0]), 4),
        "p90": round(float(q[1]), 4),
        "p99": round(float(q[2]), 4),
        "max": round(float(x.max()), 4),
        "n": int(x.size),
    }


def self_check(stats: dict, gamma: float, num_labels: int, frr: float | None) -> list[str]:
    """Warnings (one line each) when the module is unlikely to flag poisoned inputs; [] when fine.

    ``stats``: :func:`confidence_stats` of the clean validation inputs; ``frr``: the rate gamma was
    calibrated at (None: gamma was given or fell back to the paper's rule)."""
    chance = 1.0 / num_labels
    n = stats.get("n", 0)
    out = []
    if n == 0:
        out.append("no clean validation inputs: the confidence spread and gamma are unchecked")
        return out
    if stats["p99"] - chance < FLAT_SHARE * (1.0 - chance):
        out.append(
            f"PSIM learned nothing usable: 99% of the clean validation confidences are within "
            f"{stats['p99'] - chance:.3f} of chance 1/K = {chance:.3f} (max {stats['max']:.3f}, gamma "
            f"{gamma:.4f}); the random-label training flattened the module, and measured, a backdoor's "
            "confidence with it - train fewer steps (train_examples) or at a lower lr"
        )
    if gamma > SATURATED_GAMMA:
        out.append(
            f"PSIM stays confident on clean inputs (gamma {gamma:.4f}, clean median "
            f"{stats['median']:.3f}): the random-label training did not take, poisoned inputs have no "
            "room above gamma - train more steps or raise lr"
        )
    if frr is not None and frr > 0 and n * frr < 1:
        out.append(
            f"only {n} clean validation inputs: gamma at false-rejection rate {frr} is their maximum; "
            f"give at least {math.ceil(1 / frr)}"
        )
    return out
