"""Calibration: how far predicted probabilities are from observed accuracy, and temperature scaling.

A fine-tuned classifier is usually over-confident (its 0.99 is right less than 99% of the time).
Temperature scaling (Guo et al., 2017) divides the logits by one scalar T fitted on held-out data by
minimising the log loss: it changes no prediction (argmax is unchanged) and only the confidence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

BINS = 15
T_RANGE = (0.05, 20.0)


def reliability_bins(probabilities: np.ndarray, y_true: Sequence[int], n_bins: int = BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins of the top-1 probability: count, mean confidence and accuracy per bin."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        bins.append({
            "low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
            "confidence": float(confidence[members].mean()) if count else 0.0,
            "accuracy": float(correct[members].mean()) if count else 0.0,
        })
    return bins


def expected_calibration_error(probabilities: np.ndarray, y_true: Sequence[int], n_bins: int = BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over equal-width bins."""
    n = len(y_true)
    if n == 0:
        return 0.0
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(probabilities, y_true, n_bins)))


def nll(logits: np.ndarray, y_true: Sequence[int], temperature: float) -> float:
    """Mean negative log-likelihood of the true labels at ``temperature``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(y_true)), np.asarray(y_true)].mean())


def fit_temperature(logits: np.ndarray, y_true: Sequence[int]) -> float:
    """The temperature in [0.05, 20] minimising the log loss of ``logits`` (1.0 when there is no data)."""
    if len(y_true) == 0:
        return 1.0
    result = minimize_scalar(lambda log_t: nll(logits, y_true, float(np.exp(log_t))),
                             bounds=tuple(np.log(T_RANGE)), method="bounded", options={"xatol": 1e-5})
    best = float(np.exp(result.x))
    return best if nll(logits, y_true, best) <= nll(logits, y_true, 1.0) else 1.0


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits`` [N, C] at ``temperature`` (numerically stable)."""
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def binary_log_loss(logits: np.ndarray, targets: np.ndarray, temperatures: np.ndarray | float = 1.0) -> float:
    """Mean binary cross-entropy of sigmoid(logits / temperature) against 0/1 targets (all labels, all rows)."""
    z = np.asarray(logits, dtype=np.float64) / temperatures
    y = np.asarray(targets, dtype=np.float64)
    # log(1 + e^-|z|) + max(z, 0) - y z: the stable form of -[y log s(z) + (1 - y) log(1 - s(z))]
    return float((np.logaddexp(0.0, -np.abs(z)) + np.maximum(z, 0.0) - y * z).mean())


def fit_label_temperatures(logits: np.ndarray, targets: np.ndarray) -> list[float]:
    """One temperature per label (column) in [0.05, 20] minimising that label's binary log loss; 1.0 for a
    label whose validation rows are all positive or all negative (nothing to calibrate against)."""
    temperatures = []
    for k in range(targets.shape[1]):
        column, truth = logits[:, k], targets[:, k]
        if not 0 < truth.sum() < len(truth):
            temperatures.append(1.0)
            continue
        def loss(log_t: float, column: np.ndarray = column, truth: np.ndarray = truth) -> float:
            return binary_log_loss(column, truth, float(np.exp(log_t)))

        result = minimize_scalar(loss, bounds=tuple(np.log(T_RANGE)), method="bounded", options={"xatol": 1e-5})
        best = float(np.exp(result.x))
        temperatures.append(best if binary_log_loss(column, truth, best) <= binary_log_loss(column, truth) else 1.0)
    return temperatures
