"""Run reports (Markdown + self-contained HTML + PNG plots) and the model card.

The browser test opens report.html in headless Chromium: it is skipped when Chromium or chromedriver
is missing, unless LASTPOOL_REQUIRE_BROWSER=1 (set by CI), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from lastpool.evaluation.baseline import beats_baseline_text
from lastpool.evaluation.calibration import reliability_bins
from lastpool.evaluation.metrics import classification_metrics
from lastpool.evaluation.model_card import md_text, model_card, wilson_interval
from lastpool.evaluation.report import RunReport, write_report

LABELS = ["negative", "neutral", "positive"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOT_NAMES = {"training_curves", "confusion_matrix", "reliability", "per_class_f1", "token_lengths"}
EVIL = "<script>alert(1)</script> a | b"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
TEMPERATURE = 1.7
LAYER_SCORES = [0.41, 0.55, 0.68, 0.74, 0.71, 0.66]
CHOSEN_LAYER = 4


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def synthetic_report() -> RunReport:
    rng = np.random.default_rng(0)
    n = 90
    y_true = rng.integers(0, 3, size=n)
    logits = rng.normal(size=(n, 3)) * 2.0
    logits[np.arange(n), y_true] += 2.5  # mostly right, over-confident
    before = _softmax(logits)
    after = _softmax(logits / TEMPERATURE)
    y_pred = before.argmax(axis=1)
    val = classification_metrics(y_true.tolist(), y_pred.tolist(), LABELS, before)
    history = [{"epoch": e, "train_loss": 1.1 / e, "val_loss": 0.9 / e + 0.05 * e, "val_accuracy": 0.5 + 0.08 * e,
                "val_macro_f1": 0.45 + 0.08 * e, "seconds": 3.2} for e in range(1, 5)]
    lengths = rng.integers(5, 90, size=300).tolist()
    return RunReport(
        title="Run report: demo sentiment",
        config={"model": "scratch", "epochs": 4, "lr": 0.001, "pooling": "last", "labels": None,
                "prompt": "{text}\nSentiment:"},
        data={"source": "data/demo_sentiment.csv", "rows": 300,
              "class_counts": {"negative": 90, "neutral": 120, "positive": 90},
              "token_lengths": lengths, "max_length": 64},
        history=history,
        val=val,
        calibration={"temperature": TEMPERATURE, "ece_before": 0.12, "ece_after": 0.04,
                     "log_loss_before": 0.81, "log_loss_after": 0.62},
        reliability_before=reliability_bins(before, y_true.tolist()),
        reliability_after=reliability_bins(after, y_true.tolist()),
        worst_errors=[
            {"text": EVIL, "label": "negative", "predicted": "positive", "confidence": 0.991},
            {"text": "Line one\nline two", "label": "neutral", "predicted": "negative", "confidence": 0.95},
            {"text": "Shares fell 3 %.", "label": "negative", "predicted": "neutral", "confidence": 0.9},
        ],
        best_epoch=3,
    )


@pytest.fixture(scope="module")
def report() -> RunReport:
    return synthetic_report()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, report: RunReport) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("run")
    return folder, write_report(folder, report)


def test_all_files_written(written: tuple[Path, list[Path]]) -> None:
    folder, paths = written
    expected = {folder / "report.md", folder / "report.html"} | {folder / "plots" / f"{p}.png" for p in PLOT_NAMES}
    assert set(paths) == expected
    assert all(p.is_file() for p in expected)
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")], "temporary files left behind"


def test_plots_are_real_pngs(written: tuple[Path, list[Path]]) -> None:
    folder, _ = written
    for name in PLOT_NAMES:
        payload = (folder / "plots" / f"{name}.png").read_bytes()
        assert payload.startswith(PNG_MAGIC), name
        assert 5_000 < len(payload) < 300_000, (name, len(payload))


def test_markdown_content(written: tuple[Path, list[Path]], report: RunReport) -> None:
    folder, _ = written
    md = (folder / "report.md").read_text(encoding="utf-8")
    for heading in ("# Run report: demo sentiment", "## Summary", "## Data", "## Training curves",
                    "## Confusion matrix", "## Per-class scores", "## Calibration", "## Most confident errors",
                    "## Configuration"):
        assert re.search(rf"^{re.escape(heading)}$", md, re.MULTILINE), heading
    for value in (report.val["accuracy"], report.val["macro_f1"], report.val["weighted_f1"],
                  report.val["log_loss"], report.val["ece"]):
        assert f"{value:.4f}" in md
    assert "| best epoch | 3 |" in md
    assert "1.7000" in md  # temperature
    low, high = wilson_interval(report.val["accuracy"], report.val["n"])
    assert f"{low:.4f} to {high:.4f}" in md
    refs = re.findall(r"!\[[^\]]+\]\((plots/[^)]+\.png)\)", md)
    assert {Path(r).stem for r in refs} == PLOT_NAMES
    assert all((folder / r).is_file() for r in refs)
    # Error texts are escaped: a table row stays one row, and no raw HTML reaches a Markdown renderer.
    assert "<script>" not in md
    assert md_text(EVIL) in md
    assert "a \\| b" in md
    assert "Line one<br>line two" in md
    error_rows = [line for line in md.splitlines() if line.startswith("| 0.9")]
    assert len(error_rows) == 3 and all(line.count(" | ") == 3 for line in error_rows)
    # Truncation share of the data section matches the lengths.
    lengths = report.data["token_lengths"]
    share = sum(v > 64 for v in lengths) / len(lengths)
    assert f"{share:.1%} of texts" in md


def test_html_is_self_contained_and_escaped(written: tuple[Path, list[Path]]) -> None:
    folder, _ = written
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert 'src="plots' not in page
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert len(sources) == len(PLOT_NAMES)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    for s in sources:
        assert base64.b64decode(s.split(",", 1)[1]).startswith(PNG_MAGIC)
    imgs = re.findall(r"<img [^>]*>", page)
    assert len(imgs) == len(PLOT_NAMES)
    assert all(' alt="' in tag and 'class="plot"' in tag and ' id="plot-' in tag for tag in imgs)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a | b" in page
    assert "<style>" in page and "<link" not in page
    assert "<title>Run report: demo sentiment</title>" in page


def test_report_without_optional_data(tmp_path: Path, report: RunReport) -> None:
    """No history, lengths or calibration: the sections say so and no plot is referenced that is missing."""
    bare = RunReport(**{**report.__dict__, "history": [], "calibration": None, "reliability_after": None,
                        "worst_errors": [], "data": {"source": "x.csv", "rows": 3, "class_counts": {}}})
    paths = write_report(tmp_path, bare)
    names = {p.stem for p in paths if p.suffix == ".png"}
    assert names == {"confusion_matrix", "reliability", "per_class_f1"}
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "No per-epoch history was recorded." in md
    assert "No temperature was fitted" in md
    assert {Path(r).stem for r in re.findall(r"\]\((plots/[^)]+)\)", md)} == names


def with_baseline_and_layers(report: RunReport, baseline_gap: float) -> RunReport:
    """``report`` plus a bag-of-words baseline ``baseline_gap`` below the model's accuracy and layer scores."""
    baseline = {"model": "TF-IDF + linear SVM", "accuracy": report.val["accuracy"] - baseline_gap,
                "macro_f1": 0.4321, "seconds": 1.25}
    return RunReport(**{**report.__dict__, "baseline": baseline, "layer_scores": LAYER_SCORES,
                        "chosen_layer": CHOSEN_LAYER})


