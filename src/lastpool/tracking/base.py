"""One tracked run in one backend, and what every backend is told.

A run is told its resolved config once training starts (not before: bad input stops a command before
anything is logged), scalars as (name, value, step), its final scores and the run's files at the end,
and how it ended. A run of cv/compare has a child per fold. ``state`` is what a checkpoint keeps so that
``--resume`` continues the same tracked run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal

Status = Literal["FINISHED", "FAILED", "KILLED"]

# The run directory's files a backend keeps beside its scalars (the model folder is logged on its own).
RUN_FILES = ("report.html", "report.md", "metrics.json", "config.yaml", "history.jsonl", "cv.json", "compare.json")
RUN_FOLDERS = ("plots",)


class RunTracker(ABC):
    """A run in one tracking backend (TensorBoard event files, an MLflow run)."""

    @abstractmethod
    def start(self, params: dict[str, Any], resumed_step: int) -> None:
        """Training begins (``resumed_step`` > 0: a resumed run continues after that optimizer step)."""

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars at an optimizer step."""

    @abstractmethod
    def log_final(self, metrics: dict[str, float]) -> None:
        """The run's final scores (the kept epoch's validation scores, a fold's test scores, a summary)."""

    @abstractmethod
    def log_files(self, folder: Path, model: Path | None) -> None:
        """The finished run's files in ``folder`` and, when it has one, its model folder."""

    @abstractmethod
    def child(self, name: str) -> RunTracker:
        """A run nested under this one (one fold of a cross-validation)."""

    def pause(self) -> None:  # noqa: B027 - most backends hold no files: doing nothing is their answer
        """Let go of open files (the run directory is about to be swapped for the finished one)."""

    @abstractmethod
    def finish(self, status: Status) -> None:
        """The run is over: FINISHED, FAILED (an error) or KILLED (interrupted)."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run continues this one."""
        return {}


def flat_params(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """A config as scalar parameters: lists and mappings as their JSON-ish text, None as "none"."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in sorted(config.items()):
        if value is None:
            out[key] = "none"
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def final_scores(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numbers among a metrics mapping (nested mappings as ``name/inner``), under ``prefix``."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            out[f"{prefix}/{key}"] = float(value)
        elif isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            out.update({f"{prefix}/{key}/{k}": float(v) for k, v in value.items() if not isinstance(v, bool)})
    return out
