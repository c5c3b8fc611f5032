"""Classification metrics from scikit-learn, in the JSON shape saved in ``metrics.json``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from lastpool.evaluation.calibration import expected_calibration_error


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
