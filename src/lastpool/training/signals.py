"""Ctrl-C and SIGTERM during training: finish the current step, save a checkpoint, exit cleanly.

The first signal only sets a flag that the training loop reads after each optimizer step, so the
checkpoint it then saves is a consistent state (never half an update). A second signal restores the
default behaviour and raises at once, for a user who does not want to wait.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any


class StopRequests:
    """Context manager: while active (and ``enabled``), SIGINT and SIGTERM request a stop."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second one: stop now
            self._restore()
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore()
