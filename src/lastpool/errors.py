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


class CheckpointError(LastpoolError):
    """A checkpoint that cannot be written or resumed from (incompatible, corrupt, no space)."""


class TrainingStopped(LastpoolError):
    """Training stopped before its end, with its work kept in a checkpoint: interrupted (Ctrl-C,
    SIGTERM: exit 130) or diverged (a NaN or infinite loss: exit 3)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
