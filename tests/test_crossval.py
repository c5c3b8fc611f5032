"""Cross-validation and comparisons: structure of the outputs, intervals, and when a winner is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

import lastpool.crossval as crossval
from lastpool.cli import main
from lastpool.config import RunConfig
from lastpool.crossval import compare, fold_plan, summarize
from tests.conftest import TINY_FLAGS, demo_sample, snapshot, write_csv


def test_summary_interval_is_a_t_interval() -> None:
    values = [0.8, 0.9, 0.85, 0.95]
    s = summarize(values)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert s["mean"] == pytest.approx(0.875) and s["std"] == pytest.approx(np.std(values, ddof=1))
    assert (s["ci95_low"], s["ci95_high"]) == pytest.approx((0.875 - half, 0.875 + half))
    assert summarize([0.5]) == {"n": 1, "mean": 0.5, "std": 0.0, "ci95_low": 0.5, "ci95_high": 0.5}


def test_folds_partition_the_data_and_keep_class_shares() -> None:
    labels = ["a"] * 30 + ["b"] * 15 + ["c"] * 9
    plan = fold_plan(labels, 3, [0, 1], 0.1)
    assert len(plan) == 6
    for seed in (0, 1):
        tests = [test for s, _, _, test in plan if s == seed]
        assert sorted(i for t in tests for i in t) == list(range(len(labels)))  # each example tested once
        for _, _, train, test in (p for p in plan if p[0] == seed):
            assert not set(train) & set(test)
            assert [labels[i] for i in test].count("c") == 3
    assert [p[3] for p in plan if p[0] == 0] != [p[3] for p in plan if p[0] == 1]  # reshuffled per seed


def test_cv_command_writes_json_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    out = tmp_path / "cv"
    code = main(["cv", "--data", str(data), "--folds", "3", "--seeds", "2", "--out", str(out), "--quiet", *TINY_FLAGS])
    assert code == 0
    result = json.loads((out / "cv.json").read_text())
    assert len(result["runs"]) == 6 and {(r["seed"], r["fold"]) for r in result["runs"]} == {
        (s, f) for s in (0, 1) for f in range(3)}
    assert sum(r["n_test"] for r in result["runs"] if r["seed"] == 0) == len(texts)
    for name in ("accuracy", "macro_f1", "weighted_f1", "log_loss", "ece", "f1[negative]"):
        s = result["summary"][name]
        assert s["n"] == 6 and s["ci95_low"] <= s["mean"] <= s["ci95_high"]
    assert np.sum(result["confusion_matrix_sum"]) == 2 * len(texts)
    markdown = (out / "report.md").read_text()
    assert "## Summary" in markdown and "accuracy" in markdown and "95%" in markdown
    assert "<table>" in (out / "report.html").read_text() and "http" not in (out / "report.html").read_text()
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "f1[negative]" in printed  # label names are not read as markup


def test_compare_command_pooling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    out = tmp_path / "cmp"
    code = main(["compare", "--data", str(data), "--pooling", "last,mean", "--folds", "2", "--out", str(out),
                 "--quiet", *TINY_FLAGS])
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert {r["name"] for r in result["results"]} == {"pooling=last", "pooling=mean"}
    assert all(len(r["runs"]) == 2 for r in result["results"])
    # the same folds for both settings: paired
    assert [x["n_test"] for x in result["results"][0]["runs"]] == [x["n_test"] for x in result["results"][1]["runs"]]
    verdict = result["verdict"]
    assert verdict["pairs"] == 2 and "p_value" in verdict
    assert (verdict["winner"] is None) == (verdict["p_value"] >= 0.05)
    assert "pooling=last" in (out / "report.md").read_text()


def test_compare_needs_two_values_and_valid_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(tmp_path)
    assert main(["compare", "--pooling", "last", "--out", str(tmp_path / "c")]) == 2
    assert "nothing to compare" in capsys.readouterr().err
    assert main(["compare", "--pooling", "last,median", "--out", str(tmp_path / "c")]) == 2
    assert "pooling" in capsys.readouterr().err
    assert main(["compare", "--pooling", "last,mean", "--metric", "speed", "--out", str(tmp_path / "c")]) == 2
    assert "--metric" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def _fake_cv(scores: dict[str, list[float]]) -> Any:
    def fake(config: RunConfig, texts: Any, labels: Any, folds: int, seeds: Any, on_run: Any = None,
             text_pairs: Any = None, tracking: Any = None, run_prefix: str = "") -> dict:
        values = scores[config.pooling]
        runs = [{"scores": {"accuracy": v}} for v in values]
        return {"task": "single", "runs": runs, "summary": {"accuracy": summarize(values)}}
    return fake


def test_winner_only_beyond_the_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RunConfig()
    clear = {"last": [0.90, 0.91, 0.92, 0.90, 0.91], "mean": [0.85, 0.86, 0.86, 0.84, 0.85]}
    monkeypatch.setattr(crossval, "cross_validate", _fake_cv(clear))
    result = compare(cfg, [], [], {"pooling": ["mean", "last"]}, 5, [0])
    assert result["verdict"]["winner"] == "pooling=last" and result["verdict"]["p_value"] < 0.05
    noisy = {"last": [0.90, 0.84, 0.93, 0.85, 0.91], "mean": [0.88, 0.89, 0.85, 0.90, 0.86]}
    monkeypatch.setattr(crossval, "cross_validate", _fake_cv(noisy))
    result = compare(cfg, [], [], {"pooling": ["mean", "last"]}, 5, [0])
    assert result["verdict"]["best"] == "pooling=last" and result["verdict"]["winner"] is None
