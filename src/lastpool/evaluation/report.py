"""Run reports: ``report.md`` beside ``plots/*.png``, and a self-contained ``report.html``.

This module only decides what the report says: it builds one ``render.Document`` from the run's data,
and ``render`` writes both files from it, so they always say the same thing. The HTML file inlines
every plot as a ``data:`` URI and its CSS in a ``<style>`` tag, and a Content-Security-Policy forbids
any other source: it can be mailed or archived alone and opens offline. All text that comes from the
run (labels, texts, paths, config values) is escaped by ``render`` for the format it goes into.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lastpool.evaluation import plots
from lastpool.evaluation.baseline import beats_baseline_text
from lastpool.evaluation.metrics import length_summary, metric_title
from lastpool.evaluation.model_card import wilson_interval
from lastpool.evaluation.render import (
    Block,
    Code,
    Document,
    Figure,
    Heading,
    Inline,
    Para,
    Table,
    fmt,
    render_html,
    render_markdown,
)
from lastpool.fileio import atomic_write_text, staged_file

MAX_ERRORS = 10
MAX_ERROR_CHARS = 400
PLOTS_DIR = "plots"


@dataclass
class RunReport:
    """Everything a report shows about one training run (plain data, so it can come from JSON files)."""

    title: str
    config: dict[str, Any]
    data: dict[str, Any]  # source, rows, class_counts, token_lengths (before truncation), max_length
    history: list[dict[str, Any]]  # per epoch: epoch, train_loss, val_loss, val_accuracy, val_macro_f1, seconds
    val: dict[str, Any]  # classification_metrics() on the validation split
    calibration: dict[str, Any] | None  # temperature, ece_before, ece_after, log_loss_before, log_loss_after
    reliability_before: list[dict[str, Any]]  # reliability_bins() at temperature 1
    reliability_after: list[dict[str, Any]] | None  # reliability_bins() at the fitted temperature
    worst_errors: list[dict[str, Any]]  # text, label, predicted, confidence; most confident first
    best_epoch: int
    baseline: dict[str, Any] | None = None  # bag_of_words_baseline(): model, accuracy, macro_f1, seconds
    layer_scores: list[float] | None = None  # --layer auto: probe accuracy after each block 1..L (training split)
    chosen_layer: int | None = None  # the 1-based block the classifier pools after
    fusion: dict[str, Any] | None = None  # share, weight, language_model {accuracy, macro_f1}
    task: str = "single"  # single, multilabel or regression: which sections and plots apply
    values: list[tuple[float, float]] | None = None  # regression: (true, predicted) per validation text


def _figure(pngs: dict[str, bytes], name: str, alt: str) -> list[Block]:
    """The plot ``name`` as a figure, or nothing where the run had no data for it."""
    if name not in pngs:
        return []
    return [Figure(alt, f"{PLOTS_DIR}/{name}.png", pngs[name], id=f"plot-{name}")]


def _config_value(value: Any) -> str:
    """Strings as they are (control characters made visible), anything else as JSON."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)[1:-1] if any(ord(c) < 32 for c in value) else value
    return json.dumps(value, ensure_ascii=False, default=str)


