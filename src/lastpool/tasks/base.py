"""What every task gives the rest of lastpool: targets from labels, a loss, scores, and predictions.

A task is chosen once per run (``--task``) and recorded in the model folder. The training loop, the
evaluation and every surface ask the task instead of assuming one label per text: ``loss`` for a step,
``evaluate`` for a validation pass (its ``main_metric`` picks the kept epoch), ``probabilities`` and
``outputs`` for prediction. What a task learns from the training data (class weights, the targets' scale,
per-label thresholds) it is constructed with, so a task object is plain settings, like an estimator's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch

TaskName = Literal["single", "multilabel", "regression"]
TASK_NAMES: tuple[TaskName, ...] = ("single", "multilabel", "regression")


class Task(ABC):
    """One kind of prediction per text; ``names`` are the model's outputs in logit order."""

    name: ClassVar[TaskName]
    main_metric: ClassVar[str]  # the validation score that picks the kept epoch (higher is better)
    headline: ClassVar[tuple[str, str]]  # the two scores shown per epoch and in one-line summaries

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    @abstractmethod
    def targets(self, labels: Sequence[Any], source: str) -> np.ndarray:
        """The labels as the array the loss reads: ids [N], multi-hot [N, K] or values [N]."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss summed over the rows of a batch (the loop divides by the step's rows)."""

    @abstractmethod
    def evaluate(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Every score of this task on ``logits`` against ``targets``, including ``loss`` and ``main_metric``."""

    @abstractmethod
    def outputs(self, logits: np.ndarray) -> list[Any]:
        """What a user is told per row: a label name, a list of label names, or a number."""

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Per-output probabilities [N, K]; a regression has none."""
        raise TypeError(f"a {self.name} model predicts values, not probabilities")

    def split_keys(self, targets: np.ndarray) -> list[str]:
        """One key per row for a stratified split (the class, the rarest label, the value's bin)."""
        return [str(int(t)) for t in targets]

    def summary(self, targets: np.ndarray) -> dict[str, Any]:
        """The training data in brief for the model card and the report: rows per label, or the range."""
        return {}