@pytest.mark.parametrize(("gap", "verdict"), [(0.05, "beats"), (-0.05, "does not beat")])
def test_report_with_baseline_and_layer_scores(tmp_path: Path, report: RunReport, gap: float, verdict: str) -> None:
    """A run with a baseline and --layer auto scores shows the comparison sentence, the baseline rows, the
    layer-choice section and its plot, in Markdown and HTML alike."""
    extra = with_baseline_and_layers(report, gap)
    assert extra.baseline is not None
    paths = write_report(tmp_path, extra)
    plot = tmp_path / "plots" / "layer_scores.png"
    assert plot in paths and plot.read_bytes().startswith(PNG_MAGIC)
    sentence = beats_baseline_text(report.val["accuracy"], extra.baseline)
    assert sentence.startswith(f"{verdict} a bag-of-words baseline (TF-IDF + linear SVM, accuracy ")
    assert sentence.endswith(f"{100 * gap:+.2f} points of accuracy")
    baseline_accuracy = f"{extra.baseline['accuracy']:.4f}"

    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert md_text(f"The model {sentence}.") in md
    assert f"| bag-of-words baseline accuracy | {baseline_accuracy} |" in md
    assert "| bag-of-words baseline macro-F1 | 0.4321 |" in md
    headings = re.findall(r"^## (.+)$", md, re.MULTILINE)
    assert headings.index("Layer choice") == headings.index("Data") + 1  # before training, where it happened
    assert "block 4 (probe accuracy 0.7400); block 6" in md and "scores 0.6600" in md
    assert "`--layer auto`" in md and "cross-validated linear probe on the training split" in md
    refs = re.findall(r"!\[[^\]]+\]\((plots/[^)]+\.png)\)", md)
    assert {Path(r).stem for r in refs} == PLOT_NAMES | {"layer_scores"}

    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.escape(f"The model {sentence}.") in page
    assert f'<td>bag-of-words baseline accuracy</td><td class="num">{baseline_accuracy}</td>' in page
    assert '<td>bag-of-words baseline macro-F1</td><td class="num">0.4321</td>' in page
    assert "<h2>Layer choice</h2>" in page and "<code>--layer auto</code>" in page
    inlined = re.search(r'id="plot-layer_scores"[^>]* src="data:image/png;base64,([^"]+)"', page)
    assert inlined is not None and base64.b64decode(inlined.group(1)) == plot.read_bytes()
    assert len(re.findall(r"<img [^>]*>", page)) == len(PLOT_NAMES) + 1