def _shorten(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# ----------------------------------------------------------------------------- content
def _summary(report: RunReport) -> list[Block]:
    val = report.val
    n = int(val.get("n", 0))
    accuracy = val.get("accuracy")
    acc_text = fmt(accuracy)
    if accuracy is not None and n:
        low, high = wilson_interval(float(accuracy), n)
        acc_text += f" (95% Wilson interval {low:.4f} to {high:.4f})"
    rows = [
        ["validation texts", str(n)],
        ["accuracy", acc_text],
        ["macro-F1", fmt(val.get("macro_f1"))],
    ]
    baseline = report.baseline
    fused = report.fusion if report.fusion and report.fusion.get("share") else None
    if fused is not None:
        alone = fused.get("language_model") or {}
        rows += [
            ["bag-of-words share (chosen on validation)", f"{float(fused['share']):g}"],
            ["language model alone: accuracy", fmt(alone.get("accuracy"))],
            ["language model alone: macro-F1", fmt(alone.get("macro_f1"))],
        ]
    if baseline is not None:
        rows += [
            ["bag-of-words baseline accuracy", fmt(baseline.get("accuracy"))],
            ["bag-of-words baseline macro-F1", fmt(baseline.get("macro_f1"))],
        ]
    rows += [
        ["weighted F1", fmt(val.get("weighted_f1"))],
        ["log loss", fmt(val.get("log_loss"))],
        ["ECE (expected calibration error)", fmt(val.get("ece"))],
    ]
    cal = report.calibration
    if cal is not None:
        rows += [
            ["temperature", fmt(cal.get("temperature"))],
            ["log loss after temperature scaling", fmt(cal.get("log_loss_after"))],
            ["ECE after temperature scaling", fmt(cal.get("ece_after"))],
        ]
    rows.append(["best epoch", str(report.best_epoch)])
    blocks: list[Block] = [
        Heading(2, "Summary"),
        Para(["Scores on the validation split, for the model of the best epoch. "
              "Log loss and ECE are for the uncalibrated probabilities (temperature 1)."]),
        Table(["metric", "value"], rows, [False, True]),
    ]
    if baseline is not None:
        blocks.append(Para([_baseline_sentence(accuracy, baseline)]))
    if fused is not None:
        blocks.append(Para(_fusion_sentence(fused, baseline)))
    return blocks


def _fusion_sentence(fusion: dict[str, Any], baseline: dict[str, Any] | None) -> list[Inline]:
    """What the fused model is, and the language model alone against the baseline: the model's scores
    above include the bag-of-words model's, so they alone would flatter the LM."""
    share = float(fusion["share"])
    parts: list[Inline] = [
        f"The model adds the bag-of-words model's scores to the language model's (share {share:g} of the "
        "fused score, chosen on the validation split by log loss). An export (", Code("lastpool export"),
        ") holds the language model alone."]
    alone = (fusion.get("language_model") or {}).get("accuracy")
    if baseline is not None and alone is not None:
        parts.append(f" The language model alone {beats_baseline_text(float(alone), baseline)}.")
    return parts


def _baseline_sentence(accuracy: Any, baseline: dict[str, Any]) -> str:
    """The model against the bag-of-words baseline; the baseline's cost is given too, since a small gain
    over a model fitted in seconds is a reason to question the bigger one."""
    fitted = (f"The baseline is fitted on the same training split in {float(baseline['seconds']):.1f} s"
              if baseline.get("seconds") is not None else "The baseline is fitted on the same training split")
    fitted += " and scored on the same validation texts."
    if accuracy is None or math.isnan(float(accuracy)):
        return fitted
    return f"The model {beats_baseline_text(float(accuracy), baseline)}. {fitted}"


def _data(report: RunReport, pngs: dict[str, bytes]) -> list[Block]:
    data = report.data
    counts: dict[str, int] = {str(k): int(v) for k, v in (data.get("class_counts") or {}).items()}
    total = sum(counts.values())
    blocks: list[Block] = [
        Heading(2, "Data"),
        Para(["Source: ", Code(str(data.get("source", "unknown"))), f"; {data.get('rows', total)} rows."]),
    ]
    if counts:
        blocks.append(Table(["label", "texts", "share"],
                            [[label, str(c), f"{c / total:.1%}" if total else "n/a"] for label, c in counts.items()],
                            [False, True, True]))
    lengths = [int(v) for v in data.get("token_lengths") or []]
    max_length = data.get("max_length")
    if lengths and max_length is not None:
        facts = length_summary(lengths, int(max_length))  # the numbers metrics.json records
        truncated = sum(v > int(max_length) for v in lengths)
        blocks.append(Para([
            f"Tokens per text before truncation: median {facts['tokens_median']:g}, "
            f"95th percentile {facts['tokens_p95']}, maximum {facts['tokens_max']}. "
            f"{facts['truncated_share']:.1%} of texts ({truncated} of {len(lengths)}) are longer than "
            f"max_length = {max_length} tokens and were cut to fit."
        ]))
    blocks += _figure(pngs, "token_lengths", "Histogram of tokens per text, with max_length marked")
    return blocks


def _layer_choice(report: RunReport, pngs: dict[str, bytes]) -> list[Block]:
    """Only for ``--layer auto`` runs: which block was chosen, and how the blocks compared."""
    scores = report.layer_scores
    if not scores:
        return []
    last, chosen = len(scores), report.chosen_layer
    parts: list[Inline] = [
        "With ", Code("--layer auto"), f", the pooled features after each of the {last} decoder blocks were "
        "scored by a cross-validated linear probe on the training split only (the validation split stays an "
        "honest measurement); the best block wins. "]
    if chosen is None:
        parts.append("The chosen block was not recorded.")
    else:
        chosen_score = fmt(scores[chosen - 1]) if 1 <= chosen <= last else "n/a"
        parts.append(f"The classifier pools after block {chosen} (probe accuracy {chosen_score})")
        if chosen == last:
            parts += [", the last one, which a run without ", Code("--layer"), " pools as well."]
        else:
            parts += [f"; block {last}, the model's own output that a run without ", Code("--layer"),
                      f" pools, scores {fmt(scores[-1])}."]
    blocks: list[Block] = [Heading(2, "Layer choice"), Para(parts)]
    blocks += _figure(pngs, "layer_scores", "Cross-validated probe accuracy per decoder block, chosen block marked")
    return blocks


def _training(report: RunReport, pngs: dict[str, bytes]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Training curves")]
    if not report.history:
        return [*blocks, Para(["No per-epoch history was recorded."])]
    scores = [key for key in report.history[0] if key.startswith("val_") and key != "val_loss"]
    titles = [metric_title(key[4:]) for key in scores]
    blocks += _figure(pngs, "training_curves",
                      f"Training and validation loss, validation {' and '.join(titles)} per epoch")
    rows = [[str(h.get("epoch", i + 1)), fmt(h.get("train_loss")), fmt(h.get("val_loss")),
             *(fmt(h.get(key)) for key in scores), fmt(h.get("seconds"), 1)]
            for i, h in enumerate(report.history)]
    blocks.append(Table(["epoch", "train loss", "val loss", *(f"val {t}" for t in titles), "seconds"], rows,
                        [True] * (4 + len(scores))))
    blocks.append(Para([f"The saved model is the one from epoch {report.best_epoch}."]))
    return blocks


def _confusion(report: RunReport, pngs: dict[str, bytes]) -> list[Block]:
    labels = [str(x) for x in report.val.get("labels", [])]
    matrix = report.val.get("confusion_matrix") or []
    blocks: list[Block] = [Heading(2, "Confusion matrix"),
                           Para(["Rows are the true labels, columns the predicted ones."])]
    blocks += _figure(pngs, "confusion_matrix", "Confusion matrix of the validation split")
    if labels and matrix:
        blocks.append(Table(["true \\ predicted", *labels],
                            [[label, *(str(int(v)) for v in row)] for label, row in zip(labels, matrix, strict=True)],
                            [False] + [True] * len(labels)))
    return blocks


def _per_class(report: RunReport, pngs: dict[str, bytes]) -> list[Block]:
    per_class = report.val.get("per_class") or {}
    blocks: list[Block] = [Heading(2, "Per-class scores")]
    blocks.append(Table(["label", "precision", "recall", "F1", "support"],
                        [[str(name), fmt(s.get("precision")), fmt(s.get("recall")), fmt(s.get("f1")),
                          str(s.get("support", ""))] for name, s in per_class.items()],
                        [False, True, True, True, True]))
    blocks += _figure(pngs, "per_class_f1", "F1 score per class")
    return blocks


def _calibration(report: RunReport, pngs: dict[str, bytes]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Calibration")]
    cal = report.calibration
    if cal is None:
        blocks.append(Para([f"No temperature was fitted; the expected calibration error of the validation "
                            f"probabilities is {fmt(report.val.get('ece'))}."]))
    else:
        blocks.append(Para([
            f"Temperature scaling divides the logits by T = {fmt(cal.get('temperature'))}, fitted on the "
            "validation split; it changes no prediction, only the confidence. The scores before and after are "
            "measured on the validation texts the temperature was fitted on, so the improvement is optimistic."
        ]))
        blocks.append(Table(["", "before", "after"], [
            ["ECE", fmt(cal.get("ece_before")), fmt(cal.get("ece_after"))],
            ["log loss", fmt(cal.get("log_loss_before")), fmt(cal.get("log_loss_after"))],
        ], [False, True, True]))
    if "reliability" in pngs:
        blocks.append(Para(["Bars below the diagonal mean over-confidence: in those bins the model is right "
                            "less often than its probability says."]))
        blocks += _figure(pngs, "reliability", "Reliability diagram: accuracy per confidence bin")
    return blocks


def _errors(report: RunReport) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Most confident errors")]
    errors = report.worst_errors[:MAX_ERRORS]
    if not errors:
        return [*blocks, Para(["The model gets every validation text right."])]
    blocks.append(Para([f"The {len(errors)} validation texts the model gets wrong with the highest confidence "
                        f"(texts cut at {MAX_ERROR_CHARS} characters). They are worth reading: some are "
                        "labelling mistakes."]))
    blocks.append(Table(["confidence", "true label", "predicted", "text"],
                        [[fmt(e.get("confidence"), 3), str(e.get("label", "")), str(e.get("predicted", "")),
                          _shorten(str(e.get("text", "")))] for e in errors],
                        [True, False, False, False]))
    return blocks


def _configuration(report: RunReport) -> list[Block]:
    return [Heading(2, "Configuration"),
            Table(["setting", "value"], [[str(k), _config_value(v)] for k, v in report.config.items()],
                  [False, False])]


def _task_summary(report: RunReport, names: tuple[str, ...], note: str) -> list[Block]:
    """A multi-label or regression run's validation scores beside the baseline's."""
    val, baseline = report.val, report.baseline or {}
    rows = [["validation texts", str(int(val.get("n", 0)))]]
    rows += [[metric_title(name), fmt(val.get(name))] for name in names]
    rows += [[f"bag-of-words baseline {metric_title(name)}", fmt(baseline.get(name))]
             for name in names if name in baseline]
    rows.append(["best epoch", str(report.best_epoch)])
    blocks: list[Block] = [Heading(2, "Summary"), Para([note]), Table(["metric", "value"], rows, [False, True])]
    if report.baseline is not None:
        blocks.append(Para([f"The baseline ({report.baseline.get('model')}) is fitted on the same training split "
                            "and scored on the same validation texts."]))
    return blocks


MULTILABEL_SUMMARY = ("micro_f1", "macro_f1", "weighted_f1", "subset_accuracy", "hamming_loss",
                      "mean_average_precision", "log_loss")
REGRESSION_SUMMARY = ("pearson", "spearman", "rmse", "mae", "r2")


def _label_data(report: RunReport) -> list[Block]:
    """A multi-label run's texts per label (a text counts once for each of its labels)."""
    counts = {str(k): int(v) for k, v in (report.data.get("label_counts") or {}).items()}
    if not counts:
        return []
    rows = int(report.data.get("rows") or 0)
    per_text = report.data.get("labels_per_text")
    return [Para([f"Labels per text: {fmt(per_text, 2)} on average."]),
            Table(["label", "texts", "share of texts"],
                  [[label, str(c), f"{c / rows:.1%}" if rows else "n/a"] for label, c in counts.items()],
                  [False, True, True])]


def _per_label(report: RunReport, pngs: dict[str, bytes]) -> list[Block]:
    per_label = report.val.get("per_label") or {}
    blocks: list[Block] = [Heading(2, "Per-label scores"), Para([
        "Each label is predicted where its probability reaches its threshold; the thresholds are chosen on the "
        "validation split for each label's best F1 (so these scores are optimistic) and saved with the model."])]
    blocks.append(Table(["label", "precision", "recall", "F1", "support", "threshold"],
                        [[str(name), fmt(s.get("precision")), fmt(s.get("recall")), fmt(s.get("f1")),
                          str(s.get("support", "")), fmt(s.get("threshold"), 3)] for name, s in per_label.items()],
                        [False, True, True, True, True, True]))
    blocks += _figure(pngs, "per_label_f1", "F1 score per label")
    return blocks


def _regression_fit(report: RunReport, pngs: dict[str, bytes]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Predictions against the targets")]
    target = report.data.get("target") or {}
    if target:
        blocks.append(Para([f"Training targets range from {fmt(target.get('min'))} to {fmt(target.get('max'))} "
                            f"(mean {fmt(target.get('mean'))}, standard deviation {fmt(target.get('std'))}); the "
                            "model trains on them standardised and predicts in their own units."]))
    blocks += _figure(pngs, "predicted_vs_true", "Predicted against true values on the validation split")
    blocks += _figure(pngs, "residuals", "Residuals against predicted values on the validation split")
    return blocks


def _largest_errors(report: RunReport) -> list[Block]:
    errors = report.worst_errors[:MAX_ERRORS]
    if not errors:
        return []
    return [Heading(2, "Largest errors"),
            Para([f"The {len(errors)} validation texts with the largest absolute error (texts cut at "
                  f"{MAX_ERROR_CHARS} characters)."]),
            Table(["true", "predicted", "text"],
                  [[fmt(e.get("label")), fmt(e.get("predicted")), _shorten(str(e.get("text", "")))] for e in errors],
                  [True, True, False])]


def report_document(report: RunReport, pngs: dict[str, bytes]) -> Document:
    """The report's content, in order; ``pngs`` holds the plots that exist (the others are left out)."""
    if report.task == "multilabel":
        body = [*_task_summary(report, MULTILABEL_SUMMARY, "Scores on the validation split at the per-label "
                               "thresholds, for the model of the best epoch."),
                *_data(report, pngs), *_label_data(report), *_layer_choice(report, pngs),
                *_training(report, pngs), *_per_label(report, pngs)]
    elif report.task == "regression":
        body = [*_task_summary(report, REGRESSION_SUMMARY, "Scores on the validation split, in the targets' "
                               "units, for the model of the best epoch."),
                *_data(report, pngs), *_layer_choice(report, pngs), *_training(report, pngs),
                *_regression_fit(report, pngs), *_largest_errors(report)]
    else:
        body = [*_summary(report), *_data(report, pngs), *_layer_choice(report, pngs), *_training(report, pngs),
                *_confusion(report, pngs), *_per_class(report, pngs), *_calibration(report, pngs),
                *_errors(report)]
    return Document(report.title, [*body, *_configuration(report)])


def report_plots(report: RunReport) -> dict[str, bytes]:
    """PNG bytes per plot name, for the plots the report has data for."""
    out: dict[str, bytes] = {}
    if report.history:
        out["training_curves"] = plots.training_curves(report.history)
    labels = report.val.get("labels") or []
    if labels and report.val.get("confusion_matrix"):
        out["confusion_matrix"] = plots.confusion_matrix(report.val["confusion_matrix"], labels)
    if report.val.get("per_class"):
        out["per_class_f1"] = plots.per_class_f1(report.val["per_class"])
    if report.val.get("per_label"):
        out["per_label_f1"] = plots.per_class_f1(report.val["per_label"], "F1 per label")
    if report.values:
        true, predicted = [t for t, _ in report.values], [p for _, p in report.values]
        out["predicted_vs_true"] = plots.predicted_vs_true(true, predicted)
        out["residuals"] = plots.residuals(true, predicted)
    if any(int(b.get("count", 0)) for b in report.reliability_before):
        out["reliability"] = plots.reliability_diagram(report.reliability_before, report.reliability_after)
    lengths = report.data.get("token_lengths") or []
    if lengths and report.data.get("max_length") is not None:
        out["token_lengths"] = plots.token_length_histogram(lengths, int(report.data["max_length"]))
    if report.layer_scores:
        out["layer_scores"] = plots.layer_scores(report.layer_scores, report.chosen_layer)
    return out


# ----------------------------------------------------------------------------- writing
def _write_bytes(path: Path, payload: bytes) -> None:
    """Write bytes atomically: a temporary file beside ``path``, renamed into place once complete."""
    with staged_file(path) as tmp:
        tmp.write_bytes(payload)


def write_report(folder: Path, report: RunReport) -> list[Path]:
    """Write ``report.md``, ``report.html`` and ``plots/<name>.png`` into the existing ``folder``.

    Returns the paths written, plots first. Each file is replaced atomically, and the plots are written
    before the Markdown that references them. Plots without data (no history, no token lengths, ...)
    are skipped and their sections say so or show only their tables.
    """
    pngs = report_plots(report)
    doc = report_document(report, pngs)
    written: list[Path] = []
    for name, payload in pngs.items():
        path = folder / PLOTS_DIR / f"{name}.png"
        _write_bytes(path, payload)
        written.append(path)
    md_path, html_path = folder / "report.md", folder / "report.html"
    atomic_write_text(md_path, render_markdown(doc))
    atomic_write_text(html_path, render_html(doc))
    written += [md_path, html_path]
    return written
