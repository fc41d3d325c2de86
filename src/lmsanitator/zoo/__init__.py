"""Scan a model zoo on Ray: one verdict per model, cached by content, with a report a person reads."""

from lmsanitator.zoo.cache import VerdictCache, default_cache_dir
from lmsanitator.zoo.report import load_schema
from lmsanitator.zoo.runner import ZooResult, ZooRunner
from lmsanitator.zoo.sources import ModelRef, expand_sources

__all__ = [
    "ModelRef",
    "VerdictCache",
    "ZooResult",
    "ZooRunner",
    "default_cache_dir",
    "expand_sources",
    "load_schema",
]
