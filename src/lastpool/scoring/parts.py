"""The output of a long scoring run, one finished chunk at a time.

Each chunk's predictions go to their own part file in ``OUTPUT.parts/`` (written, then renamed, so a part
is either complete or absent after a kill); a manifest records what the run scores, so ``--resume`` only
continues a run of the same input, model and settings. When every part is there they are joined, in
chunk order, into a temporary file beside the output that is renamed into place: the output appears
only when complete, and it is the same bytes however often the run was interrupted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lastpool.errors import ConfigError
from lastpool.fileio import atomic_write_text

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
MANIFEST = "manifest.json"


def output_format(path: Path) -> str:
    """The format an output file's suffix names (a clear error for any other)."""
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise ConfigError(f"--output {path}: unsupported format {path.suffix or '(none)'}; "
                          "use .csv, .tsv, .jsonl or .parquet")
    return found


class Parts:
    """The parts folder of one output file."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.folder = output.with_name(output.name + ".parts")
        self.format = output_format(output)

    def part(self, index: int) -> Path:
        return self.folder / f"part-{index:08d}.{self.format}"

    def done(self) -> set[int]:
        """The chunks whose part is complete."""
        if not self.folder.is_dir():
            return set()
        return {int(p.name[5:13]) for p in self.folder.glob(f"part-*.{self.format}") if p.name[5:13].isdigit()}

    def start(self, manifest: dict[str, Any], resume: bool) -> None:
        """Make the folder for a fresh run, or check that an interrupted one is this run (``resume``)."""
        if self.folder.exists() and not resume:
            raise ConfigError(f"{self.folder} holds an interrupted run of this output: pass --resume to go on "
                              "from its last finished chunk, or delete the folder to start over")
        if self.folder.exists():
            saved = self._manifest()
            changed = [key for key in manifest if saved.get(key) != manifest[key]]
            if changed:
                raise ConfigError(f"cannot --resume {self.output}: the interrupted run had other "
                                  f"{', '.join(changed)}; delete {self.folder} to start over")
            return
        self.folder.mkdir(parents=True)
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")

    def _manifest(self) -> dict[str, Any]:
        try:
            saved = json.loads((self.folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(f"cannot --resume {self.output}: {self.folder} has no readable {MANIFEST}; "
                              "delete the folder to start over") from None
        return saved if isinstance(saved, dict) else {}

    def write(self, index: int, rows: Sequence[dict[str, Any]]) -> None:
        """Chunk ``index``'s rows as its part (the first part of a CSV/TSV carries the header)."""
        target = self.part(index)
        tmp = target.with_name(f".{target.name}.tmp")
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(list(rows)), tmp)
        else:
            tmp.write_text(_text_part(rows, self.format, header=index == 0), encoding="utf-8", newline="")
        os.replace(tmp, target)

    def merge(self, n_chunks: int) -> None:
        """Join parts 0 .. n_chunks-1 into the output, then remove the folder."""
        missing = [i for i in range(n_chunks) if not self.part(i).exists()]
        if missing:
            raise ConfigError(f"{self.folder}: parts {missing[:5]} are missing; run again with --resume")
        tmp = self.output.with_name(f".{self.output.name}.tmp")
        try:
            if self.format == "parquet":
                _merge_parquet([self.part(i) for i in range(n_chunks)], tmp)
            else:
                with tmp.open("wb") as out:
                    for i in range(n_chunks):
                        with self.part(i).open("rb") as part:
                            shutil.copyfileobj(part, out, 1 << 20)
            os.replace(tmp, self.output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        shutil.rmtree(self.folder)


def write_rows(output: Path, rows: Sequence[dict[str, Any]]) -> None:
    """A few rows (texts given on the command line) as one complete file, written then renamed."""
    fmt = output_format(output)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(list(rows)), tmp)
        else:
            tmp.write_text(_text_part(rows, fmt, header=True), encoding="utf-8", newline="")
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _cell(value: Any) -> Any:
    """A value for one CSV/TSV cell: a multi-label prediction's labels joined by "|" (names may hold
    commas); other lists and objects as JSON; None as empty."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "|".join(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _text_part(rows: Sequence[dict[str, Any]], fmt: str, header: bool) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter="\t" if fmt == "tsv" else ",",
                            lineterminator="\r\n")
    if header:
        writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _merge_parquet(parts: list[Path], target: Path) -> None:
    """One row group per part, each cast to the first part's schema (a kept column that is empty in one
    chunk has no type there)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _merged_schema(parts)
    with pq.ParquetWriter(target, schema) as writer:
        for part in parts:
            table = pq.read_table(part)
            try:
                writer.write_table(table.select(schema.names).cast(schema))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as exc:
                raise ConfigError(f"{part}: its columns do not match the other chunks' ({exc}); "
                                  "write .csv or .jsonl instead") from None


def _merged_schema(parts: list[Path]) -> Any:
    """The columns' types: each column's first type that is not null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields: dict[str, Any] = {}
    for part in parts:
        for field in pq.read_schema(part):
            if field.name not in fields or pa.types.is_null(fields[field.name].type):
                fields[field.name] = field
    return pa.schema(list(fields.values()))
