"""Shared by the benchmark scripts: replace one marked section of docs/BENCHMARKS.md atomically."""

from __future__ import annotations

from pathlib import Path

from lastpool.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def write_section(block: str, begin: str, end: str, results: Path = RESULTS) -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in place of the old section."""
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        start, stop = text.index(begin), text.index(end) + len(end)
        text = text[:start] + block + text[stop:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(results, text)
