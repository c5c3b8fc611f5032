"""The tasks a model can do: one label per text (``single``), a set of labels (``multilabel``) or a number
(``regression``). ``base.Task`` is what the rest of lastpool asks; this module picks and builds one."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from lastpool.data.labels import LabelSet
from lastpool.errors import ConfigError, DataError
from lastpool.tasks.base import TASK_NAMES, Task, TaskName
from lastpool.tasks.multilabel import MultiLabel, balanced_positive_weights
from lastpool.tasks.regression import Regression
from lastpool.tasks.single import SingleLabel, balanced_class_weights

__all__ = ["TASK_NAMES", "MultiLabel", "Regression", "SingleLabel", "Task", "TaskName", "infer_task",
           "output_names", "task_for_model", "training_task"]

_DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


def infer_task(labels: Sequence[Any]) -> tuple[TaskName, str | None]:
    """The task the labels make unambiguous, and why in a few words (None: nothing to say, single-label)."""
    if labels and all(isinstance(row, (list, tuple)) for row in labels):
        return "multilabel", "every label is a list"
    def decimal(value: Any) -> bool:  # a float, or text such as "3.800" ("1.0" alone could be a class code)
        return isinstance(value, float) or (
            isinstance(value, str) and _DECIMAL.fullmatch(value.strip()) is not None
            and not float(value).is_integer())

    def number(value: Any) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
            isinstance(value, str) and (_DECIMAL.fullmatch(value.strip()) is not None
                                        or _INTEGER.fullmatch(value.strip()) is not None))

    if labels and all(number(v) for v in labels) and any(decimal(v) for v in labels):
        return "regression", "the labels are numbers, some with decimals"
    return "single", None


def output_names(task: TaskName, labels: Sequence[Any], order: Sequence[str] | None, target_name: str) -> list[str]:
    """The model's outputs in logit order: the classes, the labels (``order`` or sorted), or the target."""
    if task == "regression":
        return [target_name]
    if task == "single":
        return list(LabelSet.from_labels([str(v) for v in labels], order=order).names)
    seen = {str(name) for row in labels for name in ([row] if isinstance(row, str) else row)}
    if order is not None:
        unknown = sorted(seen - set(order))
        if unknown:
            raise DataError(f"labels {', '.join(map(repr, unknown[:10]))} found in the data but not in the "
                            f"label list ({', '.join(order)})")
        return list(order)
    if not seen:
        raise DataError("no labels found; a multi-label classifier needs at least one")
    return sorted(seen, key=lambda n: (0, int(n), n) if re.fullmatch(r"[+-]?\d+", n) else (1, 0, n))


def training_task(task: TaskName, names: Sequence[str], targets: np.ndarray, class_weight: str,
                  label_smoothing: float, centred: bool = True) -> Task:
    """The task a fit trains with: class or positive weights and the targets' scale from the training rows
    (``centred``: a regression's head has a bias to hold the mean)."""
    balanced = class_weight == "balanced"
    if task == "single":
        weights = balanced_class_weights(targets, len(names)) if balanced else None
        return SingleLabel(names, label_smoothing=label_smoothing, class_weights=weights)
    if task == "multilabel":
        return MultiLabel(names, positive_weights=balanced_positive_weights(targets) if balanced else None)
    if balanced:
        raise ConfigError("--class-weight balanced applies to single- and multi-label tasks, not regression")
    return Regression.standardizing(names, targets, centred)


def task_for_model(task: TaskName, names: Sequence[str], temperature: float = 1.0,
                   thresholds: Sequence[float] | None = None, temperatures: Sequence[float] | None = None) -> Task:
    """The task of a fitted model (its calibration and thresholds; a regression's scale is in its head)."""
    if task == "single":
        return SingleLabel(names, temperature=temperature)
    if task == "multilabel":
        return MultiLabel(names, thresholds=thresholds, temperatures=temperatures)
    return Regression(names)
