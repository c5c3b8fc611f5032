"""Checkpoints, exact resume and faults: SIGKILL at a random step, Ctrl-C, NaN loss, full disk, bad --resume.

"Exact" means bitwise: on CPU, with the same seed, a resumed run ends with the same weights, history
(losses, accuracies) and temperature as a run that was never stopped; only wall-clock fields differ.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from lastpool import Classifier
from lastpool.cli import main
from lastpool.training.checkpoint import CheckpointSettings, list_checkpoints, load_checkpoint
from tests.conftest import demo_sample, snapshot, write_csv

SMALL = {"epochs": 3, "batch_size": 8, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "vocab_size": 300}
FLAGS = ["--epochs", "4", "--batch-size", "8", "--d-model", "32", "--n-layers", "1", "--n-heads", "2",
         "--d-ff", "64", "--vocab-size", "300", "--max-length", "32", "--quiet"]
TIMING = {"seconds", "train_seconds", "train_samples_per_second"}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lastpool", *args], capture_output=True, text=True, timeout=300,
                          env=_env(), **kwargs)


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _run_outputs(run: Path) -> tuple[dict[str, torch.Tensor], Any, Any]:
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    return load_file(str(run / "model" / "model.safetensors")), _without_timing(history), _without_timing(metrics)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts, labels = demo_sample(per_class=40)
    return write_csv(tmp_path_factory.mktemp("ckdata") / "train.csv", texts, labels)


@pytest.fixture(scope="module")
def uninterrupted(data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ck") / "reference"
    proc = _cli("train", "--data", str(data_file), "--out", str(run), "--save-every", "2", *FLAGS)
    assert proc.returncode == 0, proc.stderr
    return run


# --- exact resume, in process ------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"grad_accum": 2, "warmup": 3}], ids=["plain", "grad-accum"])
def test_resume_from_any_checkpoint_is_bitwise_identical(tmp_path: Path, extra: dict[str, Any]) -> None:
    """Dropout, token dropout, the sampler position and the schedule all continue exactly."""
    texts, labels = demo_sample()
    config = {**SMALL, **extra}
    settings = CheckpointSettings(tmp_path / "ck", every=2, keep=100)
    full = Classifier(**config).fit(texts, labels, checkpoints=settings)
    saved = list_checkpoints(settings.folder)
    assert any(p.name.endswith("-epoch") for p in saved) and any(not p.name.endswith("-epoch") for p in saved)
    assert full.model is not None and full.result is not None and full.spec is not None
    for checkpoint in (saved[1], saved[len(saved) // 2], saved[-1]):
        resumed = Classifier(**config).fit(texts, labels, resume=load_checkpoint(checkpoint))
        assert resumed.model is not None and resumed.result is not None and resumed.spec is not None
        assert _same_state(full.model.state_dict(), resumed.model.state_dict()), checkpoint.name
        assert _without_timing(resumed.result.history) == _without_timing(full.result.history)
        assert resumed.result.best_epoch == full.result.best_epoch
        assert resumed.spec.temperature == full.spec.temperature


def test_bf16_master_weights_resume_exactly(tmp_path: Path) -> None:
    """bf16 training: the float32 masters are what a checkpoint holds, and all a resume needs."""
    from lastpool.config import RunConfig
    from lastpool.data.batching import EncodedDataset
    from lastpool.tasks import SingleLabel
    from lastpool.training.trainer import Trainer
    from tests.test_training_precision import _tiny_llama_classifier

    generator = random.Random(0)
    ids = [[generator.randrange(3, 50) for _ in range(generator.randrange(3, 12))] for _ in range(40)]
    labels = [i % 3 for i in range(40)]
    train, val = EncodedDataset(ids[:32], labels[:32]), EncodedDataset(ids[32:], labels[32:])
    config = RunConfig(epochs=2, batch_size=8, lr=1e-2, token_dropout=0.1)
    settings = CheckpointSettings(tmp_path / "ck", every=3, keep=100)
    torch.manual_seed(0)
    model = _tiny_llama_classifier()
    task = SingleLabel(["a", "b", "c"], label_smoothing=config.label_smoothing)
    Trainer(config, 0, task, quiet=True, precision="bf16", checkpoints=settings).fit(model, train, val)
    middle = list_checkpoints(settings.folder)[1]
    again = _tiny_llama_classifier()
    Trainer(config, 0, task, quiet=True, precision="bf16", resume=load_checkpoint(middle)).fit(again, train, val)
    assert all(p.dtype == torch.float32 for p in again.parameters())
    assert _same_state(model.state_dict(), again.state_dict())


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    texts, labels = demo_sample()
    settings = CheckpointSettings(tmp_path / "ck", every=1, keep=2)
    Classifier(**SMALL).fit(texts, labels, checkpoints=settings)
    kept = list_checkpoints(settings.folder)
    assert len(kept) == 2 and kept[-1].name.endswith("-epoch")
    assert [p.name for p in settings.folder.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


# --- the CLI: SIGKILL, Ctrl-C, resume -----------------------------------------------------------------------


def _start(data_file: Path, run: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lastpool", "train", "--data", str(data_file), "--out", str(run),
                             "--save-every", "2", *FLAGS, *extra], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen[str], min_step: int) -> int:
    """Wait until a checkpoint at ``min_step`` or later exists; returns its step."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        steps = [int(p.name[5:13]) for p in list_checkpoints(run / "checkpoints")]
        if steps and max(steps) >= min_step:
            return max(steps)
        if proc.poll() is not None:
            pytest.fail(f"training ended before step {min_step}: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.01)
    pytest.fail("no checkpoint appeared")


def test_sigkill_at_a_random_step_then_resume_matches_the_uninterrupted_run(
        data_file: Path, uninterrupted: Path, tmp_path: Path) -> None:
    total = json.loads((uninterrupted / "metrics.json").read_text())["optimizer_steps"]
    seed = random.randrange(10**6)
    kill_after = random.Random(seed).randrange(2, total - 4)
    run = tmp_path / "killed"
    proc = _start(data_file, run)
    reached = _wait_for_checkpoint(run, proc, kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"seed {seed}: the run ended before the kill"
    assert not (run / "model").exists()  # killed: no half-written result
    resumed = _cli("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, f"seed {seed}, killed after step {reached}: {resumed.stderr}"
    weights, history, metrics = _run_outputs(run)
    ref_weights, ref_history, ref_metrics = _run_outputs(uninterrupted)
    assert _same_state(weights, ref_weights), f"seed {seed}: weights differ after resuming from step {reached}"
    assert history == ref_history and metrics == ref_metrics
    assert not (run / "checkpoints").exists()  # the finished run replaced its checkpoints


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(data_file: Path, uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "interrupted"
    proc = _start(data_file, run, "--save-every", "1000")  # only epoch-end checkpoints besides the Ctrl-C one
    _wait_for_checkpoint(run, proc, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    assert not (run / "model").exists()
    assert list_checkpoints(run / "checkpoints")
    resumed = _cli("train", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    weights, history, _ = _run_outputs(run)
    ref_weights, ref_history, _ = _run_outputs(uninterrupted)
    assert _same_state(weights, ref_weights) and history == ref_history


def test_sigterm_is_handled_like_ctrl_c(data_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "terminated"
    proc = _start(data_file, run)
    _wait_for_checkpoint(run, proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted at step" in err


# --- faults --------------------------------------------------------------------------------------------------


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data_file: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A learning rate of 1e30 makes the weights huge after one AdamW step and the next loss overflow."""
    run = tmp_path / "nan"
    code = main(["train", "--data", str(data_file), "--out", str(run), "--save-every", "1", "--lr", "1e30",
                 "--warmup", "0", *FLAGS])
    err = capsys.readouterr().err
    assert code == 3, err
    line = err.strip().splitlines()[-1]
    assert "training stopped: the loss is" in line and "at step" in line and "Traceback" not in err
    bad_step = int(line.split("at step ")[1].split()[0])
    kept = list_checkpoints(run / "checkpoints")
    assert kept and int(kept[-1].name[5:13]) == bad_step - 1 and str(kept[-1]) in line
    weights = load_checkpoint(kept[-1]).model
    assert all(torch.isfinite(w).all() for w in weights.values())  # the kept state is a good one
    assert not (run / "model").exists()


def test_not_enough_disk_space_fails_before_training(data_file: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import lastpool.training.checkpoint as checkpoint

    real = shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda path: real(path)._replace(free=10_000))
    before = snapshot(tmp_path)
    code = main(["train", "--data", str(data_file), "--out", str(tmp_path / "run"), *FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and "not enough free disk space" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_keep_checkpoints_0_writes_none_and_needs_no_space_for_them(data_file: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    import lastpool.training.checkpoint as checkpoint

    real = shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: real(path)._replace(free=10_000))
    saved: list[str] = []
    monkeypatch.setattr(checkpoint, "save_file", lambda tensors, filename: saved.append(filename))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_file), "--out", str(run), "--keep-checkpoints", "0", *FLAGS]) == 0
    assert saved == [] and (run / "model").is_dir() and not (run / "checkpoints").exists()
    code = main(["train", "--data", str(data_file), "--out", str(tmp_path / "r2"), "--keep-checkpoints", "0",
                 "--save-every", "5", *FLAGS])
    assert code == 2 and "save_every needs keep_checkpoints" in capsys.readouterr().err


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(data_file: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    import lastpool.training.checkpoint as checkpoint

    real = checkpoint.save_file

    def failing(tensors: dict[str, torch.Tensor], filename: str) -> None:
        if ".step-00000003." in filename:  # the first two checkpoints go through, the third finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, filename)

    monkeypatch.setattr(checkpoint, "save_file", failing)
    run = tmp_path / "full"
    code = main(["train", "--data", str(data_file), "--out", str(run), "--save-every", "1", "--keep-checkpoints",
                 "5", *FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "previous checkpoints are intact" in err
    kept = list_checkpoints(run / "checkpoints")
    assert [p.name for p in kept] == ["step-00000001", "step-00000002"]
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")] == []
    monkeypatch.setattr(checkpoint, "save_file", real)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert (run / "model" / "model.safetensors").is_file()


# --- bad --resume --------------------------------------------------------------------------------------------


@pytest.fixture
def stopped_run(data_file: Path, tmp_path: Path) -> Path:
    """A run directory holding checkpoints but no result, as a killed run leaves it."""
    run = tmp_path / "stopped"
    proc = _start(data_file, run)
    _wait_for_checkpoint(run, proc, 4)
    proc.kill()
    proc.communicate(timeout=60)
    return run


def _refused(args: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> None:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert all(text in err for text in expected), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_incompatible_resume_is_refused(stopped_run: Path, data_file: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["train", "--resume", str(stopped_run), "--lr", "0.5"], capsys, "incompatible", "lr")
    other = write_csv(tmp_path / "other.csv", *demo_sample(per_class=30))
    _refused(["train", "--resume", str(stopped_run), "--data", str(other)], capsys, "incompatible", "data")
    _refused(["train", "--resume", str(tmp_path / "nowhere")], capsys, "no checkpoint")
    _refused(["train", "--resume", str(stopped_run), "--out", str(tmp_path / "elsewhere")], capsys, "--resume")
    assert not (stopped_run / "model").exists()


def test_corrupt_checkpoints_are_refused(stopped_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    latest = list_checkpoints(stopped_run / "checkpoints")[-1]
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _refused(["train", "--resume", str(stopped_run)], capsys, "corrupt or truncated")
    weights.unlink()
    _refused(["train", "--resume", str(stopped_run)], capsys, "incomplete", "model.safetensors")


def test_a_pickled_object_in_a_checkpoint_is_never_unpickled(stopped_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    latest = list_checkpoints(stopped_run / "checkpoints")[-1]
    marker = tmp_path / "pwned"
    torch.save({"optimizer": _Evil(str(marker)), "scheduler": {}}, latest / "optimizer.pt")
    _refused(["train", "--resume", str(stopped_run)], capsys, "optimizer.pt is corrupt or not lastpool's")
    assert not marker.exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.path).touch, ())


def test_a_half_written_checkpoint_is_never_picked_up(tmp_path: Path) -> None:
    """A kill during a checkpoint write leaves a hidden temporary folder; resume takes the last complete one."""
    from lastpool.training.checkpoint import latest_checkpoint

    texts, labels = demo_sample()
    settings = CheckpointSettings(tmp_path / "ck", every=2, keep=3)
    Classifier(**{**SMALL, "epochs": 1}).fit(texts, labels, checkpoints=settings)
    complete = latest_checkpoint(settings.folder)
    partial = settings.folder / ".step-99999999.abc123.tmp"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    assert latest_checkpoint(settings.folder) == complete
    assert load_checkpoint(complete).step == int(complete.name[5:13])
