"""Progress display for long steps, shown only to a person: off with --quiet and when stderr is not a
terminal (CI logs, pipes), so logs stay clean."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
