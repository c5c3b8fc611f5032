"""Streaming, resumable, sharded batch prediction (``lastpool predict --input F --output F``).

Invariants: a file read in chunks gives the rows ``read_table`` gives; the output does not depend on the
chunk size, on interruptions (SIGKILL, then --resume: the same bytes) or on the number of processes;
a bad input stops before any output exists; memory-bounded reading is not tested here (a benchmark).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import demo_sample, snapshot

from lastpool.classifier import Classifier
from lastpool.cli import main
from lastpool.data.streaming import TableStream
from lastpool.data.tables import TableLayout, read_table
from lastpool.errors import DataError

ROWS = 2400


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROWS demo texts (repeated, with a number so no two are equal) with an id and a label column."""
    texts, labels = demo_sample()
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(ROWS)],
                          "text": [f"{texts[i % len(texts)]} ({i})" for i in range(ROWS)],
                          "label": [labels[i % len(labels)] for i in range(ROWS)]})
    path = tmp_path_factory.mktemp("scoring") / "big.csv"
    frame.to_csv(path, index=False)
    return path


# --- reading in chunks ---------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, tuple[Path, TableLayout]]:
    """One file of each format holding the same texts, with awkward content (quoted newlines, quotes,
    commas, a BOM) and, for the headerless TSV, ragged rows."""
    texts = [f'Text {i}, with "quotes"' + ("\nand a second line" if i % 5 == 0 else "") for i in range(23)]
    frame = pd.DataFrame({"id": list(range(23)), "text": texts})
    frame.to_csv(folder / "t.csv", index=False, encoding="utf-8-sig")
    frame.to_parquet(folder / "t.parquet")
    (folder / "t.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n\n" for i, t in
                                            zip(frame["id"], texts, strict=True)), encoding="utf-8")
    flat = [t.replace("\n", " ") for t in texts]
    (folder / "t.txt").write_text("".join(f"{t}@neutral\n" for t in flat), encoding="utf-8")
    (folder / "t.tsv").write_text("".join(f"{i}\t{t}" + ("\textra" if i % 3 else "") + "\n"
                                          for i, t in enumerate(flat)), encoding="utf-8")
    return {"csv": (folder / "t.csv", TableLayout()), "parquet": (folder / "t.parquet", TableLayout()),
            "jsonl": (folder / "t.jsonl", TableLayout()), "txt": (folder / "t.txt", TableLayout()),
            "tsv-headerless": (folder / "t.tsv", TableLayout(header=False, text_col="2"))}


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl", "txt", "tsv-headerless"])
@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
def test_chunks_hold_the_rows_read_table_reads(tmp_path: Path, kind: str, chunk_rows: int) -> None:
    path, layout = _files(tmp_path)[kind]
    whole = read_table(path, layout=layout, require_labels=False)
    chunks = list(TableStream(path, layout, chunk_rows=chunk_rows))
    assert [t for c in chunks for t in c.table.texts] == whole.texts
    assert all(len(c.table) <= chunk_rows for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.first_row for c in chunks] == [sum(len(d.table) for d in chunks[:i]) for i in range(len(chunks))]


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("content", ['"0\r"\nb\n', "a\rb\r", '"x"\r"y"\n', "a\r\r\nb\n", '"a\rb",x\nc,y\n'])
def test_carriage_returns_read_the_same_whole_and_in_chunks(tmp_path: Path, header: bool, content: str) -> None:
    """A bare CR ends a line (old Mac files), CRLF is one line end, a CR inside quotes stays in the text:
    the same for both readers (the whole-file one once refused a bare CR in a headerless file)."""
    path = tmp_path / "cr.csv"
    path.write_bytes((("text,other\r\n" if header else "") + content).encode())
    layout = TableLayout(header=header, text_col=None if header else "1")
    whole = read_table(path, layout=layout, require_labels=False).texts
    assert whole == [t for c in TableStream(path, layout, chunk_rows=1) for t in c.table.texts]
    assert len(whole) == 2 and "\n" not in "".join(whole)


def test_kept_columns_come_with_their_rows(tmp_path: Path) -> None:
    path, layout = _files(tmp_path)["jsonl"]
    chunks = list(TableStream(path, layout, chunk_rows=5, keep_cols=["id"]))
    assert [i for c in chunks for i in c.kept["id"]] == list(range(23))


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param("text\n" + "ok\n" * 30 + '"never closed\n', "never closed", id="unclosed-quote-late"),
        pytest.param('{"text": "a"}\n' * 30 + "[1, 2]\n", "line 31: expected a JSON object", id="json-late"),
        pytest.param("id,text\n" + "1,ok\n" * 30 + "31,\n", "row 31: empty text", id="empty-text-late"),
        pytest.param("text\n" + "ok\n" * 30 + "a,b\n", "line 32: expected 1 fields, saw 2", id="fields-late"),
    ],
)
def test_a_bad_row_late_in_the_file_is_named(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / ("bad.jsonl" if content.startswith("{") else "bad.csv")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=needle.replace("[", r"\[")):
        list(TableStream(path, chunk_rows=4))


