"""One label per text: softmax cross-entropy (label smoothing, optional class weights), temperature scaling."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lastpool.data.labels import LabelSet
from lastpool.evaluation.calibration import softmax
from lastpool.evaluation.metrics import classification_metrics
from lastpool.tasks.base import Task


def balanced_class_weights(ids: np.ndarray, classes: int) -> list[float]:
    """scikit-learn's ``balanced`` weights, n / (classes x count), for the classes present."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=classes).astype(np.float64)
    return [float(len(ids) / (classes * c)) if c else 0.0 for c in counts]


class SingleLabel(Task):
    name = "single"
    main_metric = "macro_f1"
    headline = ("accuracy", "macro_f1")

    def __init__(self, names: Sequence[str], label_smoothing: float = 0.0, class_weights: Sequence[float] | None = None,
                 temperature: float = 1.0) -> None:
        super().__init__(names)
        self.label_set = LabelSet(tuple(self.names))
        self.label_smoothing = label_smoothing
        self.class_weights = None if class_weights is None else list(class_weights)
        self.temperature = temperature

    def targets(self, labels: Sequence[Any], source: str) -> np.ndarray:
        return np.asarray(self.label_set.encode([str(label) for label in labels], source=source), dtype=np.int64)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = (None if self.class_weights is None
                  else torch.tensor(self.class_weights, dtype=logits.dtype, device=logits.device))
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.label_smoothing, reduction="sum")

    def evaluate(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        probabilities = self.probabilities(logits)
        metrics = classification_metrics(targets.tolist(), probabilities.argmax(axis=-1).tolist(), self.names,
                                         probabilities)
        metrics["loss"] = metrics.get("log_loss", float("nan"))
        return metrics

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.temperature)

    def outputs(self, logits: np.ndarray) -> list[Any]:
        return [self.names[i] for i in self.probabilities(logits).argmax(axis=-1).tolist()]

    def split_keys(self, targets: np.ndarray) -> list[str]:
        return [self.names[int(t)] for t in targets]

    def summary(self, targets: np.ndarray) -> dict[str, Any]:
        counts = Counter(self.names[int(t)] for t in targets)
        return {"class_counts": dict(sorted(counts.items()))}
