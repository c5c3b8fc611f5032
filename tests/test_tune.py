"""``lastpool tune`` on a tiny from-scratch model, with a real Optuna study (in memory and on SQLite).

Invariants: the study runs its trial budget, once per trial even with two processes on one database; a
stopped study continues where it was; trials doing worse than the median are pruned at an epoch; the
best config is a file ``lastpool train --config`` takes; bad input is one clear error, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lastpool.cli import main
from tests.conftest import TINY_FLAGS, demo_sample, snapshot, write_csv

optuna = pytest.importorskip("optuna")

FLAGS = [*TINY_FLAGS, "--epochs", "3", "--no-baseline", "--no-fuse-baseline", "--quiet"]
# A model that learns something on 80 demo rows in 4 epochs, scored on 36: trials differ, so some fall behind.
LEARNING = ["--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--d-ff", "64", "--vocab-size", "300",
            "--max-length", "32", "--batch-size", "8", "--epochs", "4", "--val-fraction", "0.3", "--no-baseline",
            "--no-fuse-baseline", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts, labels = demo_sample(per_class=40)
    return write_csv(tmp_path_factory.mktemp("tune") / "train.csv", texts, labels)


def _space(folder: Path, text: str) -> Path:
    path = folder / "space.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _study(storage: str, name: str = "lastpool") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def test_tune_writes_a_best_config_that_train_takes(data: Path, tmp_path: Path) -> None:
    space = _space(tmp_path, "lr: {low: 1.0e-4, high: 3.0e-2, log: true}\nbatch_size: {choices: [8, 16]}\n")
    out = tmp_path / "tune"
    assert main(["tune", "--data", str(data), "--trials", "3", "--space", str(space), "--no-pruning",
                 "--out", str(out), *FLAGS]) == 0
    summary = json.loads((out / "tune.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 3
    best = max(summary["trials"], key=lambda t: t["value"])
    assert summary["best"]["trial"] == best["trial"]
    assert {"trials.csv", "report.md", "report.html", "best.yaml"} <= {p.name for p in out.iterdir()}
    assert (out / "plots" / "optimisation_history.png").read_bytes()[:4] == b"\x89PNG"
    assert "lastpool train --config best.yaml" in (out / "report.md").read_text()
    settings = yaml.safe_load((out / "best.yaml").read_text())
    assert settings["lr"] == pytest.approx(best["lr"]) and settings["batch_size"] == best["batch_size"]
    run = tmp_path / "run"
    assert main(["train", "--config", str(out / "best.yaml"), "--out", str(run), "--quiet"]) == 0
    trained = yaml.safe_load((run / "config.yaml").read_text())
    assert trained["lr"] == pytest.approx(best["lr"]) and trained["data"] == str(data)


def test_the_first_trial_is_the_run_as_configured(data: Path, tmp_path: Path) -> None:
    """Trial 0 measures the settings the user gave, each brought into the space (a weight decay of 0 to the
    range's low end), so tune's best is not below the untuned run on validation; a value missing from
    choices is drawn instead."""
    space = _space(tmp_path, "lr: {low: 1.0e-4, high: 3.0e-2, log: true}\nbatch_size: {choices: [4, 16]}\n"
                             "weight_decay: {low: 0.01, high: 0.1}\n")
    out = tmp_path / "tune"
    assert main(["tune", "--data", str(data), "--trials", "2", "--space", str(space), "--no-pruning",
                 "--out", str(out), *FLAGS, "--lr", "0.002", "--batch-size", "8", "--weight-decay", "0"]) == 0
    trials = json.loads((out / "tune.json").read_text())["trials"]
    assert trials[0]["lr"] == pytest.approx(0.002) and trials[0]["weight_decay"] == pytest.approx(0.01)
    assert trials[0]["batch_size"] in (4, 16) and trials[1]["lr"] != pytest.approx(0.002)


def test_the_pruner_waits_for_finished_trials_and_a_quarter_of_the_epochs() -> None:
    from lastpool.config import RunConfig
    from lastpool.tuning.study import pruner_for

    pruner = pruner_for(RunConfig(epochs=40), trials=20)
    assert (pruner._n_startup_trials, pruner._n_warmup_steps) == (5, 10)
    pruner = pruner_for(RunConfig(epochs="auto"), trials=6)
    assert (pruner._n_startup_trials, pruner._n_warmup_steps) == (2, 1)


def test_trials_below_the_median_are_pruned(data: Path, tmp_path: Path) -> None:
    """A learning rate range from useless to fine: some trials fall behind the median at an epoch. In memory,
    so the sampler is seeded and the trials are the same every run."""
    space = _space(tmp_path, "lr: {low: 1.0e-6, high: 5.0e-2, log: true}\n")
    out = tmp_path / "tune"
    assert main(["tune", "--data", str(data), "--trials", "8", "--space", str(space), "--out", str(out),
                 *LEARNING]) == 0
    trials = json.loads((out / "tune.json").read_text())["trials"]
    states = [t["state"] for t in trials]
    assert len(trials) == 8 and "PRUNED" in states and "COMPLETE" in states
    for trial in trials:
        # a pruned trial stopped before its last epoch; the others ran all 4
        assert trial["epochs_run"] < 4 if trial["state"] == "PRUNED" else trial["epochs_run"] == 4


def test_a_stopped_study_continues_where_it_was(data: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["tune", "--data", str(data), "--storage", storage, "--no-pruning", *FLAGS]
    assert main([*args, "--trials", "2", "--out", str(tmp_path / "first")]) == 0
    first = [(t.number, t.params) for t in _study(storage).get_trials()]
    assert main([*args, "--trials", "4", "--out", str(tmp_path / "second")]) == 0
    trials = _study(storage).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3] and all(t.state.name == "COMPLETE" for t in trials)
    assert [(t.number, t.params) for t in trials[:2]] == first
    again = tmp_path / "third"  # the budget is spent: nothing more runs, the report covers the study
    assert main([*args, "--trials", "4", "--out", str(again)]) == 0
    assert len(_study(storage).get_trials()) == 4
    assert len(json.loads((again / "tune.json").read_text())["trials"]) == 4


def test_two_processes_share_one_study_and_its_budget(data: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["tune", "--data", str(data), "--storage", storage, "--trials", "1", "--no-pruning",
                 "--out", str(tmp_path / "w0"), *FLAGS]) == 0  # the study exists before both start
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "lastpool", "tune", "--data", str(data), "--storage", storage,
                                 "--trials", "7", "--no-pruning", "--out", str(tmp_path / f"w{i}"), *FLAGS],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in (1, 2)]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
    trials = _study(storage).get_trials()
    assert len(trials) == 7 and [t.number for t in trials] == list(range(7))
    assert all(t.state.name == "COMPLETE" for t in trials)
    by_worker = [t.user_attrs["worker"] for t in trials[1:]]
    assert len(set(by_worker)) == 2  # both processes ran trials, each trial once


@pytest.mark.parametrize(("space", "extra", "needle"), [
    ("model: {choices: [scratch]}\n", [], "not searched by tune"),
    ("lr: {low: 0.1, high: 0.01}\n", [], "must be below high"),
    ("lr: {low: 0, high: 0.1, log: true}\n", [], "log scale needs low above 0"),
    ("not_a_field: {low: 1, high: 2}\n", [], "not a training setting"),
    ("lr: [1, 2\n", [], "not valid YAML"),
    ("dropout: {low: 0.0, high: 2.0}\n", [], "dropout: 2.0 is not a valid value"),
    ("batch_size: {choices: []}\n", [], "non-empty list"),
    (None, ["--trials", "0"], "--trials must be at least 1"),
    (None, ["--timeout", "0"], "--timeout must be above 0"),
    (None, ["--storage", "sqlite:///{tmp}/train.csv/study.db"], "cannot open the study"),
])
def test_bad_tune_input_is_one_clear_error_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], space: str | None, extra: list[str], needle: str) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "train.csv", texts, labels)
    flags = ["--space", str(_space(tmp_path, space))] if space is not None else []
    before = snapshot(tmp_path)
    code = main(["tune", "--data", str(data), "--out", str(tmp_path / "tune"), *flags, *FLAGS,
                 *[e.replace("{tmp}", str(tmp_path)) for e in extra]])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before


def test_a_study_made_for_another_search_is_refused(data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = _space(tmp_path, "lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    assert main(["tune", "--data", str(data), "--storage", storage, "--trials", "1", "--space", str(space),
                 "--out", str(tmp_path / "a"), *FLAGS]) == 0
    capsys.readouterr()
    other = tmp_path / "other.yaml"
    other.write_text("lr: {low: 1.0e-3, high: 1.0e-1, log: true}\n", encoding="utf-8")
    code = main(["tune", "--data", str(data), "--storage", storage, "--trials", "2", "--space", str(other),
                 "--out", str(tmp_path / "b"), *FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and "was made with another search space (lr)" in err, err
    assert not (tmp_path / "b").exists() and len(_study(storage).get_trials()) == 1
