"""Readers, label sets and the stratified split: every format, auto-detection and every bad input."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from lastpool.data import LabelSet, Table, load_demo, read_table, stratified_split
from lastpool.errors import ConfigError, DataError

FPB_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "financial_phrasebank"


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def fail(path: Path | str, **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        read_table(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# --- formats ------------------------------------------------------------------------------------------


def test_csv_basic(tmp_path: Path) -> None:
    p = write(tmp_path / "d.csv", 'text,label\nhello  world,pos\n"a, b",neg\nNA,neg\n')
    t = read_table(p)
    assert isinstance(t, Table)
    assert t.texts == ["hello  world", "a, b", "NA"]
    assert t.labels == ["pos", "neg", "neg"]
    assert t.source == str(p)
    assert len(t) == 3


def test_csv_utf8_bom_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes("\ufefftext,label\r\nGrüße,a\r\nnull,b\r\n".encode())
    t = read_table(p)
    assert t.texts == ["Grüße", "null"]
    assert t.labels == ["a", "b"]


def test_tsv(tmp_path: Path) -> None:
    p = write(tmp_path / "d.TSV", "sentence\tsentiment\nx, y and z\t1\nw\t0\n")
    t = read_table(p)
    assert t.texts == ["x, y and z", "w"]
    assert t.labels == ["1", "0"]


def test_jsonl_and_ndjson(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 0}, {"text": "b", "label": 1}, {"text": "c", "label": 1.0}]
    body = "\n".join(json.dumps(r) for r in rows) + "\n\n"
    for ext in ("jsonl", "ndjson"):
        t = read_table(write(tmp_path / f"d.{ext}", body))
        assert t.texts == ["a", "b", "c"]
        assert t.labels == ["0", "1", "1"]


def test_parquet_with_nan_promoted_int_labels(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    pd.DataFrame({"review": ["good", "bad", "meh"], "target": [1.0, 0.0, 2.0]}).to_parquet(p)
    t = read_table(p)
    assert t.texts == ["good", "bad", "meh"]
    assert t.labels == ["1", "0", "2"]


def test_parquet_missing_label_names_row(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["good", "bad"], "label": [1.0, float("nan")]}).to_parquet(p)
    msg = fail(p)
    assert "d.parquet" in msg and "row 2" in msg and "missing label" in msg
    assert read_table(p, require_labels=False).labels is None


def test_phrasebank_utf8_and_last_at(tmp_path: Path) -> None:
    p = write(tmp_path / "fpb.txt", "Email me@x.com now@positive\nSeppälä fell .@negative\n\n  \nok@neutral")
    t = read_table(p)
    assert t.texts == ["Email me@x.com now", "Seppälä fell .", "ok"]
    assert t.labels == ["positive", "negative", "neutral"]


def test_phrasebank_latin1_fallback(tmp_path: Path) -> None:
    p = write(tmp_path / "fpb.txt", "Åland grew .@positive\r\nMäki said .@neutral\r\n", encoding="latin-1")
    t = read_table(p)
    assert t.texts == ["Åland grew .", "Mäki said ."]
    assert t.labels == ["positive", "neutral"]


def test_phrasebank_prediction_input(tmp_path: Path) -> None:
    plain = write(tmp_path / "plain.txt", "first text\n\nsecond text\n")
    t = read_table(plain, require_labels=False)
    assert t.texts == ["first text", "second text"] and t.labels is None
    mixed = write(tmp_path / "mixed.txt", "a@neutral\nno label here\n")
    t = read_table(mixed, require_labels=False)
    assert t.texts == ["a@neutral", "no label here"] and t.labels is None
    labelled = write(tmp_path / "lab.txt", "a@neutral\nb@positive\n")
    assert read_table(labelled, require_labels=False).labels == ["neutral", "positive"]


def test_phrasebank_line_without_at(tmp_path: Path) -> None:
    p = write(tmp_path / "fpb.txt", "a@neutral\n\nno label here\n")
    msg = fail(p)
    assert "fpb.txt, line 3" in msg and "@" in msg


def test_phrasebank_empty_text_and_label(tmp_path: Path) -> None:
    assert "fpb.txt, line 2: empty text" in fail(write(tmp_path / "fpb.txt", "a@x\n  @y\n"))
    assert "fpb.txt, line 2: missing label" in fail(write(tmp_path / "fpb.txt", "a@x\nb@ \n"))


# --- column detection ---------------------------------------------------------------------------------


def test_autodetect_case_insensitive(tmp_path: Path) -> None:
    t = read_table(write(tmp_path / "d.csv", "id,Content,Category\n1,hi,a\n2,yo,b\n"))
    assert t.texts == ["hi", "yo"] and t.labels == ["a", "b"]


def test_two_column_fallback(tmp_path: Path) -> None:
    t = read_table(write(tmp_path / "d.csv", "headline,label\nhi,a\nyo,b\n"))
    assert t.texts == ["hi", "yo"]


def test_explicit_columns(tmp_path: Path) -> None:
    p = write(tmp_path / "d.csv", "title,body,y\nt1,b1,a\nt2,b2,b\n")
    t = read_table(p, text_col="body", label_col="y")
    assert t.texts == ["b1", "b2"] and t.labels == ["a", "b"]


def test_explicit_column_missing(tmp_path: Path) -> None:
    p = write(tmp_path / "d.csv", "title,body,y\nt1,b1,a\n")
    msg = fail(p, text_col="nope", label_col="y")
    assert "d.csv" in msg and "'nope'" in msg and "title, body, y" in msg
    msg = fail(p, text_col="body", label_col="missing")
    assert "'missing'" in msg and "--label-col" in msg


def test_no_text_column(tmp_path: Path) -> None:
    msg = fail(write(tmp_path / "d.csv", "a,b,label\n1,2,x\n"))
    assert "d.csv: no text column" in msg and "a, b, label" in msg and "--text-col" in msg


def test_no_label_column(tmp_path: Path) -> None:
    p = write(tmp_path / "d.csv", "a,b\n1,2\n")
    assert fail(p) == f"{p}: no label column; found columns: a, b; pass --label-col"


def test_label_optional_for_prediction(tmp_path: Path) -> None:
    t = read_table(write(tmp_path / "d.csv", "whatever\nhello\nworld\n"), require_labels=False)
    assert t.texts == ["hello", "world"] and t.labels is None
    t = read_table(write(tmp_path / "e.csv", "text,label\nhello,a\nworld,\n"), require_labels=False)
    assert t.labels is None


def test_ambiguous_columns(tmp_path: Path) -> None:
    msg = fail(write(tmp_path / "d.csv", "text,review,label\n1,2,x\n"))
    assert "ambiguous" in msg and "text" in msg and "review" in msg and "--text-col" in msg
    msg = fail(write(tmp_path / "e.csv", "text,label,class\n1,2,x\n"))
    assert "ambiguous" in msg and "label, class" in msg


# --- labels -------------------------------------------------------------------------------------------


def test_integer_label_order() -> None:
    ls = LabelSet.from_labels(["10", "2", "1", "2"])
    assert ls.names == ("1", "2", "10")
    assert LabelSet.from_labels(["b", "a", "c"]).names == ("a", "b", "c")
    assert LabelSet.from_labels(["10", "x", "2"]).names == ("10", "2", "x")


def test_labelset_explicit_order_and_roundtrip() -> None:
    ls = LabelSet.from_labels(["pos", "neg", "neu"], order=["neg", "neu", "pos"])
    assert len(ls) == 3 and ls.index("pos") == 2
    ids = ls.encode(["pos", "neg"], source="train")
    assert ids == [2, 0] and ls.decode(ids) == ["pos", "neg"]
    with pytest.raises(DataError, match="'zzz'"):
        LabelSet.from_labels(["a", "zzz"], order=["a", "b"])
    with pytest.raises(ConfigError):
        LabelSet.from_labels(["a", "b"], order=["a", "b", "a"])


def test_single_class() -> None:
    with pytest.raises(DataError, match=r"only one class \('a'\) found; a classifier needs at least two"):
        LabelSet.from_labels(["a", "a"])


def test_label_unseen_in_training() -> None:
    ls = LabelSet.from_labels(["a", "b", "c"])
    with pytest.raises(DataError) as info:
        ls.encode(["a", "foo"], source="validation data eval.csv")
    expected = "validation data eval.csv: label 'foo' never seen in training data (known: a, b, c)"
    assert str(info.value) == expected


# --- bad inputs ---------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert "no such file" in fail(tmp_path / "nope.csv") and "nope.csv" in fail(tmp_path / "nope.csv")
    assert "directory" in fail(tmp_path)


def test_unknown_format(tmp_path: Path) -> None:
    msg = fail(write(tmp_path / "d.xlsx", "x"))
    assert "d.xlsx" in msg and ".xlsx" in msg and ".csv" in msg and ".parquet" in msg


def test_empty_file_and_no_rows(tmp_path: Path) -> None:
    assert "empty file" in fail(write(tmp_path / "d.csv", ""))
    assert "empty file" in fail(write(tmp_path / "d.jsonl", "\n\n"))
    assert "no rows" in fail(write(tmp_path / "h.csv", "text,label\n"))
    assert "empty file" in fail(write(tmp_path / "b.txt", "\n  \n\n"))


def test_empty_text_names_line(tmp_path: Path) -> None:
    p = write(tmp_path / "d.csv", 'text,label\nok,a\n\n"multi\nline",b\n   ,a\n')
    assert fail(p) == f"{p}, line 6: empty text"
    j = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n\n{"text": null, "label": 1}\n')
    assert fail(j) == f"{j}, line 3: empty text"


def test_missing_label_names_line(tmp_path: Path) -> None:
    p = write(tmp_path / "d.csv", "text,label\nok,a\nfine,\n")
    msg = fail(p)
    assert msg.startswith(f"{p}, line 3: missing label")
    j = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n')
    assert fail(j).startswith(f"{j}, line 2: missing label")


def test_undecodable_csv_names_line(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(b"text,label\nok,a\nbad \xff byte,b\n")
    msg = fail(p)
    assert msg.startswith(f"{p}, line 3: not valid UTF-8")
    j = tmp_path / "d.jsonl"
    j.write_bytes(b'{"text": "ok", "label": 1}\n{"text": "\xe9t\xe9", "label": 1}\n')
    assert fail(j).startswith(f"{j}, line 2: not valid UTF-8")


def test_malformed_csv(tmp_path: Path) -> None:
    p = write(tmp_path / "d.csv", 'text,label\nok,a\n"two\nlines",b\ntoo,many,fields\n')
    msg = fail(p)
    assert msg.startswith(f"{p}, line 5: expected 2 fields, saw 3")
    q = write(tmp_path / "q.csv", 'text,label\nok,a\n"never closed,b\nx,y\n')
    assert fail(q).startswith(f"{q}, line 3:")
    first = write(tmp_path / "f.csv", "text,label\na,b,c\nd,e\n")
    assert fail(first).startswith(f"{first}, line 2:")


def test_malformed_jsonl(tmp_path: Path) -> None:
    p = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    assert fail(p).startswith(f"{p}, line 2: not valid JSON")
    q = write(tmp_path / "q.jsonl", '{"text": "a", "label": 1}\n\n["b", 1]\n')
    assert fail(q) == f"{q}, line 3: expected a JSON object, got an array"


def test_not_a_parquet_file(tmp_path: Path) -> None:
    msg = fail(write(tmp_path / "d.parquet", "text,label\na,b\n"))
    assert "d.parquet" in msg and "not a valid parquet file" in msg


def test_texts_kept_as_is(tmp_path: Path) -> None:
    t = read_table(write(tmp_path / "d.jsonl", '{"text": "  two  spaces\\t", "label": "a"}\n'))
    assert t.texts == ["  two  spaces\t"]


# --- demo ---------------------------------------------------------------------------------------------


def test_demo() -> None:
    if not resources.files("lastpool.data").joinpath("demo/financial_news.csv").is_file():
        pytest.skip("demo data not present yet")
    t = load_demo()
    assert t.source == "demo" and t.labels is not None and len(t) > 0
    assert len(set(t.labels)) == 3


def test_demo_reader_and_missing_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lastpool.data.tables as tables

    monkeypatch.setattr(tables.resources, "files", lambda package: tmp_path)
    with pytest.raises(DataError, match="demo data is missing"):
        load_demo()
    write(tmp_path / "x.csv", "text,label\nup,positive\ndown,negative\nflat,neutral\n")
    monkeypatch.setattr(tables, "DEMO_FILE", "x.csv")
    t = load_demo()
    assert t.source == "demo" and t.labels == ["positive", "negative", "neutral"]


# --- split --------------------------------------------------------------------------------------------


def test_split_validation() -> None:
    labels = ["a", "b"] * 10
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError):
            stratified_split(labels, bad, 0)
    with pytest.raises(DataError, match="class 'c' has only 1 example"):
        stratified_split(labels + ["c"], 0.2, 0)
    with pytest.raises(DataError, match="validation split"):
        stratified_split(["a", "a", "b", "b", "c", "c", "a", "b", "c", "a"], 0.1, 0)


def test_split_small_deterministic() -> None:
    labels = ["x"] * 8 + ["y"] * 4
    train, val = stratified_split(labels, 0.25, 3)
    assert sorted(train + val) == list(range(12)) and train == sorted(train) and val == sorted(val)
    assert Counter(labels[i] for i in val) == {"x": 2, "y": 1}
    assert stratified_split(labels, 0.25, 3) == (train, val)


# --- the real Financial PhraseBank ---------------------------------------------------------------------


def fpb(name: str) -> Path:
    path = FPB_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


def test_fpb_allagree() -> None:
    t = read_table(fpb("sentences_allagree.txt"))
    assert len(t) == 2264
    assert t.labels is not None
    assert Counter(t.labels) == {"neutral": 1391, "positive": 570, "negative": 303}
    assert all(not s.endswith(("\n", "\r")) for s in t.texts)


def test_fpb_50agree_latin1() -> None:
    t50 = read_table(fpb("Sentences_50Agree.txt"))
    assert len(t50) == 4846
    assert t50.labels is not None and Counter(t50.labels)["neutral"] == 2879
    assert any("ä" in s or "å" in s or "ñ" in s for s in t50.texts)


def test_fpb_stratified_split() -> None:
    t = read_table(fpb("sentences_allagree.txt"))
    assert t.labels is not None
    train, val = stratified_split(t.labels, 0.1, seed=0)
    assert len(val) == 227 and len(train) == 2264 - 227
    assert set(train).isdisjoint(val)
    total = Counter(t.labels)
    got = Counter(t.labels[i] for i in val)
    for label, n in total.items():
        assert abs(got[label] - n * 227 / 2264) <= 1
    assert stratified_split(t.labels, 0.1, seed=0) == (train, val)
    assert stratified_split(t.labels, 0.1, seed=1) != (train, val)
