"""MLflow: a run in an experiment of a tracking store (a folder, SQLite, a server), through ``MlflowClient``
with the store named explicitly (no process-wide active run: cv's folds are runs of their own).

The config goes in as parameters, scalars as metrics with their optimizer step, the run's files as
artifacts and its model folder as an MLflow pyfunc model (``model/``) that ``mlflow.pyfunc.load_model``
runs on a DataFrame of texts. A resumed run reopens the same MLflow run and skips the steps the stopped
one had logged already (exact resume makes them the same values), so none is logged twice.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from lastpool.errors import ConfigError
from lastpool.tracking.base import RUN_FILES, RUN_FOLDERS, RunTracker, Status, flat_params

DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default since 3.7, in the working directory
MAX_PARAM_LENGTH = 6000  # MLflow refuses longer parameter values
BATCH = 100  # parameters per log_batch call (MLflow's limit)


def tracking_uri(configured: str | None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def connect(uri: str) -> Any:
    """A client of the store at ``uri``, checked now: an unreachable or unwritable store is a clear error
    before anything trains."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("--report-to mlflow needs MLflow: pip install 'lastpool[tracking]'") from None
    # MLflow draws a progress bar for every folder it copies and announces each new database's tables.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds (SQLAlchemy, HTTP, OS) for one cause
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--tracking-uri {uri}: cannot use this MLflow store ({detail})") from None
    return client


def metric_key(name: str) -> str:
    """A name MLflow takes (letters, digits, ``_-. :/``): ``f1[negative]`` becomes ``f1/negative``."""
    return re.sub(r"[^\w\-. :/]", "_", re.sub(r"\[(.*?)\]", r"/\1", name))


class MlflowRun(RunTracker):
    def __init__(self, client: Any, experiment: str, name: str, parent: MlflowRun | None = None,
                 run_id: str | None = None) -> None:
        self.client, self.experiment, self.name, self.parent = client, experiment, name, parent
        self.run_id = run_id
        self._logged: dict[str, int] = {}  # resumed: the last step the stopped run logged, per metric
        self._resumed = run_id is not None

    def _run(self) -> str:
        """The MLflow run, created on first use (a parent before its first child)."""
        if self.run_id is None:
            experiment = self.client.get_experiment_by_name(self.experiment)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self.client.create_experiment(self.experiment))
            tags = {"mlflow.source.name": "lastpool"}
            if self.parent is not None:
                tags["mlflow.parentRunId"] = self.parent._run()
            self.run_id = self.client.create_run(experiment_id, run_name=self.name, tags=tags).info.run_id
        return self.run_id

    def start(self, params: dict[str, Any], resumed_step: int) -> None:
        from mlflow.entities import Param

        run_id = self._run()
        if self._resumed:
            self.client.update_run(run_id, status="RUNNING")
            return
        values = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flat_params(params).items()]
        for i in range(0, len(values), BATCH):
            self.client.log_batch(run_id, params=values[i : i + BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        run_id, now = self._run(), int(time.time() * 1000)
        fresh = {key: v for k, v in metrics.items() if step > self._last_logged(key := metric_key(k))}
        if fresh:
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in fresh.items()])

    def _last_logged(self, key: str) -> int:
        if not self._resumed:
            return -1
        if key not in self._logged:
            history = self.client.get_metric_history(self._run(), key)
            self._logged[key] = max((m.step for m in history), default=-1)
        return self._logged[key]

    def log_final(self, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, 0)

    def log_files(self, folder: Path, model: Path | None) -> None:
        run_id = self._run()
        for name in RUN_FILES:
            if (folder / name).is_file():
                self.client.log_artifact(run_id, str(folder / name))
        for name in RUN_FOLDERS:
            if (folder / name).is_dir():
                self.client.log_artifacts(run_id, str(folder / name), name)
        if model is not None:
            from lastpool.tracking.pyfunc import save_pyfunc

            with tempfile.TemporaryDirectory(prefix="lastpool-mlflow-") as tmp:
                saved = Path(tmp) / "model"
                save_pyfunc(model, saved)
                self.client.log_artifacts(run_id, str(saved), "model")

    def child(self, name: str) -> MlflowRun:
        return MlflowRun(self.client, self.experiment, name, parent=self)

    def finish(self, status: Status) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

    def state(self) -> dict[str, Any]:
        return {"mlflow_run_id": self.run_id} if self.run_id is not None else {}
