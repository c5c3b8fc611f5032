"""Plots for run reports, each returned as PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` and never through pyplot: saving a bare Figure renders
with the Agg canvas whatever backend is configured, so no GUI backend is touched, plotting is safe from
worker threads, and the global backend (a notebook user's choice) is left alone. They are small (about 5 x 3.5
inches at 100 dpi) because the HTML report inlines every one of them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lastpool.evaluation.metrics import metric_title

DPI = 100
WIDTH = 5.0
HEIGHT = 3.5


def figure_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes; no metadata, so the same plot gives the same bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _finite(values: Sequence[Any]) -> list[tuple[int, float]]:
    """(index, value) pairs of the values that are real numbers (None or NaN mark a missing value)."""
    out = []
    for i, value in enumerate(values):
        if value is None:
            continue
        number = float(value)
        if number == number:  # not NaN
            out.append((i, number))
    return out


def _series(ax: Axes, epochs: Sequence[Any], values: Sequence[Any], label: str, marker: str) -> None:
    points = _finite(values)
    if points:
        ax.plot([epochs[i] for i, _ in points], [v for _, v in points], marker=marker, label=label)


def training_curves(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Losses (train, validation) on the left and the validation scores the run recorded (accuracy and
    macro-F1; micro- and macro-F1; Pearson and RMSE) on the right, per epoch.

    Separate axes, because losses are unbounded while most scores live in [0, 1].
    """
    fig = Figure(figsize=(2 * WIDTH, HEIGHT), layout="constrained")
    loss_ax, score_ax = fig.subplots(1, 2)
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    _series(loss_ax, epochs, [row.get("train_loss") for row in history], "train loss", "o")
    _series(loss_ax, epochs, [row.get("val_loss") for row in history], "validation loss", "s")
    scores = [key for key in (history[0] if history else {}) if key.startswith("val_") and key != "val_loss"]
    for key, marker in zip(scores, "os^vD*", strict=False):
        _series(score_ax, epochs, [row.get(key) for row in history], f"validation {metric_title(key[4:])}", marker)
    loss_ax.set_title("loss")
    score_ax.set_title("validation scores")
    values = [v for key in scores for _, v in _finite([row.get(key) for row in history])]
    if values and all(0.0 <= v <= 1.0 for v in values):
        score_ax.set_ylim(0.0, 1.02)
    for ax in (loss_ax, score_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if epochs and all(isinstance(e, int) for e in epochs):
            ax.set_xticks(sorted(set(epochs)))
        if ax.lines:
            ax.legend(fontsize="small")
    return figure_png(fig)


def confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str]) -> bytes:
    """Counts per (true, predicted) pair, annotated in each cell; rows are the true labels."""
    n = len(labels)
    side = min(max(WIDTH, 1.8 + 0.55 * n), 12.0)
    fig = Figure(figsize=(side, side * 0.8), layout="constrained")
    ax = fig.subplots()
    counts = [[int(v) for v in row] for row in matrix]
    image = ax.imshow(counts, cmap="Blues", vmin=0, aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8)
    top = max((v for row in counts for v in row), default=0)
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", fontsize="small" if n <= 12 else "x-small",
                    color="white" if top and value > top / 2 else "black")
    ax.set_xticks(range(n), [str(label) for label in labels],
                  rotation=45 if max((len(str(x)) for x in labels), default=0) > 6 else 0, ha="right")
    ax.set_yticks(range(n), [str(label) for label in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    return figure_png(fig)


def reliability_diagram(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]] | None = None) -> bytes:
    """Accuracy per confidence bin against the diagonal of perfect calibration.

    Bars below the diagonal mean over-confidence. With ``after`` (the bins once the temperature is
    applied) both series are drawn side by side in each bin. Empty bins are left out.
    """
    fig = Figure(figsize=(WIDTH, HEIGHT + 0.5), layout="constrained")
    ax = fig.subplots()
    series = [("before calibration", before)]
    if after is not None:
        series.append(("after temperature scaling", after))
    share = 1.0 / len(series)
    for k, (name, bins) in enumerate(series):
        filled = [b for b in bins if int(b.get("count", 0)) > 0]
        widths = [(float(b["high"]) - float(b["low"])) * share for b in filled]
        lefts = [float(b["low"]) + k * w for b, w in zip(filled, widths, strict=True)]
        ax.bar(lefts, [float(b["accuracy"]) for b in filled], width=widths, align="edge", alpha=0.75,
               edgecolor="black", linewidth=0.5, label=name)
    ax.plot([0.0, 1.0], [0.0, 1.0], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram")
    ax.legend(fontsize="small", loc="upper left")
    ax.grid(alpha=0.3)
    return figure_png(fig)


def per_class_f1(per_class: Mapping[str, Mapping[str, Any]], title: str = "F1 per class") -> bytes:
    """Horizontal F1 bars, one per label, with the value and support written beside each bar."""
    names = list(per_class)
    fig = Figure(figsize=(WIDTH, min(max(HEIGHT, 1.0 + 0.35 * len(names)), 14.0)), layout="constrained")
    ax = fig.subplots()
    scores = [float(per_class[name]["f1"]) for name in names]
    positions = list(range(len(names)))
    ax.barh(positions, scores, color="tab:blue", alpha=0.8)
    for y, name, score in zip(positions, names, scores, strict=True):
        ax.text(min(score, 1.0) + 0.01, y, f"{score:.3f} (n={int(per_class[name].get('support', 0))})",
                va="center", fontsize="small")
    ax.set_yticks(positions, [str(name) for name in names])
    ax.invert_yaxis()  # first label on top, as in the tables
    ax.set_xlim(0.0, 1.3)
    ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("F1")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return figure_png(fig)


def token_length_histogram(lengths: Sequence[int], max_length: int) -> bytes:
    """Tokens per text before truncation, with the truncation length marked: the bars past the line
    are the texts the model sees only in part."""
    fig = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    ax = fig.subplots()
    values = [int(v) for v in lengths]
    if values:
        ax.hist(values, bins=min(40, max(5, len(set(values)))), color="tab:blue", alpha=0.8)
    truncated = sum(v > max_length for v in values)
    share = truncated / len(values) if values else 0.0
    ax.axvline(max_length, color="tab:red", linestyle="--",
               label=f"max_length = {max_length} ({share:.1%} truncated)")
    ax.set_xlabel("tokens per text (before truncation)")
    ax.set_ylabel("texts")
    ax.set_title("text lengths")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return figure_png(fig)


def layer_scores(scores: Sequence[float], chosen: int | None) -> bytes:
    """Probe score of the pooled features after each block (1-based), the chosen block marked: whether
    the best block is a clear peak or one of a plateau of near-equal blocks shows at a glance."""
    fig = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    ax = fig.subplots()
    points = _finite(scores)
    ax.plot([i + 1 for i, _ in points], [v for _, v in points], marker="o", markersize=3, color="tab:blue",
            label="cross-validated probe accuracy")
    if chosen is not None:
        ax.axvline(chosen, color="tab:red", linestyle="--", linewidth=1)
        value = dict(points).get(chosen - 1)
        if value is not None:
            ax.plot([chosen], [value], marker="*", markersize=12, color="tab:red", linestyle="",
                    label=f"chosen: block {chosen} ({value:.3f})")
    ax.set_xlim(0.5, max(len(scores), chosen or 0) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("decoder block")
    ax.set_ylabel("probe accuracy (training split)")
    ax.set_title("layer choice")
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")  # below the axes: never over the peak
    ax.grid(alpha=0.3)
    return figure_png(fig)


def predicted_vs_true(true: Sequence[float], predicted: Sequence[float]) -> bytes:
    """A regression's predictions against the targets, with the diagonal a perfect model lies on."""
    fig = Figure(figsize=(WIDTH, WIDTH * 0.8), layout="constrained")
    ax = fig.subplots()
    ax.scatter(true, predicted, s=8, alpha=0.5, color="tab:blue")
    low, high = min(min(true), min(predicted)), max(max(true), max(predicted))
    ax.plot([low, high], [low, high], color="black", linewidth=1, linestyle="--", label="predicted = true")
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted value")
    ax.set_title("Predicted against true (validation)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    return figure_png(fig)


def residuals(true: Sequence[float], predicted: Sequence[float]) -> bytes:
    """Residuals (predicted - true) against the prediction: a trend or a funnel shows where the model errs."""
    fig = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    ax = fig.subplots()
    ax.scatter(predicted, [p - t for t, p in zip(true, predicted, strict=True)], s=8, alpha=0.5, color="tab:orange")
    ax.axhline(0.0, color="black", linewidth=1, linestyle="--")
    ax.set_xlabel("predicted value")
    ax.set_ylabel("predicted - true")
    ax.set_title("Residuals (validation)")
    ax.grid(alpha=0.3)
    return figure_png(fig)
