"""Experiment tracking (``--report-to tensorboard,mlflow``): a run's config, losses, validation scores,
final scores and files in the tools teams already run. ``Tracking`` is what commands and the training
loop talk to; ``base.RunTracker`` is one backend's run (tensorboard.py, mlflow_run.py)."""

from lastpool.tracking.run import Tracking

__all__ = ["Tracking"]
