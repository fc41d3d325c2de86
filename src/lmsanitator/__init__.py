"""LMSanitator: defend prompt-tuned language models against task-agnostic backdoors."""

__version__ = "0.1.0"

from lmsanitator.core.errors import LMSanitatorError  # noqa: E402

__all__ = ["LMSanitatorError", "__version__"]
