"""Attack and defence metrics: clean accuracy, macro-F1, attack success rate (ASR), F1 drop."""

from lmsanitator.evaluate.metrics import (
    accuracy,
    attack_success,
    flatten,
    macro_f1,
    per_class_f1,
    token_attack_success,
)

__all__ = ["accuracy", "attack_success", "flatten", "macro_f1", "per_class_f1", "token_attack_success"]
