"""Read labelled (or unlabelled) text tables from files into one simple shape.

Every reader ends in the same validation so that a bad file stops with one line that names the file,
the line (or parquet row) and the problem, instead of a pandas traceback or a silently wrong column.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lastpool.errors import DataError

TEXT_COLUMNS = ("text", "sentence", "sentences", "content", "review")
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "target", "category")
SUPPORTED = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".txt")
DEMO_FILE = "demo/financial_news.csv"


@dataclass(frozen=True)
class Table:
    """Texts with optional string labels, plus where they came from (for messages)."""

    texts: list[str]
    labels: list[str] | None
    source: str

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class _Raw:
    """Columns as read from a file, before choosing and validating the text and label columns."""

    columns: list[str]
    data: dict[str, list[Any]]
    where: list[str]  # "line 7" / "row 3" for each row, as a user would count


def read_table(
    path: str | Path,
    text_col: str | None = None,
    label_col: str | None = None,
    require_labels: bool = True,
) -> Table:
    """Read a csv/tsv/jsonl/ndjson/parquet table or a ``sentence@label`` .txt file into a Table.

    Raises DataError with the file, the line or row and the problem for anything a user can get wrong.
    """
    name = str(path)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{name}: no such file")
    if p.is_dir():
        raise DataError(f"{name}: is a directory, not a data file")
    ext = p.suffix.lower()
    if ext not in SUPPORTED:
        shown = f"'{p.suffix}'" if p.suffix else "no extension"
        raise DataError(
            f"{name}: unsupported file type ({shown}); supported: {', '.join(SUPPORTED[:-1])}, "
            ".txt (sentence@label lines)"
        )
    try:
        raw_bytes = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read file ({exc.strerror or exc})") from exc
    if not raw_bytes.strip():
        raise DataError(f"{name}: empty file")
    if ext != ".parquet" and b"\x00" in raw_bytes:
        # Text never holds NUL bytes; a UTF-16 or binary file would otherwise "decode" as Latin-1 garbage.
        raise DataError(f"{name}: not a text file (it contains NUL bytes: binary, or UTF-16); save it as UTF-8")

    if ext == ".txt":
        return _read_phrasebank(raw_bytes, name, require_labels)
    if ext == ".parquet":
        raw = _read_parquet(p, name)
    elif ext in (".jsonl", ".ndjson"):
        raw = _read_jsonl(_decode_utf8(raw_bytes, name), name)
    else:
        raw = _read_delimited(_decode_utf8(raw_bytes, name), name, "\t" if ext == ".tsv" else ",")
    return _build(raw, name, text_col, label_col, require_labels)


def load_demo() -> Table:
    """The small built-in financial-news set, so `lastpool train` works with no data at hand."""
    resource = resources.files("lastpool.data").joinpath(DEMO_FILE)
    try:
        text = resource.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"demo: built-in demo data is missing ({DEMO_FILE}); reinstall lastpool") from exc
    return _build(_read_delimited(text, "demo", ","), "demo", None, None, True)


# --- decoding -------------------------------------------------------------------------------------


def _decode_utf8(data: bytes, name: str) -> str:
    """Decode UTF-8 (an optional BOM is fine); on failure, say which line holds the bad byte."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            f"{name}, line {line}: not valid UTF-8 (byte 0x{bad}); save the file as UTF-8"
        ) from exc
    return text.removeprefix("\ufeff")


# --- readers ----------------------------------------------------------------------------------------


def _read_delimited(text: str, name: str, sep: str) -> _Raw:
    """CSV/TSV via pandas with everything as strings, so 'NA' or 'null' stay texts."""
    starts = _record_starts(text, sep)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{name}: empty file") from exc
    except pd.errors.ParserError as exc:
        raise DataError(_parser_message(str(exc), name, starts, sep)) from exc

    data_lines = _data_lines(starts)
    if not isinstance(df.index, pd.RangeIndex):
        # pandas silently turns the first column into an index when rows have one field too many.
        line = data_lines[0] if data_lines else 2
        raise DataError(
            f"{name}, line {line}: more fields than the header has columns ({len(df.columns)}); "
            f"quote texts that contain {_sep_name(sep)}"
        )
    if len(data_lines) != len(df):  # csv module and pandas disagree: fall back to simple counting
        data_lines = [i + 2 for i in range(len(df))]
    columns = [str(c) for c in df.columns]
    data = {str(c): df[c].tolist() for c in df.columns}
    return _Raw(columns, data, [f"line {n}" for n in data_lines])


