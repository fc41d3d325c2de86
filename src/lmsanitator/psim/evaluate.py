"""PSIM evaluation: CA and targeted ASR of the user's victims without and behind PSIM.

Shared by ``lmsanitator evaluate psim`` and ``lmsanitator experiment psim``. A flagged input is
rejected: an error when clean, a failed attack when poisoned.
"""

from __future__ import annotations

import numpy as np

from lmsanitator.metrics.poisoning import REJECTED, poisoned_set, score


def evaluate_psim(
    psim,
    victims,
    task,
    spec,
    *,
    max_examples: int | None = None,
    gamma: float | None = None,
    calibrate_frr: float | None = None,
    val_size: int = 300,
    seed: int = 0,
    keep_confidences: bool = False,
) -> dict:
    """``victims``: ``(name, TunedModel)`` pairs. ``gamma`` None: the PSIM folder's own; with
    ``calibrate_frr`` gamma is set on ``val_size`` clean validation inputs (the folder's gamma is
    reported beside it, from the same pass). ``keep_confidences``: also every clean and poisoned
    test confidence (``confidence_clean`` / ``confidence_poisoned``, for plots).

    Long only because the report is one flat dict, built in one place."""
    gamma_arg = gamma
    ps = poisoned_set(task.test[:max_examples], spec, seed=seed)
    folder_gamma = psim.gamma_
    gamma = folder_gamma if gamma_arg is None else gamma_arg
    if calibrate_frr is not None:
        val = task.with_validation_size(val_size).validation
        gamma = psim.calibrate(
            [e.text for e in val], [e.text_pair for e in val] if task.is_pair else None, frr=calibrate_frr
        )
    conf_clean = psim.confidence(ps.texts, ps.pairs)
    conf_poison = psim.confidence(ps.poisoned_texts, ps.poisoned_pairs)
    confidences = (conf_clean, conf_poison)
    results = []
    for adapter, model in victims:
        clean = model.predict_labels(ps.texts, ps.pairs)
        poisoned = model.predict_labels(ps.poisoned_texts, ps.poisoned_pairs) if ps.source else []
        labels = (clean, poisoned)
        before, after = score(ps, clean, poisoned), _behind_psim(ps, confidences, labels, gamma)
        info = model.info()
        results.append(
            {
                "adapter": adapter,
                "method": info["method"],
                "model": info["model"],
                "before": before,
                "after": after,
            }
        )
        if gamma != folder_gamma:  # also the folder's own gamma (no second pass over the inputs)
            results[-1]["after_folder_gamma"] = _behind_psim(ps, confidences, labels, folder_gamma)
    out = {
        "gamma": gamma,
        "folder_gamma": folder_gamma,
        "gamma_rule": psim.info_.get("gamma_rule") if gamma_arg is None else "given",
        "task": task.name,
        "split": "test",
        "n": len(ps.texts),
        "n_poisoned": len(ps.source),
        "attack": {"trigger": spec.trigger, "target_label": spec.target_label, "insertion": spec.insertion},
        "flagged_clean": float((conf_clean > gamma).mean()),
        "flagged_poisoned": float((conf_poison > gamma).mean()) if ps.source else None,
        "flagged_clean_folder_gamma": float((conf_clean > folder_gamma).mean()),
        "flagged_poisoned_folder_gamma": float((conf_poison > folder_gamma).mean()) if ps.source else None,
        "confidence_clean_quantiles": [round(float(x), 4) for x in np.quantile(conf_clean, [0.5, 0.9, 0.99])],
        "confidence_poisoned_quantiles": [
            round(float(x), 4) for x in np.quantile(conf_poison, [0.01, 0.1, 0.5])
        ]
        if ps.source
        else None,
        "results": results,
    }
    if keep_confidences:
        out["confidence_clean"] = [round(float(x), 5) for x in conf_clean]
        out["confidence_poisoned"] = [round(float(x), 5) for x in conf_poison]
    return out


def _behind_psim(ps, confidences, labels, gamma: float) -> dict:
    """The victim's scores when PSIM rejects every input whose confidence exceeds ``gamma``."""
    (conf_clean, conf_poison), (clean, poisoned) = confidences, labels
    return score(
        ps,
        [REJECTED if c > gamma else y for c, y in zip(conf_clean, clean)],
        [REJECTED if c > gamma else y for c, y in zip(conf_poison, poisoned)],
    )
