"""PSIM: poisoned-sample identification for PEFT models under weight-poisoning backdoors."""

from lmsanitator.psim.psim import (
    GAMMA_SHARE,
    PSIM,
    PSIMConfig,
    PSIMPipeline,
    calibrate_gamma,
    default_gamma,
    reset_labels,
)

__all__ = [
    "PSIM",
    "PSIMConfig",
    "PSIMPipeline",
    "GAMMA_SHARE",
    "calibrate_gamma",
    "default_gamma",
    "reset_labels",
]
