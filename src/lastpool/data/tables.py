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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from lastpool.errors import DataError

TEXT_COLUMNS = ("text", "sentence", "sentences", "content", "review")
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "target", "category")
SUPPORTED = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet", ".txt")
DEMO_FILE = "demo/financial_news.csv"


Label = str | list[str]  # one label, or (multi-label) the labels of one text


@dataclass(frozen=True)
class TableLayout:
    """How a file holds its data, beyond what the extension says: which columns (by name, or by 1-based
    position in a file without a header), the second text of a pair, several labels per text (a delimited
    list in one column, or 0/1 columns), the separator and whether quotes are CSV quoting or literal."""

    text_col: str | None = None
    label_col: str | None = None
    pair_col: str | None = None
    label_cols: tuple[str, ...] | None = None
    label_sep: str | None = None
    sep: str | None = None  # None: by extension (tab for .tsv, comma otherwise)
    header: bool = True
    quoting: Literal["auto", "csv", "none"] = "auto"
    numeric_labels: bool = False  # a regression: every label must be a number

    def __post_init__(self) -> None:
        if self.label_cols is not None and (self.label_col is not None or self.label_sep is not None):
            raise DataError("--label-cols reads 0/1 columns: it does not go with --label-col or --label-sep")
        if self.label_sep == "":
            raise DataError("--label-sep is empty")


@dataclass(frozen=True)
class Table:
    """Texts (and, for pairs, their second texts) with optional labels, plus where they came from (for
    messages)."""

    texts: list[str]
    labels: list[Any] | None  # label names; lists of them (multi-label); numbers (regression)
    source: str
    pairs: list[str] | None = None

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
    layout: TableLayout | None = None,
) -> Table:
    """Read a csv/tsv/jsonl/ndjson/parquet table or a ``sentence@label`` .txt file into a Table.

    ``layout`` says how the file holds its columns (``text_col``/``label_col`` override its own). Raises
    DataError with the file, the line or row and the problem for anything a user can get wrong.
    """
    layout = layout or TableLayout()
    if text_col is not None or label_col is not None:
        layout = replace(layout, text_col=text_col or layout.text_col, label_col=label_col or layout.label_col)
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

    if ext == ".txt" and layout.sep is None:
        return _read_phrasebank(raw_bytes, name, require_labels)
    if ext == ".parquet":
        raw = _read_parquet(p, name)
    elif ext in (".jsonl", ".ndjson"):
        raw = _read_jsonl(_decode_utf8(raw_bytes, name), name)
    else:
        sep = layout.sep or ("\t" if ext == ".tsv" else ",")
        text = _decode_utf8(raw_bytes, name)
        quoting = _quoting(text, sep) if layout.quoting == "auto" else layout.quoting
        raw = (_read_delimited(text, name, sep, quoting) if layout.header
               else _read_headerless(text, name, sep, quoting))
    return _build(raw, name, layout, require_labels)


def load_demo() -> Table:
    """The small built-in financial-news set, so `lastpool train` works with no data at hand."""
    resource = resources.files("lastpool.data").joinpath(DEMO_FILE)
    try:
        text = resource.read_text(encoding="utf-8-sig")
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"demo: built-in demo data is missing ({DEMO_FILE}); reinstall lastpool") from exc
    return _build(_read_delimited(text, "demo", ",", "csv"), "demo", TableLayout(), True)


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


def _quoting(text: str, sep: str) -> Literal["csv", "none"]:
    """``auto``: CSV quoting, except in a tab-separated file whose quotes cannot be CSV quoting (a field
    opens with a quote but does not close with one, as in ``"Yes," he said``): there quotes are literal."""
    if sep != "\t":
        return "csv"
    for line in text.splitlines():
        fields = line.split(sep)
        for i, value in enumerate(fields):
            # (the last field may be a quoted field that goes on over the next line: an odd number of quotes)
            if value.startswith('"') and not value.endswith('"') and (i < len(fields) - 1 or value.count('"') % 2 == 0):
                return "none"
    return "csv"


def _read_delimited(text: str, name: str, sep: str, quoting: str = "csv") -> _Raw:
    """CSV/TSV via pandas with everything as strings, so 'NA' or 'null' stay texts."""
    starts = _record_starts(text, sep, quoting)
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
                         quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)
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


def _read_headerless(text: str, name: str, sep: str, quoting: str) -> _Raw:
    """A file of rows without a header: columns are named by position ("1", "2", ...), and rows may differ
    in length (a missing field is empty; extra trailing fields are columns no flag names)."""
    records = list(headerless_records(io.StringIO(text, newline=""), name, sep, quoting))
    return positional([r for r, _ in records], [w for _, w in records])


def headerless_records(lines: Iterable[str], name: str, sep: str, quoting: str) -> Iterator[tuple[list[str], str]]:
    """Each non-blank record of a headerless file with where it starts ("line 7"), as a user counts."""
    reader = csv.reader(lines, delimiter=sep, quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL,
                        strict=True)
    line = 1
    try:
        for record in reader:
            if record and any(field.strip() for field in record):
                yield record, f"line {line}"
            line = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{name}, line {line}: malformed {'TSV' if sep == chr(9) else 'CSV'} ({exc})") from None


def positional(rows: list[list[str]], where: list[str], named: int = 0) -> _Raw:
    """Columns "1", "2", ...: as many as the longest row, and at least ``named`` (the highest position a flag
    names, so a chunk of short rows says which row lacks the field)."""
    width = max(named, *(len(r) for r in rows)) if rows else named
    columns = [str(i + 1) for i in range(width)]
    return _Raw(columns, {c: [r[i] if i < len(r) else None for r in rows] for i, c in enumerate(columns)}, where)


