"""The README's option table is generated from RunConfig's fields: it is up to date, lists every flag,
and ``--check`` notices when a field's text changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lastpool.config import RunConfig, flag_fields
from lastpool.options_doc import END, README, START, main, option_table

REPO = Path(__file__).resolve().parents[1]


def readme_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "README.md"
    copy.write_text(README.read_text(encoding="utf-8"), encoding="utf-8")
    return copy


def test_readme_is_the_repo_readme() -> None:
    assert README == REPO / "README.md"


def test_readme_option_table_is_up_to_date() -> None:
    """Through the module's command line, as a contributor runs it."""
    proc = subprocess.run([sys.executable, "-m", "lastpool.options_doc", "--check"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    readme = README.read_text(encoding="utf-8")
    assert readme.count(START) == 1 and readme.count(END) == 1
    assert option_table() in readme


def test_every_flag_field_has_a_row() -> None:
    table = option_table()
    rows = table.splitlines()[2:]
    for spec in flag_fields():
        row = next((r for r in rows if r.startswith(f"| `{spec.option}`") or r.startswith(f"| `{spec.option} ")),
                   None)
        assert row is not None, f"{spec.option} is missing from the README's option table"
        assert (spec.default or "—").replace("<", "&lt;") in row
    for extra in ("--config", "--resume", "--quiet"):  # train's options that set no field
        assert f"`{extra}" in table
    assert len(rows) == len(list(flag_fields())) + 3


def test_a_changed_description_makes_check_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    copy = readme_copy(tmp_path)
    assert main(["--check", "--readme", str(copy)]) == 0
    field = RunConfig.model_fields["vocab_size"]  # no README text of its own: its description is the row
    monkeypatch.setattr(field, "description", "BPE vocabulary size, described anew")
    capsys.readouterr()
    assert main(["--check", "--readme", str(copy)]) == 1
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and "stale" in message[0] and "--write" in message[0]
    # --write brings the copy up to date (and leaves the rest of it alone)
    assert main(["--write", "--readme", str(copy)]) == 0
    text = copy.read_text(encoding="utf-8")
    assert "| `--vocab-size` | 2000 | BPE vocabulary size, described anew |" in text
    assert main(["--check", "--readme", str(copy)]) == 0
    before, after = README.read_text(encoding="utf-8").split(START), text.split(START)
    assert before[0] == after[0] and before[1].split(END)[1] == after[1].split(END)[1]


def test_a_hand_edit_of_the_table_makes_check_fail(tmp_path: Path) -> None:
    copy = readme_copy(tmp_path)
    copy.write_text(copy.read_text(encoding="utf-8").replace("| `--seed` | 0 |", "| `--seed` | 1 |"),
                    encoding="utf-8")
    assert main(["--check", "--readme", str(copy)]) == 1


def test_missing_markers_are_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "README.md"
    copy.write_text("# no table here\n", encoding="utf-8")
    assert main(["--write", "--readme", str(copy)]) == 1
    assert "markers" in capsys.readouterr().err
    assert copy.read_text(encoding="utf-8") == "# no table here\n"
