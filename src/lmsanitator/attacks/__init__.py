"""Backdoor attacks: task-agnostic (POR, POR-NER, NeuBA, BToP), a small registry."""

from lmsanitator.attacks.base import AttackConfig, TaskAgnosticAttack, batch_entropy, wasserstein_1d
from lmsanitator.attacks.btop import BToP
from lmsanitator.attacks.neuba import NeuBA
from lmsanitator.attacks.por import POR, PORNER
from lmsanitator.attacks.pvs import make_pvs, por2_pvs, random_pvs, sign_match

TASK_AGNOSTIC_ATTACKS: dict[str, type[TaskAgnosticAttack]] = {
    "por": POR,
    "por-ner": PORNER,
    "neuba": NeuBA,
    "btop": BToP,
}

__all__ = [
    "AttackConfig", "TaskAgnosticAttack", "POR", "PORNER", "NeuBA", "BToP", "TASK_AGNOSTIC_ATTACKS",
    "make_pvs", "por2_pvs", "random_pvs", "sign_match", "batch_entropy", "wasserstein_1d",
]
