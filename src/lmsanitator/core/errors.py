"""Errors a user can cause. The CLI turns them into one line on stderr and exit code 2."""


class LMSanitatorError(Exception):
    """A problem with the user's input (model, corpus, arguments, files)."""
