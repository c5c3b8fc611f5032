"""TensorBoard: event files in the run directory's ``tensorboard/`` (a fold's in a folder of its own), so
``tensorboard --logdir runs`` shows every run side by side.

The config is a text summary and, with the final scores, an HParams entry. A resumed run purges what the
stopped one wrote after its checkpoint (``purge_step``), so no step is shown twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lastpool.errors import ConfigError
from lastpool.tracking.base import RunTracker, Status, flat_params


def check_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError("--report-to tensorboard needs TensorBoard: pip install 'lastpool[tracking]'") from None


class TensorBoardRun(RunTracker):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.params: dict[str, Any] = {}
        self._writer: Any = None
        self._purge: int | None = None

    def writer(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.folder), purge_step=self._purge)
            self._purge = None  # once: a writer reopened later (after pause) must not purge again
        return self._writer

    def start(self, params: dict[str, Any], resumed_step: int) -> None:
        self.params = flat_params(params)
        if resumed_step > 0:
            self._purge = resumed_step + 1
            return
        text = "\n".join(f"    {key}: {value}" for key, value in self.params.items())  # markdown: a code block
        self.writer().add_text("config", text, 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        writer = self.writer()
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)
        writer.flush()

    def log_final(self, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        # run_name ".": the HParams entry goes into this run's own folder, not a new one beside it
        self.writer().add_hparams(self.params or {"run": self.folder.name}, metrics, run_name=".")

    def log_files(self, folder: Path, model: Path | None) -> None:
        """The files are beside the event files already (the run directory)."""

    def child(self, name: str) -> TensorBoardRun:
        return TensorBoardRun(self.folder / name)

    def pause(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self, status: Status) -> None:
        if status != "FINISHED" and self.params:
            self.writer().add_text("status", status)
        self.pause()
