"""Multi-process (DDP) training on CPU with gloo: `lastpool train --num-processes 2`.

Every process computes the same global batches from the seed and takes its half of each; the loss of a
step is the mean over the global batch on all processes together. So 2 processes compute the same
gradient as one process with the same --batch-size, up to the order of floating-point additions (the
all-reduce adds two partial gradients). With dropout and token dropout off, the runs then differ only by
rounding: we allow 1e-4 on losses and require identical predictions on the validation split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lastpool.data.split import stratified_split
from tests.conftest import demo_sample, write_csv

FLAGS = ["--epochs", "3", "--batch-size", "8", "--d-model", "32", "--n-layers", "1", "--n-heads", "2",
         "--d-ff", "64", "--vocab-size", "300", "--max-length", "32", "--dropout", "0", "--token-dropout", "0",
         "--quiet"]


def _train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-m", "lastpool", "train", "--data", str(data), "--out", str(out),
                           *FLAGS, *extra], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    # 91 training rows: batches of 8 and a last one of 3, split 2 + 1 (uneven shares, still the exact mean).
    texts, labels = demo_sample(per_class=34)
    data = write_csv(root / "train.csv", texts, labels)
    single, double = root / "single", root / "ddp"
    one = _train(data, single)
    assert one.returncode == 0, one.stderr
    two = _train(data, double, "--num-processes", "2")
    assert two.returncode == 0, two.stderr
    return {"single": single, "ddp": double, "data": data}


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_with_the_same_global_batch(runs: dict[str, Path]) -> None:
    single, double = _history(runs["single"]), _history(runs["ddp"])
    assert [r["steps"] for r in single] == [r["steps"] for r in double]  # the same number of global batches
    for a, b in zip(single, double, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-4
        assert a["val_accuracy"] == b["val_accuracy"] and a["val_macro_f1"] == b["val_macro_f1"]
    w1 = load_file(str(runs["single"] / "model" / "model.safetensors"))
    w2 = load_file(str(runs["ddp"] / "model" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-3


def test_evaluation_counts_each_validation_example_once(runs: dict[str, Path]) -> None:
    metrics = json.loads((runs["ddp"] / "metrics.json").read_text())
    confusion = metrics["val"]["confusion_matrix"]
    n_val = sum(sum(row) for row in confusion)
    single = json.loads((runs["single"] / "metrics.json").read_text())["val"]["confusion_matrix"]
    _, labels = demo_sample(per_class=34)
    _, val_rows = stratified_split(labels, 0.1, 0)
    assert n_val == sum(sum(row) for row in single) == len(val_rows)  # 11 rows (6 + 5), none twice
    assert confusion == single


def test_only_the_main_process_writes_the_run_directory(runs: dict[str, Path]) -> None:
    run = runs["ddp"]
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("report") and p.name != "plots") == [
        "config.yaml", "history.jsonl", "metrics.json", "model"]
    assert not list(run.parent.glob(".ddp*"))  # no stray staging folders from a second writer


def test_torchrun_launches_the_same_training(runs: dict[str, Path], tmp_path: Path) -> None:
    """lastpool reads the standard torch.distributed environment, so torchrun works as --num-processes does."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "torchrun"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "lastpool", "train", "--data", str(runs["data"]), "--out", str(out), *FLAGS],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    for a, b in zip(_history(out), _history(runs["ddp"]), strict=True):  # the same job as --num-processes 2
        assert a["steps"] == b["steps"] and a["val_accuracy"] == b["val_accuracy"]
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-4


def test_a_bad_flag_is_reported_once_with_exit_code_2(runs: dict[str, Path], tmp_path: Path) -> None:
    proc = _train(runs["data"], tmp_path / "bad", "--num-processes", "2", "--batch-size", "1")
    assert proc.returncode == 2
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_a_batch_smaller_than_the_process_count_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    proc = _train(runs["data"], tmp_path / "bad", "--num-processes", "3", "--batch-size", "2")
    assert proc.returncode == 2 and "global batch" in proc.stderr


# --- FSDP ---------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["fsdp-full-7b.yaml", "fsdp-lora-7b.yaml"])
def test_fsdp_configs_run_a_step_on_a_tiny_model_with_two_cpu_processes(config: str, tmp_path: Path) -> None:
    """The documented 7B configs, with a tiny Llama in place of the 7B model: sharded over 2 gloo
    processes, one optimizer step, the gathered weights saved and loadable, and changed by the step."""
    from lastpool import Classifier
    from tests.test_pretrained import _model_folder

    folder = _model_folder(tmp_path, "llama")
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "train.csv", texts, labels)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "lastpool", "train", "--config", str(REPO / "configs" / config),
                           "--model", str(folder), "--data", str(data), "--out", str(out), "--num-processes", "2",
                           "--batch-size", "8", "--max-length", "32", "--max-steps", "1", "--epochs", "1",
                           "--lr", "1e-2"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "sharded with FSDP over 2 processes" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 1
    assert sum(sum(row) for row in metrics["val"]["confusion_matrix"]) == 6  # each validation row once
    trained = Classifier.load(out / "model")
    assert trained.spec is not None and trained.spec.mode == ("lora" if "lora" in config else "full")
    base = load_file(str(folder / "model.safetensors"))
    if "lora" not in config:  # a full fine-tune moved the backbone's weights
        weights = load_file(str(out / "model" / "model.safetensors"))
        name = next(k for k in weights if k.endswith("layers.0.mlp.up_proj.weight"))
        assert not weights[name].equal(base["model." + name.split("model.", 1)[1]])
    assert len(trained.predict(texts[:4])) == 4


def test_fsdp_run_interrupted_and_resumed_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    """Ctrl-C reaches both processes through the launcher; the checkpoint holds the gathered weights and
    optimizer state; the resumed sharded run ends with the same weights as one never stopped."""
    import signal
    import time

    from lastpool.training.checkpoint import list_checkpoints
    from tests.test_pretrained import _model_folder

    folder = _model_folder(tmp_path, "llama")
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "train.csv", texts, labels)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "lastpool", "train", "--config", str(REPO / "configs" / "fsdp-full-7b.yaml"),
                "--model", str(folder), "--data", str(data), "--out", str(out), "--num-processes", "2",
                "--batch-size", "8", "--max-length", "32", "--epochs", "2", "--lr", "1e-3", "--save-every", "2",
                "--grad-checkpointing", "--quiet"]

    reference = subprocess.run(command(tmp_path / "reference"), capture_output=True, text=True, timeout=600, env=env)
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "stopped"
    proc = subprocess.Popen(command(run), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list_checkpoints(run / "checkpoints") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and not (run / "model").exists()
    resumed = subprocess.run([sys.executable, "-m", "lastpool", "train", "--resume", str(run), "--num-processes", "2",
                              "--quiet"], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr
    ours = load_file(str(run / "model" / "model.safetensors"))
    expected = load_file(str(tmp_path / "reference" / "model" / "model.safetensors"))
    assert ours.keys() == expected.keys()
    assert all(ours[k].equal(expected[k]) for k in ours)
