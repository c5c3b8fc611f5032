"""Errors a user can cause. The CLI turns these into one message and exit code 2."""

from __future__ import annotations


class LastpoolError(Exception):
    """A problem with the user's input (data, flags, files): reported without a traceback."""


class DataError(LastpoolError):
    """Bad or unreadable labelled data; the message names the file, the row or line and the problem."""


class ConfigError(LastpoolError):
    """An invalid configuration value or flag."""


class ModelLoadError(LastpoolError):
    """A model folder or file that cannot be loaded."""