def test_layer_choice_when_the_last_block_wins(tmp_path: Path, report: RunReport) -> None:
    """Choosing the last block says so, rather than comparing the block with itself."""
    write_report(tmp_path, RunReport(**{**report.__dict__, "layer_scores": [0.5, 0.6, 0.7], "chosen_layer": 3}))
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    section = md.split("## Layer choice\n", 1)[1].split("\n## ", 1)[0]
    assert "block 3 (probe accuracy 0.7000), the last one" in section and "scores 0." not in section
    assert "bag-of-words" not in md


def test_report_without_baseline_or_layer_scores_shows_neither(written: tuple[Path, list[Path]]) -> None:
    """No baseline and no layer scores: no sentence, no rows, no layer section and no layer plot anywhere."""
    folder, paths = written
    assert not (folder / "plots" / "layer_scores.png").exists()
    assert all(p.name != "layer_scores.png" for p in paths)
    for name in ("report.md", "report.html"):
        text = (folder / name).read_text(encoding="utf-8")
        for absent in ("bag-of-words", "baseline", "Layer choice", "layer_scores", "--layer"):
            assert absent not in text, (name, absent)


def _stub_classifier(report: RunReport, **extra: Any) -> SimpleNamespace:
    """Just the attributes runs.run_metrics and runs.run_report read from a trained Classifier."""
    n = report.val["n"]
    logits = np.random.default_rng(0).normal(size=(n, len(LABELS)))
    result = SimpleNamespace(val_metrics=report.val, best_epoch=report.best_epoch, history=report.history,
                             optimizer_steps=10, train_seconds=1.0, train_samples_per_second=100.0)
    spec = SimpleNamespace(labels=LABELS, temperature=1.0, task="single")
    return SimpleNamespace(result=result, calibration=None, spec=spec,
                           validation={"logits": logits, "labels": [i % 3 for i in range(n)],
                                       "texts": [f"text {i}" for i in range(n)]}, **extra)


