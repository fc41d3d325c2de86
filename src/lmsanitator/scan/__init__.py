"""LMSanitator steps I-II: PV mining and filtering; PV sets."""

from lmsanitator.scan.config import ScanConfig, t_div_for
from lmsanitator.scan.miner import PVMiner, build_prompt_batches
from lmsanitator.data.pvset import PVSet

__all__ = ["ScanConfig", "PVMiner", "PVSet", "build_prompt_batches", "t_div_for"]
