"""LMSanitator step III: PV monitoring and trigger removal at inference (library, CLI, HTTP service)."""

from lmsanitator.guard.guard import Guard, GuardConfig, GuardDeadline
from lmsanitator.guard.monitor import DEFAULT_T_MATCH, PVMonitor
from lmsanitator.guard.purge import PurgeResult, purge, purge_sequential

__all__ = [
    "Guard",
    "GuardConfig",
    "GuardDeadline",
    "PVMonitor",
    "DEFAULT_T_MATCH",
    "PurgeResult",
    "purge",
    "purge_sequential",
]
