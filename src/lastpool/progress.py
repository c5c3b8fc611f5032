"""Progress display for long steps, shown only to a person: off with --quiet and when stderr is not a
terminal (CI logs, pipes), so logs stay clean."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

_console = Console(stderr=True)


@contextmanager
def status(message: str, quiet: bool) -> Iterator[None]:
    """A spinner with ``message`` while the block runs (for steps with no countable progress)."""
    if quiet or not _console.is_terminal:
        yield
        return
    with _console.status(message):
        yield


class ScoringProgress:
    """A bar for scoring a file: rows passed of all rows, texts scored, texts/s and the time left
    (``update`` once per chunk)."""

    def __init__(self, quiet: bool) -> None:
        self._shown = not quiet and _console.is_terminal
        self._progress: Any = None
        self._task: Any = None
        self._started = 0.0

    def __enter__(self) -> ScoringProgress:
        if self._shown:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("scoring"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                      TextColumn("{task.fields[texts]} texts, {task.fields[rate]} texts/s"),
                                      TimeRemainingColumn(), console=_console, transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("scoring", total=None, texts=0, rate="-")
        self._started = time.perf_counter()
        return self

    def update(self, position: int, total: int, texts: int) -> None:
        if self._progress is None:
            return
        rate = texts / max(time.perf_counter() - self._started, 1e-9)
        self._progress.update(self._task, completed=position, total=total, texts=texts, rate=f"{rate:.0f}")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