def _record_starts(text: str, sep: str) -> list[tuple[int, bool]]:
    """(first line, is blank) of each record, so rows map to file lines even with quoted newlines."""
    reader = csv.reader(io.StringIO(text), delimiter=sep)
    out: list[tuple[int, bool]] = []
    prev = 0
    try:
        for rec in reader:
            blank = not rec or (len(rec) == 1 and not rec[0].strip())
            out.append((prev + 1, blank))
            prev = reader.line_num
    except csv.Error:
        pass
    return out


def _data_lines(starts: list[tuple[int, bool]]) -> list[int]:
    lines = [line for line, blank in starts if not blank]
    return lines[1:]  # the first non-blank record is the header


def _parser_message(msg: str, name: str, starts: list[tuple[int, bool]], sep: str) -> str:
    """Turn pandas' tokenizer error into a line number in the file and a plain problem."""
    detail = msg.split("C error:", 1)[-1].strip()
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", detail)
    if m:
        idx = int(m.group(2)) - 1
        line = starts[idx][0] if 0 <= idx < len(starts) else idx + 1
        return (
            f"{name}, line {line}: expected {m.group(1)} fields, saw {m.group(3)}; "
            f"quote texts that contain {_sep_name(sep)}"
        )
    m = re.search(r"EOF inside string starting at row (\d+)", detail)
    if m:
        idx = int(m.group(1))
        line = starts[idx][0] if 0 <= idx < len(starts) else idx + 1
        return f"{name}, line {line}: a quoted field is never closed (unmatched '\"')"
    return f"{name}: malformed {'TSV' if sep == chr(9) else 'CSV'} ({detail})"


def _sep_name(sep: str) -> str:
    return "tabs" if sep == "\t" else "commas"


def _read_jsonl(text: str, name: str) -> _Raw:
    """One JSON object per line; blank lines are skipped; columns are the union of keys."""
    columns: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    where: list[str] = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}, line {n}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{name}, line {n}: expected a JSON object, got {_json_type(obj)}")
        for key in obj:
            columns.setdefault(str(key), None)
        rows.append({str(k): v for k, v in obj.items()})
        where.append(f"line {n}")
    cols = list(columns)
    return _Raw(cols, {c: [r.get(c) for r in rows] for c in cols}, where)


