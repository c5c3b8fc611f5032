"""Experiment tracking (``--report-to tensorboard,mlflow``) against the real backends, read back with their
own readers: TensorBoard's EventAccumulator and MLflow's client on a SQLite store.

Invariants: what a run logs is what it wrote (history.jsonl, metrics.json, config.yaml), at the optimizer
steps it happened; the MLflow model runs like the model folder; a resumed run continues the same tracked
run with every step once; under DDP one process logs; cv/compare give one parent and a child per model;
a bad backend or store is one clear error before anything is written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from lastpool.classifier import Classifier
from lastpool.cli import main
from lastpool.training.checkpoint import list_checkpoints
from tests.conftest import TINY_FLAGS, demo_sample, snapshot, write_csv

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _runs(uri: str, experiment: str = "lastpool") -> list[Any]:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """MLflow puts a SQLite store's artifacts in ./mlruns: here, not in the checkout."""
    before = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (a new one costs seconds of migrations); each test its experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts, labels = demo_sample(per_class=30)
    return write_csv(tmp_path_factory.mktemp("tracking") / "train.csv", texts, labels)


@pytest.fixture(scope="module")
def tracked(data: Path, store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run logged to both backends, every 2 steps."""
    uri, run = store, tmp_path_factory.mktemp("tracked") / "run"
    code = main(["train", "--data", str(data), "--out", str(run), *TINY_FLAGS, "--epochs", "3", "--quiet",
                 "--report-to", "tensorboard,mlflow", "--tracking-uri", uri, "--log-every", "2",
                 "--run-name", "tiny"])
    assert code == 0
    return {"uri": uri, "run": run}


def test_tensorboard_holds_the_loss_every_n_steps_and_each_epoch(tracked: dict[str, Any]) -> None:
    run = tracked["run"]
    history = _jsonl(run / "history.jsonl")
    steps = history[-1]["steps"]
    loss = _scalars(run / "tensorboard", "train/loss")
    assert [s for s, _ in loss] == list(range(2, steps + 1, 2))
    val = _scalars(run / "tensorboard", "val/accuracy")
    assert [s for s, _ in val] == [r["steps"] for r in history]
    assert [v for _, v in val] == pytest.approx([r["val_accuracy"] for r in history])
    assert [v for _, v in _scalars(run / "tensorboard", "val/loss")] == pytest.approx([r["val_loss"] for r in history])
    metrics = json.loads((run / "metrics.json").read_text())
    assert _scalars(run / "tensorboard", "best_val/accuracy")[0][1] == pytest.approx(metrics["val"]["accuracy"])
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert "config/text_summary" in events.Tags()["tensors"]


def test_mlflow_holds_the_config_the_scores_and_the_files(tracked: dict[str, Any]) -> None:
    uri, run = tracked["uri"], tracked["run"]
    (found,) = _runs(uri)
    assert found.info.run_name == "tiny" and found.info.status == "FINISHED"
    config = yaml.safe_load((run / "config.yaml").read_text())
    params = found.data.params
    assert {k: params[k] for k in ("lr", "epochs", "mode", "d_model")} == {
        k: str(config[k]) for k in ("lr", "epochs", "mode", "d_model")}
    history = _jsonl(run / "history.jsonl")
    val = _history(uri, found.info.run_id, "val/accuracy")
    assert [s for s, _ in val] == [r["steps"] for r in history]
    assert [v for _, v in val] == pytest.approx([r["val_accuracy"] for r in history])
    assert [s for s, _ in _history(uri, found.info.run_id, "train/loss")] == [
        s for s, _ in _scalars(run / "tensorboard", "train/loss")]
    metrics = json.loads((run / "metrics.json").read_text())
    assert found.data.metrics["best_val/macro_f1"] == pytest.approx(metrics["val"]["macro_f1"])
    assert found.data.metrics["best_epoch"] == metrics["best_epoch"]
    files = {a.path for a in MlflowClient(uri).list_artifacts(found.info.run_id)}
    assert {"report.html", "metrics.json", "config.yaml", "history.jsonl", "plots", "model"} <= files


def test_the_mlflow_model_predicts_like_the_model_folder(tracked: dict[str, Any]) -> None:
    import mlflow

    uri, run = tracked["uri"], tracked["run"]
    (found,) = _runs(uri)
    texts = ["Profit rose sharply in the quarter", "The company cut its outlook", "Shares were unchanged"]
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{found.info.run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    predicted = model.predict(pd.DataFrame({"text": texts}))
    clf = Classifier.load(run / "model")
    assert list(predicted["label"]) == clf.predict(texts)
    probabilities = clf.predict_proba(texts)
    for j, label in enumerate(clf.labels):
        assert predicted[f"prob_{label}"].tolist() == pytest.approx(probabilities[:, j].tolist(), abs=1e-6)


def test_a_resumed_run_continues_the_same_tracked_run_with_each_step_once(data: Path, store: str,
                                                                          tmp_path: Path) -> None:
    uri = store
    flags = [*TINY_FLAGS, "--epochs", "4", "--batch-size", "8", "--quiet", "--report-to", "tensorboard,mlflow",
             "--tracking-uri", uri, "--log-every", "1", "--experiment", "resume"]
    reference = tmp_path / "reference"
    assert main(["train", "--data", str(data), "--out", str(reference), *flags, "--run-name", "reference"]) == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lastpool", "train", "--data", str(data), "--out", str(run),
                             *flags, "--save-every", "3", "--run-name", "killed"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not any(int(p.name[5:13]) >= 6 for p in list_checkpoints(run / "checkpoints")):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    time.sleep(0.3)  # let it log a few steps past the checkpoint: the resumed run must not log them again
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    resumed = subprocess.run([sys.executable, "-m", "lastpool", "train", "--resume", str(run), "--quiet"],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ref, killed = _runs(uri, "resume")
    assert killed.info.run_name == "killed" and killed.info.status == "FINISHED"
    expected = _history(uri, ref.info.run_id, "train/loss")
    got = _history(uri, killed.info.run_id, "train/loss")
    assert [s for s, _ in got] == [s for s, _ in expected]  # every step once (exact resume: the same losses)
    assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-5)
    assert [s for s, _ in _scalars(run / "tensorboard", "train/loss")] == [s for s, _ in expected]


def test_only_the_main_process_logs_under_ddp(data: Path, store: str, tmp_path: Path) -> None:
    uri, run = store, tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run([sys.executable, "-m", "lastpool", "train", "--data", str(data), "--out", str(run),
                           *TINY_FLAGS, "--quiet", "--num-processes", "2", "--report-to", "tensorboard,mlflow",
                           "--tracking-uri", uri, "--log-every", "1", "--experiment", "ddp"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    (found,) = _runs(uri, "ddp")
    steps = _jsonl(run / "history.jsonl")[-1]["steps"]
    assert [s for s, _ in _history(uri, found.info.run_id, "train/loss")] == list(range(1, steps + 1))
    assert [s for s, _ in _scalars(run / "tensorboard", "train/loss")] == list(range(1, steps + 1))
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) >= 1


def test_cv_logs_one_parent_and_a_child_per_fold(data: Path, store: str, tmp_path: Path) -> None:
    uri, out = store, tmp_path / "cv"
    code = main(["cv", "--data", str(data), "--folds", "2", "--out", str(out), *TINY_FLAGS, "--quiet",
                 "--report-to", "tensorboard,mlflow", "--tracking-uri", uri, "--experiment", "cv"])
    assert code == 0
    runs = _runs(uri, "cv")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["seed0-fold0", "seed0-fold1"]
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    result = json.loads((out / "cv.json").read_text())
    assert parent.data.metrics["cv/accuracy/mean"] == pytest.approx(result["summary"]["accuracy"]["mean"])
    scores = sorted(r.data.metrics["test/accuracy"] for r in children)
    assert scores == pytest.approx(sorted(r["scores"]["accuracy"] for r in result["runs"]))
    assert parent.data.params["folds"] == "2"
    assert all(_scalars(out / "tensorboard" / f"seed0-fold{k}", "val/accuracy") for k in (0, 1))
    assert {"cv.json", "report.html"} <= {a.path for a in MlflowClient(uri).list_artifacts(parent.info.run_id)}


def test_compare_names_each_child_by_its_setting(data: Path, store: str, tmp_path: Path) -> None:
    uri, out = store, tmp_path / "compare"
    code = main(["compare", "--data", str(data), "--pooling", "last,mean", "--folds", "1", "--out", str(out),
                 *TINY_FLAGS, "--epochs", "1", "--quiet", "--report-to", "mlflow", "--tracking-uri", uri,
                 "--experiment", "compare"])
    assert code == 0
    runs = _runs(uri, "compare")
    names = sorted(r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert names == ["pooling=last seed0-fold0", "pooling=mean seed0-fold0"]
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert "compare/pooling_last/accuracy/mean" in parent.data.metrics  # MLflow keys have no "="


@pytest.mark.parametrize(("flags", "needle"), [
    (["--report-to", "wandb"], "unknown tracking backend 'wandb'"),
    (["--report-to", "mlflow,mlflow"], "names a backend twice"),
    (["--report-to", "mlflow", "--tracking-uri", "sqlite:///{tmp}/train.csv/mlflow.db"], "cannot use this MLflow"),
    (["--report-to", "mlflow", "--tracking-uri", "postgresql://nobody@127.0.0.1:1/none"], "cannot use this MLflow"),
    (["--log-every", "0"], "log_every"),
])
def test_a_bad_backend_or_store_is_one_clear_error_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], needle: str) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "train.csv", texts, labels)
    before = snapshot(tmp_path)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY_FLAGS, "--quiet",
                 *[f.replace("{tmp}", str(tmp_path)) for f in flags]])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before


def test_no_backend_logs_nothing(trained_run: Path) -> None:
    """The default (--report-to none) leaves the run directory as it always was."""
    assert not (trained_run / "tensorboard").exists()
    assert yaml.safe_load((trained_run / "config.yaml").read_text())["report_to"] == []