def _record_starts(text: str, sep: str, quoting: str = "csv") -> list[tuple[int, bool]]:
    """(first line, is blank) of each record, so rows map to file lines even with quoted newlines."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep,
                        quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)
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
    records = list(jsonl_records(text.split("\n"), name))
    return keyed([r for r, _ in records], [w for _, w in records])


def jsonl_records(lines: Iterable[str], name: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Each JSON object of a JSON-lines file with its line ("line 7"); blank lines are skipped."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}, line {n}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name}, line {n}: expected a JSON object, got {_json_type(obj)}")
        yield {str(k): v for k, v in obj.items()}, f"line {n}"


def keyed(rows: list[dict[str, Any]], where: list[str]) -> _Raw:
    """Rows of key/value objects as columns: the union of their keys, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return _Raw(columns, {c: [r.get(c) for r in rows] for c in columns}, where)


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


def _build(raw: _Raw, name: str, layout: TableLayout, require_labels: bool) -> Table:
    if not raw.where:
        raise DataError(f"{name}: no rows (found columns: {_cols(raw.columns)})")
    label_cols = ([_explicit(raw.columns, c, name, "--label-cols") for c in layout.label_cols]
                  if layout.label_cols is not None else None)
    lab = None if label_cols else _choose_label(raw.columns, name, layout.label_col, require_labels)
    taken = [lab] if lab is not None else list(label_cols or [])
    pair = _explicit(raw.columns, layout.pair_col, name, "--text-pair-col") if layout.pair_col is not None else None
    if pair is not None:
        taken.append(pair)
    txt = _choose_text(raw.columns, name, layout.text_col, taken)
    if pair == txt:
        raise DataError(f"{name}: --text-pair-col names the text column ('{txt}'); pass the second text's column")

    texts = [_text_value(v, name, where) for v, where in zip(raw.data[txt], raw.where, strict=True)]
    pairs = ([_text_value(v, name, where, f"second text (column '{pair}')")
              for v, where in zip(raw.data[pair], raw.where, strict=True)] if pair is not None else None)
    if label_cols:
        return Table(texts, _indicator_labels(raw, name, label_cols), name, pairs)
    if lab is None:
        return Table(texts, None, name, pairs)
    labels: list[Any] = []
    for value, where in zip(raw.data[lab], raw.where, strict=True):
        listed = layout.label_sep is not None or isinstance(value, (list, tuple, np.ndarray))
        label: Any = _label_list(value, layout.label_sep or ",") if listed else _label_value(value)
        if (label is None or label == []) and require_labels:
            raise DataError(f"{name}, {where}: missing label (column '{lab}')")
        if label is not None and layout.numeric_labels:
            label = _number(label, name, where)
        labels.append(label)
    complete = [label for label in labels if label is not None and label != []]
    return Table(texts, complete if len(complete) == len(labels) else None, name, pairs)


def _label_list(value: Any, sep: str) -> list[str] | None:
    """One cell holding several labels ("2,5"); a JSON array is read as the list it is."""
    if isinstance(value, (list, tuple, np.ndarray)):
        names = [_label_value(v) for v in value]
        return [n for n in names if n is not None]
    label = _label_value(value)
    if label is None:
        return None
    return list(dict.fromkeys(part.strip() for part in label.split(sep) if part.strip()))


def _indicator_labels(raw: _Raw, name: str, columns: Sequence[str]) -> list[Label]:
    """``--label-cols``: a text's labels are the columns holding 1 (or true); each cell must be 0 or 1."""
    out: list[Label] = []
    for i, where in enumerate(raw.where):
        row = []
        for column in columns:
            value = _label_value(raw.data[column][i])
            flag = {"1": True, "0": False, "True": True, "False": False, "true": True, "false": False}.get(value or "")
            if flag is None:
                raise DataError(f"{name}, {where}: column '{column}' holds {value!r}; --label-cols columns hold 0 or 1")
            if flag:
                row.append(column)
        out.append(row)
    return out


def _number(label: Any, name: str, where: str) -> float:
    try:
        number = float(label)
    except (TypeError, ValueError):
        raise DataError(f"{name}, {where}: the target {label!r} is not a number (regression needs numeric "
                        "targets)") from None
    if not math.isfinite(number):
        raise DataError(f"{name}, {where}: the target is {label!r} (regression needs finite numbers)")
    return number


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


def _choose_text(columns: Sequence[str], name: str, text_col: str | None, taken: Sequence[str]) -> str:
    if text_col is not None:
        return _explicit(columns, text_col, name, "--text-col")
    found = [c for c in _auto(columns, TEXT_COLUMNS, None) if c not in taken]
    if len(found) > 1:
        raise DataError(
            f"{name}: ambiguous text column: {', '.join(found)} all look like text; pass --text-col"
        )
    if found:
        return found[0]
    others = [c for c in columns if c not in taken]
    if len(others) == 1:  # e.g. two columns, one of them the label
        return others[0]
    raise DataError(f"{name}: no text column; found columns: {_cols(columns)}; pass --text-col")


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _text_value(value: Any, name: str, where: str, what: str = "text") -> str:
    """The text as-is (no stripping); numbers become their string form, anything else is an error."""
    if _missing(value):
        raise DataError(f"{name}, {where}: empty {what}")
    if isinstance(value, str):
        text = value
    elif isinstance(value, (numbers.Number, np.generic)) and not isinstance(value, (bool, np.bool_)):
        text = _label_value(value) or ""
    else:
        raise DataError(f"{name}, {where}: {what} is not a string ({type(value).__name__})")
    if not text.strip():
        raise DataError(f"{name}, {where}: empty {what}")
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