def _json_type(obj: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if obj is None else names.get(type(obj), type(obj).__name__)


def _read_parquet(path: Path, name: str) -> _Raw:
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{name}: not a valid parquet file ({_first_line(exc)})") from exc
    columns = [str(c) for c in df.columns]
    data = {str(c): df[c].tolist() for c in df.columns}
    return _Raw(columns, data, [f"row {i + 1}" for i in range(len(df))])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_phrasebank(data: bytes, name: str, require_labels: bool) -> Table:
    """Financial PhraseBank lines ``sentence@label``; the original files are Latin-1, copies UTF-8."""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    lines = [(n, line.removesuffix("\r")) for n, line in enumerate(text.split("\n"), start=1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    if not lines:
        raise DataError(f"{name}: no rows")
    # For prediction input, a file where some line has no '@' is plain text, one text per line.
    plain = not require_labels and any("@" not in line for _, line in lines)
    texts: list[str] = []
    labels: list[str | None] = []
    for n, line in lines:
        if plain:
            sentence, label = line, None
        elif "@" not in line:
            raise DataError(f"{name}, line {n}: no '@' between sentence and label (expected sentence@label)")
        else:
            sentence, raw_label = line.rsplit("@", 1)
            label = raw_label.strip() or None
        if not sentence.strip():
            raise DataError(f"{name}, line {n}: empty text")
        if label is None and require_labels:
            raise DataError(f"{name}, line {n}: missing label after '@'")
        texts.append(sentence)
        labels.append(label)
    return Table(texts, _complete(labels), name)


# --- column choice and validation -------------------------------------------------------------------


def _build(raw: _Raw, name: str, text_col: str | None, label_col: str | None, require_labels: bool) -> Table:
    if not raw.where:
        raise DataError(f"{name}: no rows (found columns: {_cols(raw.columns)})")
    lab = _choose_label(raw.columns, name, label_col, require_labels)
    txt = _choose_text(raw.columns, name, text_col, lab)

    texts = [_text_value(v, name, where) for v, where in zip(raw.data[txt], raw.where, strict=True)]

    if lab is None:
        return Table(texts, None, name)
    labels: list[str | None] = []
    for value, where in zip(raw.data[lab], raw.where, strict=True):
        label = _label_value(value)
        if label is None and require_labels:
            raise DataError(f"{name}, {where}: missing label (column '{lab}')")
        labels.append(label)
    return Table(texts, _complete(labels), name)


def _complete(labels: Sequence[str | None]) -> list[str] | None:
    """All labels, or None when any is missing (only possible for prediction input)."""
    out = [label for label in labels if label is not None]
    return out if len(out) == len(labels) else None


def _cols(columns: Sequence[str]) -> str:
    return ", ".join(columns) if columns else "(none)"


def _explicit(columns: Sequence[str], wanted: str, name: str, flag: str) -> str:
    if wanted in columns:
        return wanted
    folded = [c for c in columns if c.strip().lower() == wanted.strip().lower()]
    if len(folded) == 1:
        return folded[0]
    raise DataError(f"{name}: no column '{wanted}' ({flag}); found columns: {_cols(columns)}")


def _auto(columns: Sequence[str], candidates: Sequence[str], exclude: str | None) -> list[str]:
    return [c for c in columns if c != exclude and c.strip().lower() in candidates]


def _choose_label(columns: Sequence[str], name: str, label_col: str | None, required: bool) -> str | None:
    if label_col is not None:
        return _explicit(columns, label_col, name, "--label-col")
    found = _auto(columns, LABEL_COLUMNS, None)
    if len(found) > 1:
        raise DataError(
            f"{name}: ambiguous label column: {', '.join(found)} all look like labels; pass --label-col"
        )
    if found:
        return found[0]
    if required:
        raise DataError(f"{name}: no label column; found columns: {_cols(columns)}; pass --label-col")
    return None


def _choose_text(columns: Sequence[str], name: str, text_col: str | None, label: str | None) -> str:
    if text_col is not None:
        return _explicit(columns, text_col, name, "--text-col")
    found = _auto(columns, TEXT_COLUMNS, label)
    if len(found) > 1:
        raise DataError(
            f"{name}: ambiguous text column: {', '.join(found)} all look like text; pass --text-col"
        )
    if found:
        return found[0]
    others = [c for c in columns if c != label]
    if len(others) == 1:  # e.g. two columns, one of them the label
        return others[0]
    raise DataError(f"{name}: no text column; found columns: {_cols(columns)}; pass --text-col")


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _text_value(value: Any, name: str, where: str) -> str:
    """The text as-is (no stripping); numbers become their string form, anything else is an error."""
    if _missing(value):
        raise DataError(f"{name}, {where}: empty text")
    if isinstance(value, str):
        text = value
    elif isinstance(value, (numbers.Number, np.generic)) and not isinstance(value, (bool, np.bool_)):
        text = _label_value(value) or ""
    else:
        raise DataError(f"{name}, {where}: text is not a string ({type(value).__name__})")
    if not text.strip():
        raise DataError(f"{name}, {where}: empty text")
    return text


def _label_value(value: Any) -> str | None:
    """A label as a string: 0 -> "0", 1.0 (NaN-promoted int column) -> "1"; None when missing."""
    if _missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    label = str(value).strip()
    return label or None
