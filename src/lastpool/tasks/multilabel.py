"""Any number of labels per text: a sigmoid per label, binary cross-entropy (optional positive weights), and
a decision threshold per label chosen on the validation split for the best F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lastpool.errors import DataError
from lastpool.evaluation.metrics import multilabel_metrics
from lastpool.tasks.base import Task

DEFAULT_THRESHOLD = 0.5


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64))), dtype=np.float64)


def balanced_positive_weights(targets: np.ndarray) -> list[float]:
    """Per label, negatives / positives in the training rows (BCE's ``pos_weight``; 1 for a label never seen)."""
    positives = targets.sum(axis=0)
    return [float((len(targets) - p) / p) if p else 1.0 for p in positives.tolist()]


def best_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per label, the threshold with the best F1 on these rows: halfway between the last probability
    predicted positive and the next one down (0.5 for a label with no positive rows)."""
    thresholds = []
    for k in range(targets.shape[1]):
        truth = targets[:, k] > 0.5
        if not truth.any():
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        order = np.argsort(-probabilities[:, k], kind="stable")
        ranked, hits = probabilities[order, k], np.cumsum(truth[order])
        # F1 when the top i+1 rows are predicted positive; only cut between distinct probabilities
        f1 = 2 * hits / (np.arange(1, len(ranked) + 1) + truth.sum())
        distinct = np.append(ranked[:-1] > ranked[1:], True)
        best = int(np.argmax(np.where(distinct, f1, -1.0)))
        below = ranked[best + 1] if best + 1 < len(ranked) else 0.0
        thresholds.append(float((ranked[best] + below) / 2))
    return thresholds


class MultiLabel(Task):
    name = "multilabel"
    main_metric = "macro_f1"
    headline = ("micro_f1", "macro_f1")

    def __init__(self, names: Sequence[str], positive_weights: Sequence[float] | None = None,
                 thresholds: Sequence[float] | None = None, temperatures: Sequence[float] | None = None) -> None:
        super().__init__(names)
        self.index = {name: k for k, name in enumerate(self.names)}
        self.positive_weights = None if positive_weights is None else list(positive_weights)
        # None while training: each validation pass chooses its own (what the kept epoch saves)
        self.thresholds = None if thresholds is None else list(thresholds)
        self.temperatures = None if temperatures is None else list(temperatures)  # per label, calibration

    def targets(self, labels: Sequence[Any], source: str) -> np.ndarray:
        out = np.zeros((len(labels), len(self.names)), dtype=np.float32)
        for i, row in enumerate(labels):
            names = [row] if isinstance(row, str) else list(row)
            for name in names:
                k = self.index.get(str(name))
                if k is None:
                    raise DataError(f"{source}: item {i + 1}: label {str(name)!r} is not one of this model's "
                                    f"labels ({', '.join(self.names)})")
                out[i, k] = 1.0
        return out

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = (None if self.positive_weights is None
                  else torch.tensor(self.positive_weights, dtype=logits.dtype, device=logits.device))
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), pos_weight=weight,
                                                  reduction="sum")

    def evaluate(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        probabilities = self.probabilities(logits)
        thresholds = self.thresholds if self.thresholds is not None else best_thresholds(probabilities, targets)
        metrics = multilabel_metrics(targets, probabilities, thresholds, self.names)
        metrics["thresholds"] = thresholds
        metrics["loss"] = metrics.get("log_loss", float("nan"))
        return metrics

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits if self.temperatures is None else logits / np.asarray(self.temperatures))

    def outputs(self, logits: np.ndarray) -> list[Any]:
        thresholds = np.asarray(self.thresholds if self.thresholds is not None
                                else [DEFAULT_THRESHOLD] * len(self.names))
        chosen = self.probabilities(logits) >= thresholds
        return [[self.names[k] for k in np.flatnonzero(row)] for row in chosen]

    def split_keys(self, targets: np.ndarray) -> list[str]:
        """Each row's rarest label (rows with none: their own key), so every label reaches both sides."""
        counts = targets.sum(axis=0)
        keys = []
        for row in targets:
            present = np.flatnonzero(row > 0.5)
            keys.append(self.names[int(present[np.argmin(counts[present])])] if len(present) else "")
        return keys

    def summary(self, targets: np.ndarray) -> dict[str, Any]:
        per_label = targets.sum(axis=0).astype(int).tolist()
        return {"label_counts": dict(sorted(zip(self.names, per_label, strict=True))),
                "labels_per_text": float(targets.sum(axis=1).mean()) if len(targets) else 0.0}
