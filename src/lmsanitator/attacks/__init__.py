"""Backdoor attacks: task-agnostic (POR, POR-NER, NeuBA, BToP) and weight poisoning (BadNet, InSent,
SynAttack)."""

from lmsanitator.attacks.badnet import BadNet
from lmsanitator.attacks.base import TaskAgnosticAttack
from lmsanitator.attacks.btop import BToP
from lmsanitator.attacks.config import AttackConfig, PoisonConfig
from lmsanitator.attacks.insent import InSent
from lmsanitator.attacks.neuba import NeuBA
from lmsanitator.attacks.poisoning import WeightPoisoningAttack
from lmsanitator.attacks.por import POR, PORNER
from lmsanitator.attacks.synattack import SynAttack
from lmsanitator.data.pvs import make_pvs, por2_pvs, random_pvs

TASK_AGNOSTIC_ATTACKS: dict[str, type[TaskAgnosticAttack]] = {
    "por": POR,
    "por-ner": PORNER,
    "neuba": NeuBA,
    "btop": BToP,
}
# full fine-tuning on a poisoned classification set (PSIM paper)
WEIGHT_POISONING_ATTACKS: dict[str, type[WeightPoisoningAttack]] = {
    "badnet": BadNet,
    "insent": InSent,
    "synattack": SynAttack,
}

__all__ = [
    "AttackConfig",
    "TaskAgnosticAttack",
    "POR",
    "PORNER",
    "NeuBA",
    "BToP",
    "TASK_AGNOSTIC_ATTACKS",
    "PoisonConfig",
    "WeightPoisoningAttack",
    "BadNet",
    "InSent",
    "SynAttack",
    "WEIGHT_POISONING_ATTACKS",
    "make_pvs",
    "por2_pvs",
    "random_pvs",
]
