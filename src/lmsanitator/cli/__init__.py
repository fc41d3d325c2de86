"""The ``lmsanitator`` command: one module per command group."""

from lmsanitator.cli.main import main

__all__ = ["main"]
