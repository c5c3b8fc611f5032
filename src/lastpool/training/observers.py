"""What the training loop tells whoever watches it (experiment tracking, a tuner's pruning): training
started, a step's loss every ``log_every`` optimizer steps, an epoch's record. An observer may stop a run
by raising from ``epoch_ended`` (a pruned trial); ``state`` goes into every checkpoint."""

from __future__ import annotations

from typing import Any, Protocol


class TrainingObserver(Protocol):
    log_every: int

    def started(self, params: dict[str, Any], step: int) -> None:
        """The resolved config; ``step`` > 0 when a run resumes after that optimizer step."""

    def stepped(self, step: int, loss: float, lr: float) -> None:
        """The mean training loss of an optimizer step (the main process's rows) and the learning rate."""

    def epoch_ended(self, record: dict[str, Any]) -> None:
        """The epoch's history record (train_loss, val_loss, val_<score>, steps, ...)."""

    def state(self) -> dict[str, Any]:
        """JSON-able; a checkpoint keeps it under ``observers``."""
