"""Read a table of texts a chunk of rows at a time, for scoring files larger than memory.

``read_table`` holds a whole file; ``TableStream`` yields it in chunks of ``chunk_rows`` rows with the same
column choice and the same one-line errors (rows are counted across the whole file), so memory follows
the chunk size, not the input. Each chunk also carries the columns a user asked to pass through.
Chunk boundaries depend only on the file and ``chunk_rows``: a resumed run sees the same chunks.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import pandas as pd

from lastpool.data.tables import (
    SUPPORTED,
    Table,
    TableLayout,
    _build,
    _explicit,
    _parser_message,
    _quoting,
    _Raw,
    _sep_name,
    headerless_records,
    jsonl_records,
    keyed,
    positional,
)
from lastpool.errors import DataError

SNIFF_BYTES = 1 << 20  # how much of a file decides auto quoting and NUL bytes before streaming starts


@dataclass(frozen=True)
class Chunk:
    """Rows ``first_row`` .. ``first_row + len(table) - 1`` (0-based) of the input."""

    index: int
    first_row: int
    table: Table
    kept: dict[str, list[Any]]  # the pass-through columns, in the order asked for


class TableStream:
    """The chunks of one prediction input (labels, if any, are left alone)."""

    def __init__(self, path: str | Path, layout: TableLayout | None = None, chunk_rows: int = 1024,
                 keep_cols: Sequence[str] = ()) -> None:
        if chunk_rows < 1:
            raise DataError(f"chunk size must be at least 1 row, got {chunk_rows}")
        self.path = Path(path)
        self.name = str(path)
        self.layout = replace(layout or TableLayout(), label_col=None, label_cols=None, label_sep=None,
                              numeric_labels=False)
        self.chunk_rows = chunk_rows
        self.keep_cols = list(keep_cols)
        self._check_file()

    def _check_file(self) -> None:
        p, name = self.path, self.name
        if not p.exists():
            raise DataError(f"{name}: no such file")
        if p.is_dir():
            raise DataError(f"{name}: is a directory, not a data file")
        if p.suffix.lower() not in SUPPORTED:
            shown = f"'{p.suffix}'" if p.suffix else "no extension"
            raise DataError(f"{name}: unsupported file type ({shown}); supported: {', '.join(SUPPORTED)}")
        try:
            with p.open("rb") as handle:
                head = handle.read(SNIFF_BYTES)
        except OSError as exc:
            raise DataError(f"{name}: cannot read file ({exc.strerror or exc})") from exc
        if not head.strip():
            raise DataError(f"{name}: empty file")
        if self.suffix != ".parquet" and b"\x00" in head:
            raise DataError(f"{name}: not a text file (it contains NUL bytes: binary, or UTF-16); save it as UTF-8")
        self._head = head

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower()

    def __iter__(self) -> Iterator[Chunk]:
        first = 0
        for index, raw in enumerate(self._raw_chunks()):
            table = _build(raw, self.name, self.layout, require_labels=False)
            kept = {c: raw.data[_explicit(raw.columns, c, self.name, "--keep-cols")] for c in self.keep_cols}
            yield Chunk(index, first, table, kept)
            first += len(table)
        if first == 0:
            raise DataError(f"{self.name}: no rows")

    # --- readers: each yields _Raw pieces of at most chunk_rows rows, ``where`` counted over the file ---

    def _raw_chunks(self) -> Iterator[_Raw]:
        ext = self.suffix
        if ext == ".parquet":
            yield from self._parquet()
            return
        if ext == ".txt" and self.layout.sep is None:
            yield from self._lines()
        elif ext in (".jsonl", ".ndjson"):
            yield from self._jsonl()
        else:
            sep = self.layout.sep or ("\t" if ext == ".tsv" else ",")
            quoting = self.layout.quoting
            if quoting == "auto":
                quoting = _quoting(self._head.decode("utf-8", errors="replace"), sep)
            yield from (self._delimited(sep, quoting) if self.layout.header else self._headerless(sep, quoting))

    def _text_handle(self, raw: IO[bytes]) -> io.TextIOWrapper:
        return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")

    def _decode_error(self, exc: UnicodeDecodeError) -> DataError:
        return DataError(f"{self.name}: not valid UTF-8 (byte 0x{exc.object[exc.start:exc.start + 1].hex()}); "
                         "save the file as UTF-8")

    def _delimited(self, sep: str, quoting: str) -> Iterator[_Raw]:
        """CSV/TSV with a header, through pandas' chunked reader (quoted newlines and all)."""
        first = 0
        with self.path.open("rb") as raw:
            try:
                reader = pd.read_csv(self._text_handle(raw), sep=sep, dtype=str, keep_default_na=False,
                                     chunksize=self.chunk_rows, engine="c",
                                     quoting=csv.QUOTE_NONE if quoting == "none" else csv.QUOTE_MINIMAL)
                for df in reader:
                    if not isinstance(df.index, pd.RangeIndex):
                        raise DataError(f"{self.name}, row {first + 1}: more fields than the header has columns "
                                        f"({len(df.columns)}); quote texts that contain {_sep_name(sep)}")
                    columns = [str(c) for c in df.columns]
                    yield _Raw(columns, {str(c): df[c].tolist() for c in df.columns},
                               [f"row {first + i + 1}" for i in range(len(df))])
                    first += len(df)
            except pd.errors.EmptyDataError as exc:
                raise DataError(f"{self.name}: empty file") from exc
            except pd.errors.ParserError as exc:
                raise DataError(_parser_message(str(exc), self.name, [], sep)) from None
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc) from None

    def _headerless(self, sep: str, quoting: str) -> Iterator[_Raw]:
        """Rows without a header (columns by position; ragged rows: a missing field is empty)."""
        flags = (self.layout.text_col, self.layout.pair_col, *self.keep_cols)
        named = max((int(c) for c in flags if c is not None and c.isdigit()), default=0)
        with self.path.open("rb") as raw:
            records = headerless_records(self._text_handle(raw), self.name, sep, quoting)
            for piece in self._pieces(records):
                yield positional([r for r, _ in piece], [w for _, w in piece], named)

    def _jsonl(self) -> Iterator[_Raw]:
        with self.path.open("rb") as raw:
            for piece in self._pieces(jsonl_records(self._text_handle(raw), self.name)):
                yield keyed([r for r, _ in piece], [w for _, w in piece])

    def _pieces(self, records: Iterator[tuple[Any, str]]) -> Iterator[list[tuple[Any, str]]]:
        """``records`` in lists of ``chunk_rows`` (the last may be shorter); a bad byte is one DataError."""
        piece: list[tuple[Any, str]] = []
        try:
            for record in records:
                piece.append(record)
                if len(piece) == self.chunk_rows:
                    yield piece
                    piece = []
        except UnicodeDecodeError as exc:
            raise self._decode_error(exc) from None
        if piece:
            yield piece

    def _lines(self) -> Iterator[_Raw]:
        """A .txt file: ``sentence@label`` lines (the sentence is the text) or, where some line has no
        '@', one plain text per line, as ``read_table`` decides; one pass over the file decides first."""
        encoding = "utf-8-sig"
        plain = False
        try:
            with self.path.open(encoding=encoding, newline="") as handle:
                plain = any(line.strip() and "@" not in line for line in handle)
        except UnicodeDecodeError:  # the original PhraseBank files are Latin-1
            encoding = "latin-1"
            with self.path.open(encoding=encoding, newline="") as handle:
                plain = any(line.strip() and "@" not in line for line in handle)
        texts: list[str] = []
        where: list[str] = []
        with self.path.open("rb") as raw:
            for n, line in enumerate(io.TextIOWrapper(raw, encoding=encoding, newline=""), start=1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                texts.append(line if plain else line.rsplit("@", 1)[0])
                where.append(f"line {n}")
                if len(texts) == self.chunk_rows:
                    yield _Raw(["text"], {"text": texts}, where)
                    texts, where = [], []
        if texts:
            yield _Raw(["text"], {"text": texts}, where)

    def _parquet(self) -> Iterator[_Raw]:
        import pyarrow.parquet as pq

        try:
            source = pq.ParquetFile(self.path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{self.name}: not a valid parquet file ({str(exc).strip().splitlines()[0]})") from None
        first = 0
        for batch in source.iter_batches(batch_size=self.chunk_rows):
            data = {str(k): v for k, v in batch.to_pydict().items()}
            first += batch.num_rows
            yield _Raw(list(data), data, [f"row {first - batch.num_rows + i + 1}" for i in range(batch.num_rows)])
