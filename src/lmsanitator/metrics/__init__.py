"""Metrics and losses: clean accuracy, macro-F1, attack success rate (ASR), PV sign agreement (match
rate), and the scan's diversity loss (batch entropy) with the adaptive attacks' Wasserstein distance."""

from lmsanitator.metrics.classification import (
    accuracy,
    attack_success,
    flatten,
    macro_f1,
    per_class_f1,
    token_attack_success,
)
from lmsanitator.metrics.losses import batch_entropy, collapse_diversity, wasserstein_1d
from lmsanitator.metrics.match import sign_match

__all__ = [
    "accuracy",
    "attack_success",
    "flatten",
    "macro_f1",
    "per_class_f1",
    "token_attack_success",
    "batch_entropy",
    "collapse_diversity",
    "wasserstein_1d",
    "sign_match",
]
