"""A command's tracked run in every backend ``--report-to`` names: what the training loop, ``train``,
``cv``, ``compare`` and ``tune`` tell it. With no backend, or on any process but the main one (DDP), it
does nothing, so callers never ask."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from lastpool.config import RunConfig
from lastpool.errors import TrainingStopped
from lastpool.tracking.base import RunTracker, Status

# The settings that say where and how a run is tracked (RunConfig fields; a resumed run keeps them).
TRACKING_FIELDS = ("report_to", "log_every", "tracking_uri", "experiment", "run_name")


class Tracking:
    """Fans each call out to the backends' runs. A context manager: leaving it ends the runs, FINISHED,
    or FAILED / KILLED (Ctrl-C, SIGTERM) when an exception leaves it."""

    def __init__(self, runs: list[RunTracker], log_every: int = 50, settings: dict[str, Any] | None = None) -> None:
        self.runs, self.log_every = runs, log_every
        self.settings = settings or {}  # the tracking flags, kept in checkpoints so --resume keeps them

    @classmethod
    def open(cls, config: RunConfig, folder: Path, resume: dict[str, Any] | None = None) -> Tracking:
        """The runs for ``config.report_to``, their stores checked now (nothing is logged until training
        starts). ``folder``: the run (or cv/compare) directory; ``resume``: a checkpoint's tracking state."""
        from lastpool.distributed import process_rank

        if not config.report_to or process_rank() != 0:
            return cls([], config.log_every)
        settings = {name: getattr(config, name) for name in TRACKING_FIELDS}
        name = config.run_name or folder.name
        runs: list[RunTracker] = []
        for backend in config.report_to:
            if backend == "tensorboard":
                from lastpool.tracking.tensorboard import TensorBoardRun, check_tensorboard

                check_tensorboard()
                runs.append(TensorBoardRun(folder / "tensorboard"))
            else:
                from lastpool.tracking.mlflow_run import MlflowRun, connect, tracking_uri

                client = connect(tracking_uri(config.tracking_uri))
                runs.append(MlflowRun(client, config.experiment, name, run_id=(resume or {}).get("mlflow_run_id")))
        return cls(runs, config.log_every, settings)

    @property
    def active(self) -> bool:
        return bool(self.runs)

    # --- what the training loop reports (lastpool.training.observers.TrainingObserver)
    def started(self, params: dict[str, Any], step: int) -> None:
        for run in self.runs:
            run.start(params, step)

    def stepped(self, step: int, loss: float, lr: float) -> None:
        self.log_metrics({"train/loss": loss, "train/lr": lr}, step)

    def epoch_ended(self, record: dict[str, Any]) -> None:
        scores = {f"val/{key[4:]}": float(value) for key, value in record.items() if key.startswith("val_")}
        self.log_metrics({"epoch": float(record["epoch"]), "train/epoch_loss": float(record["train_loss"]),
                          **scores}, int(record["steps"]))

    def state(self) -> dict[str, Any]:
        merged: dict[str, Any] = {"settings": self.settings} if self.settings else {}
        for run in self.runs:
            merged.update(run.state())
        return merged

    # --- what commands report
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for run in self.runs:
            run.log_metrics(metrics, step)

    def log_final(self, metrics: dict[str, float]) -> None:
        for run in self.runs:
            run.log_final(metrics)

    def log_files(self, folder: Path, model: Path | None = None) -> None:
        for run in self.runs:
            run.log_files(folder, model)

    def child(self, name: str) -> Tracking:
        return Tracking([run.child(name) for run in self.runs], self.log_every)

    def pause(self) -> None:
        for run in self.runs:
            run.pause()

    def finish(self, status: Status = "FINISHED") -> None:
        for run in self.runs:
            run.finish(status)

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        interrupted = kind is not None and (issubclass(kind, KeyboardInterrupt) or (
            isinstance(error, TrainingStopped) and error.exit_code == 130))
        self.finish("FINISHED" if kind is None else "KILLED" if interrupted else "FAILED")
