"""The README's option table, built from RunConfig's fields (``lastpool.config.flag_fields``) and the few
train options that set no field, so that no flag is described by hand twice.

``python -m lastpool.options_doc --write`` rewrites the table between the markers in README.md;
``--check`` exits 1 when it is stale (tests/test_options_doc.py runs it).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import get_args

from lastpool.config import Flag, default_words, flag_fields
from lastpool.fileio import atomic_write_text

START, END = "<!-- options:start -->", "<!-- options:end -->"
README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = ("| flag | default | meaning |", "| --- | --- | --- |")


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell: no pipe ends the cell, no ``<...>`` outside code reads as HTML."""
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    return "`".join(part.replace("<", "&lt;") if i % 2 == 0 else part for i, part in enumerate(parts))


def _field_row(spec: Flag) -> tuple[str, str, str]:
    """A RunConfig field's row: its flag (both forms for a switch), its default in words, the README text."""
    name = spec.option + (f" {spec.metavar}" if spec.metavar else "")
    flag = f"`{name}` / `--no-{spec.option[2:]}`" if spec.switch else f"`{name}`"
    return flag, spec.default or "—", spec.doc


def _extra_row(param: inspect.Parameter) -> tuple[str, str, str]:
    """A train option that sets no field (--config, --resume, --quiet): read from its typer option."""
    info = get_args(param.annotation)[1]
    declared = [info.default, *info.param_decls] if isinstance(info.default, str) else []
    names = declared or ["--" + param.name.replace("_", "-")]
    names[0] += f" {info.metavar}" if info.metavar else ""
    return " / ".join(f"`{n}`" for n in names), default_words(param.default) or "—", str(info.help)


def option_table() -> str:
    """The table, one row per option of ``lastpool train`` in the order of its --help."""
    from lastpool.cli import train_parameters  # typer's options: the order, and those that set no field

    specs = {spec.name: spec for spec in flag_fields()}
    rows = [_field_row(specs[p.name]) if p.name in specs else _extra_row(p) for p in train_parameters()]
    return "\n".join([*HEADER, *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)])


def with_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by the current table."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} ... {END} markers")
    return readme[: start + len(START)] + "\n\n" + option_table() + "\n\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lastpool.options_doc", description="the README's option table")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="rewrite the table in place")
    action.add_argument("--check", action="store_true", help="exit 1 if the table is stale")
    parser.add_argument("--readme", type=Path, default=README,
                        help="the README to rewrite or check (default: this checkout's)")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    try:
        wanted = with_table(text)
    except ValueError as exc:
        sys.stderr.write(f"{args.readme}: {exc}\n")
        return 1
    if args.check:
        if wanted != text:
            sys.stderr.write(f"{args.readme}: the option table is stale; edit the fields in lastpool/config.py, "
                             "then run python -m lastpool.options_doc --write\n")
            return 1
        return 0
    if wanted != text:
        atomic_write_text(args.readme, wanted)
        sys.stderr.write(f"{args.readme}: option table rewritten\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
