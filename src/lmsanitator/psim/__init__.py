"""PSIM: poisoned-sample identification for PEFT models under weight-poisoning backdoors."""

from lmsanitator.psim.calibration import (
    DEFAULT_FRR,
    GAMMA_SHARE,
    PSIMWarning,
    calibrate_gamma,
    confidence_stats,
    default_gamma,
    self_check,
)
from lmsanitator.psim.psim import PSIM, PSIMConfig, PSIMPipeline, budget, reset_labels

__all__ = [
    "PSIM",
    "PSIMConfig",
    "PSIMPipeline",
    "PSIMWarning",
    "DEFAULT_FRR",
    "GAMMA_SHARE",
    "budget",
    "calibrate_gamma",
    "confidence_stats",
    "default_gamma",
    "reset_labels",
    "self_check",
]
