"""Metrics for classifiers."""

from lastpool.evaluation.metrics import classification_metrics

__all__ = ["classification_metrics"]
