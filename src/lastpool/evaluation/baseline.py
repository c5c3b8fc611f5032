"""A bag-of-words baseline, trained and scored on the same splits as the model.

A fine-tuned language model is only worth its cost if it beats what TF-IDF and a linear SVM reach in
seconds; on many topic or sentiment sets the gap is small, and a report should say so. The baseline is
deterministic (liblinear with a fixed seed), so a rerun reports the same number. The fitted model
(models/bag_of_words.py) is returned too: a run can fuse it with the LM instead of fitting it twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.multiclass import OneVsRestClassifier
from sklearn.svm import LinearSVC

from lastpool.evaluation.metrics import classification_metrics, multilabel_metrics, regression_metrics
from lastpool.models.bag_of_words import SVM_C, BagOfWords, bag_of_words_pipeline


def fit_baseline(train_texts: Sequence[str], train_y: Sequence[int], val_texts: Sequence[str],
                 val_y: Sequence[int], label_names: Sequence[str]) -> tuple[BagOfWords, dict[str, Any]] | None:
    """Fit the baseline on the training split and score it on the validation split.

    Returns the fitted model and ``{"model", "accuracy", "macro_f1", "seconds"}`` (macro-F1 over every
    label in ``label_names``, as for the model; ``seconds`` for fitting and predicting), or None when no
    bag-of-words model can be fitted: an empty split, fewer than two labels among the training texts,
    or texts without a single character n-gram. No number is then better than a majority-class guess
    passed off as a bag-of-words score.
    """
    if not train_texts or not val_texts:
        return None
    start = time.perf_counter()
    model = BagOfWords.fit(train_texts, train_y, len(label_names))
    if model is None:
        return None
    predicted = model.predict(val_texts)
    seconds = time.perf_counter() - start
    metrics = classification_metrics(list(val_y), predicted, label_names)
    return model, {"model": model.description, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                   "seconds": seconds}


def fit_task_baseline(task: str, train_texts: Sequence[str], train_y: np.ndarray, val_texts: Sequence[str],
                      val_y: np.ndarray, names: Sequence[str]) -> dict[str, Any] | None:
    """The baseline of a multi-label or regression task: the same TF-IDF features with a linear SVM per
    label (a label is predicted where its margin is above 0), or a ridge regression. Its scores on the
    validation split, as ``fit_baseline``'s; None when the training texts hold no n-gram."""
    built = bag_of_words_pipeline(train_texts) if train_texts and val_texts else None
    if built is None:
        return None
    start = time.perf_counter()
    pipeline, description = built
    features = pipeline.named_steps["features"]
    x_train, x_val = features.fit_transform(list(train_texts)), None
    x_val = features.transform(list(val_texts))
    if task == "regression":
        ridge = Ridge(alpha=1.0).fit(x_train, np.asarray(train_y, dtype=np.float64))
        metrics = regression_metrics(val_y, ridge.predict(x_val))
        description = description.replace("linear SVM", "ridge regression")
        shown = ("pearson", "spearman", "rmse")
    else:
        truth = np.asarray(train_y)
        present = [k for k in range(truth.shape[1]) if 0 < truth[:, k].sum() < len(truth)]
        margins = np.full((x_val.shape[0], truth.shape[1]), -10.0)
        if present:
            svm = OneVsRestClassifier(LinearSVC(C=SVM_C, dual="auto", random_state=0))
            svm.fit(x_train, truth[:, present])
            margins[:, present] = np.asarray(svm.decision_function(x_val)).reshape(len(val_texts), len(present))
        probabilities = 1.0 / (1.0 + np.exp(-margins))  # margin 0 is probability 0.5: the SVM's own decision
        metrics = multilabel_metrics(val_y, probabilities, [0.5] * truth.shape[1], names)
        description = description.replace("linear SVM", "a linear SVM per label")
        shown = ("micro_f1", "macro_f1", "subset_accuracy")
    return {"model": description, **{name: metrics.get(name) for name in shown},
            "seconds": time.perf_counter() - start}


def bag_of_words_baseline(train_texts: Sequence[str], train_y: Sequence[int], val_texts: Sequence[str],
                          val_y: Sequence[int], label_names: Sequence[str]) -> dict[str, Any] | None:
    """``fit_baseline``'s scores alone."""
    fitted = fit_baseline(train_texts, train_y, val_texts, val_y, label_names)
    return None if fitted is None else fitted[1]


def beats_baseline_text(model_accuracy: float, baseline: dict[str, Any]) -> str:
    """How the model compares with the baseline, as a clause: "beats a bag-of-words baseline (...) by +2.10
    points of accuracy" or "does not beat ...: -0.50 points of accuracy".

    The verdict follows the difference as printed (points, two decimals), so the two never disagree: a
    model ahead by 0.00004 "does not beat" it by "+0.00 points".
    """
    baseline_accuracy = float(baseline["accuracy"])
    points = round(100.0 * (float(model_accuracy) - baseline_accuracy), 2) + 0.0  # + 0.0: no "-0.00"
    what = f"a bag-of-words baseline ({baseline['model']}, accuracy {baseline_accuracy:.4f})"
    if points > 0:
        return f"beats {what} by {points:+.2f} points of accuracy"
    return f"does not beat {what}: {points:+.2f} points of accuracy"
