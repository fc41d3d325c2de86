"""LMSanitator steps I-II: PV mining and filtering; PV sets."""

from lmsanitator.data.pvset import PVSet
from lmsanitator.scan.config import ScanConfig, t_div_for
from lmsanitator.scan.fuzz import Candidate, FoundPV
from lmsanitator.scan.miner import PVMiner
from lmsanitator.scan.prompts import build_prompt_batches

__all__ = ["Candidate", "FoundPV", "ScanConfig", "PVMiner", "PVSet", "build_prompt_batches", "t_div_for"]
