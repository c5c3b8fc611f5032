"""A number per text: one output trained with mean squared error on standardised targets, so the learning
rate means the same whatever the targets' units; the scale is folded into the head after training, so the
saved model (and every export) outputs values in the original units."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lastpool.errors import DataError
from lastpool.evaluation.metrics import regression_metrics
from lastpool.tasks.base import Task

SPLIT_BINS = 10  # quantile bins the stratified split keeps in proportion


def as_number(value: Any, where: str) -> float:
    """A target as a finite float; text, NaN or infinity is the user's data problem, named by row."""
    if isinstance(value, bool):
        raise DataError(f"{where}: the target {value!r} is not a number (regression needs numeric targets)")
    if isinstance(value, numbers.Real):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise DataError(f"{where}: the target {str(value)!r} is not a number (regression needs numeric "
                            "targets)") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: the target is {number} (regression needs finite numbers)")
    return number


class Regression(Task):
    name = "regression"
    main_metric = "pearson"
    headline = ("pearson", "rmse")

    def __init__(self, names: Sequence[str], mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__(names)
        if len(self.names) != 1:
            raise ValueError("a regression has one output")
        self.mean, self.std = float(mean), float(std)

    @classmethod
    def standardizing(cls, names: Sequence[str], targets: np.ndarray, centred: bool = True) -> Regression:
        """A regression whose model outputs are the targets standardised by these (training) rows; not
        ``centred``: scaled only (a head without a bias cannot hold the mean)."""
        mean = float(np.mean(targets)) if len(targets) and centred else 0.0
        std = float(np.sqrt(np.mean((np.asarray(targets, dtype=np.float64) - mean) ** 2))) if len(targets) else 1.0
        return cls(names, mean, std if std > 0 else 1.0)

    def fold_into(self, head: torch.nn.Linear) -> None:
        """Make ``head`` output values in the targets' units (the trained head outputs standardised ones)."""
        with torch.no_grad():
            head.weight.mul_(self.std)
            if head.bias is not None:
                head.bias.mul_(self.std).add_(self.mean)

    def targets(self, labels: Sequence[Any], source: str) -> np.ndarray:
        return np.asarray([as_number(v, f"{source}: item {i + 1}") for i, v in enumerate(labels)], dtype=np.float32)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        scaled = (targets.to(logits.dtype) - self.mean) / self.std
        return F.mse_loss(logits.reshape(-1), scaled, reduction="sum")

    def values(self, logits: np.ndarray) -> np.ndarray:
        """Model outputs in the targets' units."""
        return np.asarray(logits, dtype=np.float64).reshape(-1) * self.std + self.mean

    def evaluate(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        metrics = regression_metrics(targets, self.values(logits))
        metrics["loss"] = metrics.get("rmse", float("nan")) ** 2 / self.std**2  # the training loss's units
        return metrics

    def outputs(self, logits: np.ndarray) -> list[Any]:
        return self.values(logits).tolist()

    def split_keys(self, targets: np.ndarray) -> list[str]:
        """The value's quantile bin (at most ``SPLIT_BINS``, each with two rows or more)."""
        bins = max(1, min(SPLIT_BINS, len(targets) // 4))
        edges = np.unique(np.quantile(targets, np.linspace(0, 1, bins + 1)[1:-1])) if bins > 1 else np.array([])
        return [str(int(b)) for b in np.searchsorted(edges, targets, side="right")]

    def summary(self, targets: np.ndarray) -> dict[str, Any]:
        if not len(targets):
            return {}
        return {"target": {"min": float(targets.min()), "max": float(targets.max()), "mean": float(targets.mean()),
                           "std": float(targets.std())}}