def test_run_metrics_and_report_carry_baseline_and_layer_scores(report: RunReport) -> None:
    """metrics.json always has the baseline and layer_scores keys (None when not computed), and the run's
    values reach the report."""
    from lastpool.runs import run_metrics, run_report  # imports the Classifier (torch): only here

    config = SimpleNamespace(model_dump=lambda mode: {"epochs": 1}, max_length=64)
    bare = _stub_classifier(report)
    assert run_metrics(bare)["baseline"] is None and run_metrics(bare)["layer_scores"] is None  # type: ignore[arg-type]
    bare_report = run_report(bare, config, {"source": "x.csv"}, [])  # type: ignore[arg-type]
    assert bare_report.baseline is None and bare_report.layer_scores is None and bare_report.chosen_layer is None
    baseline = {"model": "TF-IDF + linear SVM", "accuracy": 0.5, "macro_f1": 0.4, "seconds": 1.0}
    full = _stub_classifier(report, baseline=baseline, layer_scores=LAYER_SCORES, chosen_layer=CHOSEN_LAYER)
    metrics = run_metrics(full)  # type: ignore[arg-type]
    assert metrics["baseline"] == baseline and metrics["layer_scores"] == LAYER_SCORES
    json.dumps(metrics)  # still JSON
    full_report = run_report(full, config, {"source": "x.csv"}, [])  # type: ignore[arg-type]
    assert (full_report.baseline, full_report.layer_scores, full_report.chosen_layer) == (
        baseline, LAYER_SCORES, CHOSEN_LAYER)


def test_wilson_interval() -> None:
    low, high = wilson_interval(0.8, 100)
    assert low == pytest.approx(0.7112, abs=1e-4) and high == pytest.approx(0.8666, abs=1e-4)
    low, high = wilson_interval(1.0, 20)
    assert high == 1.0 and 0.8 < low < 0.85  # not zero-width at 100%
    assert wilson_interval(0.5, 0) == (0.0, 1.0)


def _spec(backbone: dict[str, Any]) -> dict[str, Any]:
    return {"backbone": backbone, "labels": LABELS, "pooling": "last", "prompt": "{text}\nSentiment:",
            "max_length": 64, "precision": "bf16", "mode": "lora", "temperature": TEMPERATURE,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "merged": False},
            "tokenizer": {"type": "pretrained", "source": "Qwen/Qwen2.5-0.5B", "vocab_size": 151665,
                          "pad_token_id": 151643},
            "library_version": "0.1.0"}


def test_model_card_pretrained(report: RunReport) -> None:
    spec = _spec({"type": "pretrained", "source": "Qwen/Qwen2.5-0.5B", "kind": "hub", "model_type": "qwen2",
                  "sha256": None, "config": {"hidden_size": 896}, "layer": 22})
    card = model_card(spec, report.data, report.val, report.calibration)
    assert card.startswith("---\n") and "base_model: Qwen/Qwen2.5-0.5B" in card
    assert all(f"`{label}`" in card for label in LABELS)
    assert "`Qwen/Qwen2.5-0.5B`" in card and "`qwen2`" in card and "block 22" in card
    assert "`lora`" in card and "`bf16`" in card and "64 tokens" in card
    low, high = wilson_interval(report.val["accuracy"], report.val["n"])
    assert f"| accuracy | {report.val['accuracy']:.4f} | {low:.4f} to {high:.4f} |" in card
    assert f"Wilson (binomial) 95% interval on the {report.val['n']} validation texts" in card
    assert "T = 1.7000" in card
    assert 'lastpool predict path/to/model "the text to classify"' in card
    assert 'clf = Classifier.load("path/to/model")' in card
    assert "`data/demo_sentiment.csv`" in card and "| neutral | 120 |" in card
    for limit in ("## Intended use and limits", "label set is fixed", "human review", "first 64 tokens"):
        assert limit in card


def test_model_card_scratch_with_intervals(report: RunReport) -> None:
    spec = _spec({"type": "scratch", "config": {"vocab_size": 2000, "context_length": 128, "d_model": 128,
                                                "n_layers": 2, "n_heads": 4, "d_ff": 512}})
    spec.update(mode="full", lora=None, prompt="{text}")
    intervals = {"accuracy": {"n": 10, "mean": 0.71, "std": 0.03, "ci95_low": 0.6885, "ci95_high": 0.7315},
                 "macro_f1": {"n": 10, "mean": 0.66, "std": 0.04, "ci95_low": 0.6314, "ci95_high": 0.6886}}
    card = model_card(spec, report.data, report.val, None, intervals)
    assert "from scratch" in card and "d\\_model 128" in card and "base_model" not in card
    assert "0.7100 ± 0.0300 | 0.6885 to 0.7315" in card and "macro-F1" in card
    assert "(10 runs)" in card and "Wilson" not in card
    assert "Prompt: none" in card and "No temperature was fitted" not in card  # spec temperature 1.7 is shown
    assert "softmax(logits / 1.7000)" in card


