"""Metrics from scikit-learn and scipy for each task (single-label, multi-label, regression), in the JSON
shape saved in ``metrics.json``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    hamming_loss,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
)

from lastpool.evaluation.calibration import expected_calibration_error

# How reports and tables name a metric (``metrics.json`` keys in code, these in prose).
METRIC_TITLES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1", "weighted_f1": "weighted F1",
                 "subset_accuracy": "subset accuracy", "hamming_loss": "Hamming loss", "log_loss": "log loss",
                 "mean_average_precision": "mean average precision", "pearson": "Pearson", "spearman": "Spearman",
                 "rmse": "RMSE", "mae": "MAE", "r2": "R²", "ece": "ECE"}


def metric_title(name: str) -> str:
    return METRIC_TITLES.get(name, name.replace("_", " "))


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str],
    probabilities: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, macro and weighted F1, per-class precision/recall/F1/support and the confusion matrix;
    with probabilities also the log loss and the expected calibration error.

    Every label in ``label_names`` appears in the result, even if absent from ``y_true``, so runs on
    different splits have the same shape.
    """
    labels = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    result: dict[str, Any] = {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": list(label_names),
    }
    if probabilities is not None and len(y_true):
        result["log_loss"] = float(log_loss(y_true, probabilities, labels=labels))
        result["ece"] = expected_calibration_error(probabilities, y_true)
    return result


def length_summary(lengths: Sequence[int], max_length: int) -> dict[str, Any]:
    """Token-length facts of a run's texts (before truncation), for metrics.json and the report alike: the
    median, the nearest-rank 95th percentile, the maximum and the share longer than ``max_length``."""
    if not lengths:
        return {}
    ordered = sorted(int(n) for n in lengths)
    return {"max_length": max_length, "tokens_median": statistics.median(ordered),
            "tokens_p95": ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], "tokens_max": ordered[-1],
            "truncated_share": sum(n > max_length for n in ordered) / len(ordered)}


def multilabel_metrics(y_true: np.ndarray, probabilities: np.ndarray, thresholds: Sequence[float],
                       label_names: Sequence[str]) -> dict[str, Any]:
    """Multi-label scores at per-label ``thresholds``: micro, macro and weighted F1, subset accuracy, Hamming
    loss, per-label precision/recall/F1/support, mean average precision (over the labels that occur) and the
    mean binary log loss."""
    truth = np.asarray(y_true, dtype=np.int64).reshape(len(y_true), len(label_names))
    probs = np.asarray(probabilities, dtype=np.float64).reshape(truth.shape)
    predicted = (probs >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
    occurring = [k for k in range(truth.shape[1]) if truth[:, k].any()]
    result: dict[str, Any] = {
        "n": len(truth),
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(truth, predicted, average="weighted", zero_division=0)),
        "subset_accuracy": float(accuracy_score(truth, predicted)),
        "hamming_loss": float(hamming_loss(truth, predicted)),
        "mean_average_precision": (float(np.mean([average_precision_score(truth[:, k], probs[:, k])
                                                  for k in occurring])) if occurring else float("nan")),
        "per_label": {
            name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                   "support": int(support[k]), "threshold": float(thresholds[k])}
            for k, name in enumerate(label_names)
        },
        "labels": list(label_names),
    }
    if len(truth):
        clipped = np.clip(probs, 1e-12, 1 - 1e-12)
        result["log_loss"] = float(-(truth * np.log(clipped) + (1 - truth) * np.log(1 - clipped)).mean())
    return result


def regression_metrics(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """RMSE, MAE, Pearson and Spearman correlation and R² of predictions in the targets' own units (a
    correlation is NaN where either side is constant)."""
    truth = np.asarray(y_true, dtype=np.float64)
    predicted = np.asarray(y_pred, dtype=np.float64)
    result: dict[str, Any] = {"n": len(truth)}
    if not len(truth):
        return result
    varies = len(truth) > 1 and np.ptp(truth) > 0 and np.ptp(predicted) > 0
    result.update({
        "rmse": float(np.sqrt(mean_squared_error(truth, predicted))),
        "mae": float(mean_absolute_error(truth, predicted)),
        "pearson": float(pearsonr(truth, predicted).statistic) if varies else float("nan"),
        "spearman": float(spearmanr(truth, predicted).statistic) if varies else float("nan"),
        "r2": float(r2_score(truth, predicted)) if len(truth) > 1 else float("nan"),
    })
    result["loss"] = result["rmse"] ** 2
    return result
