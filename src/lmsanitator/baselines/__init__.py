"""Baseline defences to compare with: ONION (perplexity-based trigger-word removal)."""

from lmsanitator.baselines.onion import ONION, ONIONConfig

__all__ = ["ONION", "ONIONConfig"]