def _browser_unavailable() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"{path} is not installed (apt-get install chromium chromium-driver)"
    return None


def _require_browser() -> None:
    """Skip when there is no browser, except where CI demands one (then fail, so it cannot hide)."""
    missing = _browser_unavailable()
    if missing:
        if os.environ.get("LASTPOOL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LASTPOOL_REQUIRE_BROWSER=1 but the browser test cannot run: {missing}")
        pytest.skip(missing)


def test_missing_browser_skips_or_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A missing chromedriver skips the browser test, or fails it under LASTPOOL_REQUIRE_BROWSER=1, and
    the message names what is missing (whatever this machine has installed)."""
    pytest.importorskip("selenium")
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path(sys.executable))  # some executable that exists
    monkeypatch.setattr(sys.modules[__name__], "CHROMEDRIVER", tmp_path / "no-chromedriver")
    monkeypatch.delenv("LASTPOOL_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromedriver"):
        _require_browser()
    monkeypatch.setenv("LASTPOOL_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="LASTPOOL_REQUIRE_BROWSER=1 but .*no-chromedriver"):
        _require_browser()


def test_report_renders_in_chromium(written: tuple[Path, list[Path]], report: RunReport) -> None:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder, _ = written
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    profile = folder.parent / f"{folder.name}-chromium-profile"
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get((folder / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(img => ({id: img.id, alt: img.alt, complete: img.complete,"
            " width: img.naturalWidth, height: img.naturalHeight}));")
        assert len(images) == len(PLOT_NAMES)
        assert {img["id"] for img in images} == {f"plot-{name}" for name in PLOT_NAMES}
        for img in images:
            assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
            assert img["alt"]
        assert driver.title == report.title
        assert driver.execute_script("return document.querySelector('h1').textContent;") == report.title
        # The escaped script is shown as text and never ran.
        assert driver.execute_script("return document.scripts.length;") == 0
        assert EVIL in driver.execute_script("return document.body.textContent;")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_train_writes_report_plots_and_model_card(trained_run: Path) -> None:
    """A real `lastpool train` run directory carries the report, its plots and the model card."""
    assert (trained_run / "report.md").is_file() and (trained_run / "report.html").is_file()
    plots = {p.name for p in (trained_run / "plots").glob("*.png")}
    assert {"training_curves.png", "confusion_matrix.png", "reliability.png", "per_class_f1.png",
            "token_lengths.png"} <= plots
    markdown = (trained_run / "report.md").read_text()
    assert "Most confident errors" in markdown or "most confident" in markdown.lower()
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert 0.0 <= metrics["data"]["truncated_share"] <= 1.0 and metrics["calibration"]["temperature"] > 0
    card = (trained_run / "model" / "README.md").read_text()
    assert "negative" in card and "positive" in card and "lastpool predict" in card


def test_report_and_metrics_state_the_same_token_lengths(trained_run: Path) -> None:
    """One formula for the median and the 95th percentile: report.md says what metrics.json records."""
    data = json.loads((trained_run / "metrics.json").read_text())["data"]
    markdown = (trained_run / "report.md").read_text()
    assert (f"median {data['tokens_median']:g}, 95th percentile {data['tokens_p95']}, "
            f"maximum {data['tokens_max']}") in markdown


def test_length_summary_uses_the_true_median_and_nearest_rank_percentile() -> None:
    from lastpool.evaluation.metrics import length_summary

    facts = length_summary([1, 2, 3, 4], 3)
    assert facts["tokens_median"] == 2.5 and facts["tokens_p95"] == 4 and facts["truncated_share"] == 0.25
    assert length_summary(list(range(1, 21)), 100)["tokens_p95"] == 19  # rank ceil(0.95 * 20) = 19
