"""Generated inputs: the server's OpenAPI schema fuzzed with Schemathesis against a real uvicorn server, and
the table readers fed random bytes, encodings, quoting and ragged rows with Hypothesis.

Invariants: the server never answers 5xx, every answer matches the schema, every request the schema
admits is accepted and every one it does not is refused with a 4xx; a reader either returns a table or
raises one DataError (one line, naming the file), never another exception. The example counts are small
here (the suite's time) and drawn from a fixed seed (derandomize), so CI sees the same cases every run;
benchmarks/fuzz_serve.py runs the long, random versions.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lastpool import Classifier
from lastpool.data.streaming import TableStream
from lastpool.data.tables import TableLayout, read_table
from lastpool.errors import DataError
from tests.conftest import TINY_KW, demo_sample
from tests.test_serve import AUTH, KEY, running

schemathesis = pytest.importorskip("schemathesis")
EXAMPLES = int(os.environ.get("LASTPOOL_FUZZ_EXAMPLES", "40"))  # per operation and mode


@pytest.fixture(scope="module")
def served_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from lastpool.serving import create_app

    texts, labels = demo_sample()
    clf = Classifier(**TINY_KW, seed=0).fit(texts, labels)
    with running(create_app(clf, max_batch=8, max_body_bytes=20_000, api_key=KEY, batch_wait_ms=0)) as url:
        yield url


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_the_server_keeps_its_schema(served_url: str, mode: str) -> None:
    """Every operation, with requests the schema admits (positive) and ones it does not (negative).
    (Schemathesis's pytest loader does not run under pytest 9: the cases are drawn with its strategies.)"""
    schema = schemathesis.openapi.from_url(f"{served_url}/openapi.json")
    generation = schemathesis.GenerationMode.POSITIVE if mode == "positive" else schemathesis.GenerationMode.NEGATIVE
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/classify", "/classify", "/v1/model", "/health"}
    for operation in operations:
        if mode == "negative" and operation.method.upper() != "POST":
            continue  # a GET without parameters has no request that breaks its schema
        @given(case=operation.as_strategy(generation_mode=generation))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)
        def check(case: Any) -> None:
            case.call_and_validate(headers=AUTH)

        check()


# --- the readers ---------------------------------------------------------------------------------------

FIELD = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
SUFFIXES = (".csv", ".tsv", ".jsonl", ".txt")


def _read_both(path: Path, layout: TableLayout) -> tuple[Any, Any]:
    """Each reader's outcome: its texts, or the DataError's message (anything else escapes)."""
    outcomes = []
    for read in (lambda: read_table(path, layout=layout, require_labels=False).texts,
                 lambda: [t for c in TableStream(path, layout, chunk_rows=3) for t in c.table.texts]):
        try:
            outcomes.append(read())
        except DataError as exc:
            message = str(exc)
            assert "\n" not in message.strip() and str(path) in message, message
            outcomes.append(None)
    return outcomes[0], outcomes[1]


@given(data=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES), header=st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
def test_random_bytes_give_a_table_or_one_error(tmp_path: Path, data: bytes, suffix: str, header: bool) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    _read_both(path, TableLayout(header=header, text_col=None if header else "1"))


@given(rows=st.lists(st.lists(FIELD, min_size=1, max_size=4), min_size=1, max_size=12),
       sep=st.sampled_from([",", "\t", ";"]), quoting=st.sampled_from(["csv", "none"]),
       bom=st.booleans(), encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]),
       terminator=st.sampled_from(["\n", "\r\n"]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
def test_ragged_quoted_rows_in_any_encoding(tmp_path: Path, rows: list[list[str]], sep: str, quoting: str,
                                            bom: bool, encoding: str, terminator: str) -> None:
    """Headerless, ragged, with or without CSV quoting, a BOM, another encoding, LF or CRLF line ends: the
    streamed chunks and the whole-file reader agree, and a UTF-8 file written with CSV quoting reads back
    its first column (where the writer quoted every CR: it leaves a lone CR unquoted under LF line ends,
    and a bare CR ends a line)."""
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=sep, lineterminator=terminator).writerows(rows)
    text = ("\ufeff" if bom else "") + buffer.getvalue()
    path = tmp_path / "fuzz.csv"
    try:
        path.write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        return  # latin-1 cannot hold these characters: not a file anyone has
    layout = TableLayout(header=False, text_col="1", sep=sep, quoting=quoting)  # type: ignore[arg-type]
    whole, streamed = _read_both(path, layout)
    assert whole == streamed
    readable = [r for r in rows if any(f.strip() for f in r)]
    quoted_cr = terminator == "\r\n" or not any("\r" in f for r in rows for f in r)
    if whole is not None and encoding == "utf-8" and quoting == "csv" and quoted_cr and \
            all(r[0].strip() for r in readable):
        assert whole == [r[0] for r in readable]


@given(values=st.lists(st.one_of(st.none(), st.integers(), st.floats(), FIELD, st.lists(FIELD, max_size=2)),
                       min_size=1, max_size=8))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
def test_jsonl_of_any_json_values(tmp_path: Path, values: list[Any]) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps({"text": v, "id": i}) + "\n" for i, v in enumerate(values)), encoding="utf-8")
    whole, streamed = _read_both(path, TableLayout())
    assert whole == streamed
