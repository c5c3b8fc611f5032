"""What a training run shows: a progress bar (epoch, steps, loss, time left), one line per finished
epoch and the history table at the end; on the main process only, and nothing when quiet."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table as RichTable

from lastpool.evaluation.metrics import metric_title
from lastpool.tasks import Task
from lastpool.training.run_state import TrainResult

SHORT = {"accuracy": "acc"}  # the epoch line's names, where shorter than the metric's own


class TrainingDisplay:
    """The progress bar and the epoch lines of one run (a context manager: the bar lives inside it)."""

    def __init__(self, console: Console, epochs: int, total_steps: int, shown: bool, objective: Task) -> None:
        self.console, self.epochs, self.total_steps, self.shown = console, epochs, total_steps, shown
        self.shown_metrics = objective.headline
        self.main_metric = objective.main_metric
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=console, disable=not shown, transient=True,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> TrainingDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.progress.__exit__(kind, error, traceback)

    def note(self, text: str) -> None:
        if self.shown:
            self.progress.console.print(text)

    def step(self, steps: int, epoch: int, summed_loss: Any, rows: float) -> None:
        """After an optimizer step; the loss (a device tensor: reading it waits for the step) is read at the
        first step and every tenth only."""
        if self.task is None or (steps % 10 != 0 and steps != 1):
            return
        self.progress.update(self.task, completed=steps, epoch=f"{epoch + 1}/{self.epochs}",
                             loss=f"{float(summed_loss) / rows:.4f}")

    def start(self, steps: int, epoch: int) -> None:
        """The bar, at ``steps`` done (more than 0 when a run resumes)."""
        if self.shown:
            self.task = self.progress.add_task("train", total=self.total_steps, completed=steps,
                                               epoch=f"{epoch + 1}/{self.epochs}", loss="-")

    def epoch_done(self, record: dict[str, Any], best: bool) -> None:
        mark = " [green]*best[/green]" if best else ""
        scores = "  ".join(f"{SHORT.get(name, name)} {record[f'val_{name}']:.4f}" for name in self.shown_metrics)
        self.note(f"epoch {record['epoch']:>3}/{self.epochs}  train_loss {record['train_loss']:.4f}  "
                  f"val_loss {record['val_loss']:.4f}  {scores}  {record['seconds']:.1f}s{mark}")

    def history(self, result: TrainResult) -> None:
        if not self.shown:
            return
        table = RichTable(title=f"training (best epoch {result.best_epoch}, by validation "
                                f"{metric_title(self.main_metric)})")
        for column in ("epoch", "train loss", "val loss", *map(metric_title, self.shown_metrics), "seconds"):
            table.add_column(column, justify="right")
        for r in result.history:
            style = "bold green" if r["epoch"] == result.best_epoch else None
            table.add_row(str(r["epoch"]), f"{r['train_loss']:.4f}", f"{r['val_loss']:.4f}",
                          *(f"{r[f'val_{name}']:.4f}" for name in self.shown_metrics), f"{r['seconds']:.1f}",
                          style=style)
        self.console.print(table)