# --- predict --input --output --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_the_output_does_not_depend_on_the_chunk_size(trained_run: Path, big_csv: Path, tmp_path: Path,
                                                      suffix: str) -> None:
    small, large = tmp_path / f"small{suffix}", tmp_path / f"large{suffix}"
    assert main(["predict", str(trained_run), "--input", str(big_csv), "--output", str(small),
                 "--chunk-rows", "97", "--keep-cols", "id", "-q"]) == 0
    assert main(["predict", str(trained_run), "--input", str(big_csv), "--output", str(large), "--keep-cols", "id",
                 "-q"]) == 0
    assert small.read_bytes() == large.read_bytes() if suffix != ".parquet" else \
        pd.read_parquet(small).equals(pd.read_parquet(large))
    frame = pd.read_parquet(small) if suffix == ".parquet" else (
        pd.read_json(small, lines=True, dtype=False) if suffix == ".jsonl" else
        pd.read_csv(small, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False))
    source = pd.read_csv(big_csv, dtype=str)
    assert list(frame.columns[:3]) == ["id", "text", "label"]
    assert frame["id"].tolist() == source["id"].tolist() and frame["text"].tolist() == source["text"].tolist()
    expected = Classifier.load(trained_run).predict(source["text"].tolist()[:300])
    assert frame["label"].tolist()[:300] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([small.name, large.name])  # no parts left


def test_resume_after_sigkill_gives_the_same_bytes(capsys: pytest.CaptureFixture[str], trained_run: Path,
                                                   big_csv: Path, tmp_path: Path) -> None:
    whole, resumed = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    args = [str(trained_run), "--input", str(big_csv), "--chunk-rows", "8", "--keep-cols", "id", "-q"]
    assert main(["predict", *args, "--output", str(whole)]) == 0
    parts = tmp_path / "resumed.jsonl.parts"
    proc = subprocess.Popen([sys.executable, "-m", "lastpool", "predict", *args, "--output", str(resumed)],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("part-*"))) < 5 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not resumed.exists(), "the run finished before it could be killed: the test proves nothing"
    finished = len(list(parts.glob("part-*")))
    assert 5 <= finished < ROWS // 8
    capsys.readouterr()
    assert main(["predict", *args, "--output", str(resumed)]) == 2  # without --resume: refused, nothing lost
    assert "--resume" in capsys.readouterr().err and len(list(parts.glob("part-*"))) == finished
    assert main(["predict", *args, "--output", str(resumed), "--resume"]) == 0
    assert resumed.read_bytes() == whole.read_bytes()
    assert not parts.exists()


def test_resume_refuses_a_changed_input(capsys: pytest.CaptureFixture[str], trained_run: Path, big_csv: Path,
                                        tmp_path: Path) -> None:
    output = tmp_path / "p.csv"
    parts = tmp_path / "p.csv.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"input": {"path": "elsewhere"}}), encoding="utf-8")
    before = snapshot(tmp_path)
    assert main(["predict", str(trained_run), "--input", str(big_csv), "--output", str(output), "--resume"]) == 2
    assert "had other input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_two_processes_write_what_one_writes(trained_run: Path, big_csv: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    args = [str(trained_run), "--input", str(big_csv), "--chunk-rows", "200", "-q"]
    assert main(["predict", *args, "--output", str(one)]) == 0
    proc = subprocess.run([sys.executable, "-m", "lastpool", "predict", *args, "--output", str(two),
                           "--num-processes", "2"], capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    first, second = pd.read_csv(one), pd.read_csv(two)
    assert first["text"].tolist() == second["text"].tolist() and first["label"].tolist() == second["label"].tolist()
    probs = [c for c in first.columns if c.startswith("prob_")]
    assert (first[probs] - second[probs]).abs().to_numpy().max() <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "two.csv"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        pytest.param(["--keep-cols", "nope"], "no column 'nope' (--keep-cols)", id="keep-missing-column"),
        pytest.param(["--keep-cols", "label"], "--keep-cols label: the predictions have a column", id="keep-clash"),
        pytest.param(["--keep-cols", "id,"], "an empty column name", id="keep-empty-name"),
    ],
)
def test_bad_keep_cols(capsys: pytest.CaptureFixture[str], trained_run: Path, big_csv: Path, tmp_path: Path,
                       extra: list[str], needle: str) -> None:
    before = snapshot(tmp_path)
    assert main(["predict", str(trained_run), "--input", str(big_csv), "--output", str(tmp_path / "p.csv"),
                 *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert snapshot(tmp_path) == before


def test_a_bad_row_stops_before_any_output(capsys: pytest.CaptureFixture[str], trained_run: Path,
                                           tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,text\n" + "1,Sales rose .\n" * 500 + "501,\n", encoding="utf-8")
    before = snapshot(tmp_path)
    assert main(["predict", str(trained_run), "--input", str(source), "--output", str(tmp_path / "p.csv"),
                 "--chunk-rows", "16"]) == 2
    assert "row 501: empty text" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_file_flags_need_a_file_in_and_out(capsys: pytest.CaptureFixture[str], trained_run: Path) -> None:
    assert main(["predict", str(trained_run), "Sales rose .", "--resume"]) == 2
    assert "--resume: only with --input FILE and --output FILE" in capsys.readouterr().err
