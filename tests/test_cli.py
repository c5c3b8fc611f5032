"""The ``lastpool`` command end to end: train, eval, predict, both entry points and every bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lastpool import Classifier
from lastpool.cli import main
from tests.conftest import TINY_FLAGS, demo_sample, snapshot, write_csv, write_jsonl

LABELS = ["negative", "neutral", "positive"]


def run_ok(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.out + captured.err
    return captured.out, captured.err


def run_fail(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> str:
    """Run a command that must fail: exit 2, one ``error:`` line on stderr, no traceback, nothing written."""
    before = snapshot(root)
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 2, (code, captured.out, captured.err)
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert snapshot(root) == before, "a failed command left files behind"
    return lines[0]


def env_for_subprocess() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# --- train ----------------------------------------------------------------------------------------------


def check_run_dir(run: Path, epochs: int, labels: list[str]) -> dict:
    assert (run / "model" / "lastpool.json").is_file()
    assert (run / "model" / "model.safetensors").is_file()
    assert (run / "model" / "tokenizer.json").is_file()
    assert (run / "config.yaml").is_file()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    metrics = json.loads((run / "metrics.json").read_text())
    val = metrics["val"]
    assert 0.0 <= val["accuracy"] <= 1.0 and 0.0 <= val["macro_f1"] <= 1.0
    assert list(val["per_class"]) == labels
    for row in val["per_class"].values():
        assert set(row) >= {"precision", "recall", "f1", "support"}
    assert sum(row["support"] for row in val["per_class"].values()) == val["n"]
    cm = np.array(val["confusion_matrix"])
    assert cm.shape == (len(labels), len(labels)) and cm.sum() == val["n"]
    assert np.trace(cm) / val["n"] == pytest.approx(val["accuracy"])
    assert 1 <= metrics["best_epoch"] <= epochs
    # The kept epoch's scores are the language model's; a model fused with the bag-of-words part reports
    # the fused scores as val and the LM's own under fusion.
    fusion = metrics.get("fusion") or {}
    alone = fusion["language_model"] if fusion.get("share") else val
    assert history[metrics["best_epoch"] - 1]["val_macro_f1"] == alone["macro_f1"]
    assert metrics["train_seconds"] > 0 and metrics["train_samples_per_second"] > 0
    spec = json.loads((run / "model" / "lastpool.json").read_text())
    assert spec["labels"] == labels
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"
    return metrics


def test_train_on_demo_set(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = tmp_path / "runs" / "demo"
    out, err = run_ok(capsys, "train", "--out", str(run), "--quiet", *TINY_FLAGS)
    err_lines = err.strip().splitlines()
    assert len(err_lines) == 1, err  # the notice, on one line, and nothing else under --quiet
    assert err_lines[0].startswith("notice:") and "demo" in err_lines[0]
    out_lines = out.strip().splitlines()
    assert len(out_lines) == 1 and out_lines[0].startswith(f"run saved to {run}")
    metrics = check_run_dir(run, epochs=2, labels=LABELS)
    assert metrics["val"]["n"] == 48  # 10% of the 480 demo rows
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"] is None and config["d_model"] == 16 and config["out"] == str(run)


def test_train_on_csv_shows_progress(capsys: pytest.CaptureFixture[str], small_csv: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    out, err = run_ok(capsys, "train", "--data", str(small_csv), "--out", str(run), *TINY_FLAGS)
    assert "notice" not in err
    assert "epoch   1/2" in err and "epoch   2/2" in err  # per-epoch lines (so --quiet below can fail)
    assert f"run saved to {run}" in err
    metrics = check_run_dir(run, epochs=2, labels=LABELS)
    assert metrics["val"]["n"] == 6
    assert metrics["data"]["rows"] == 60
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == str(small_csv)


def test_train_quiet_prints_no_progress(capsys: pytest.CaptureFixture[str], small_csv: Path,
                                        tmp_path: Path) -> None:
    run = tmp_path / "run"
    out, err = run_ok(capsys, "train", "--data", str(small_csv), "--out", str(run), "--quiet", *TINY_FLAGS)
    assert err == ""
    assert out.strip().splitlines() == [out.strip()] and out.startswith(f"run saved to {run}")
    check_run_dir(run, epochs=2, labels=LABELS)


def test_train_jsonl_integer_labels(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    texts, labels = demo_sample()
    mapping = {"negative": 10, "neutral": 2, "positive": 1}
    data = write_jsonl(tmp_path / "train.jsonl",
                       [{"sentence": t, "sentiment": mapping[label]} for t, label in zip(texts, labels, strict=True)])
    run = tmp_path / "run"
    run_ok(capsys, "train", "--data", str(data), "--out", str(run), "--quiet", *TINY_FLAGS)
    check_run_dir(run, epochs=2, labels=["1", "2", "10"])  # numeric, not string, order


def test_train_with_eval_data(capsys: pytest.CaptureFixture[str], small_csv: Path, tmp_path: Path) -> None:
    texts, labels = demo_sample(per_class=7, offset=40)
    eval_csv = write_csv(tmp_path / "eval.csv", texts, labels)
    run = tmp_path / "run"
    run_ok(capsys, "train", "--data", str(small_csv), "--eval-data", str(eval_csv), "--out", str(run),
           "--quiet", *TINY_FLAGS)
    metrics = check_run_dir(run, epochs=2, labels=LABELS)
    assert metrics["val"]["n"] == 21
    assert [row["support"] for row in metrics["val"]["per_class"].values()] == [7, 7, 7]


def test_train_config_file_and_flag_override(capsys: pytest.CaptureFixture[str], small_csv: Path,
                                             tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(small_csv), "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "vocab_size": 300,
        "max_length": 32, "epochs": 3, "lr": 0.002, "pooling": "mean",
    }))
    run = tmp_path / "run"
    run_ok(capsys, "train", "--config", str(config), "--epochs", "1", "--out", str(run), "--quiet")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 1  # the flag wins over the file
    assert saved["lr"] == 0.002 and saved["pooling"] == "mean" and saved["data"] == str(small_csv)
    assert saved["batch_size"] == 32  # untouched fields keep their defaults
    check_run_dir(run, epochs=1, labels=LABELS)
    assert json.loads((run / "model" / "lastpool.json").read_text())["pooling"] == "mean"


def test_train_label_order(capsys: pytest.CaptureFixture[str], small_csv: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    order = ["positive", "neutral", "negative"]
    run_ok(capsys, "train", "--data", str(small_csv), "--labels", ",".join(order), "--out", str(run), "--quiet",
           *TINY_FLAGS)
    check_run_dir(run, epochs=2, labels=order)
    assert Classifier.load(run).labels == order


def test_train_max_steps_stops_early(capsys: pytest.CaptureFixture[str], small_csv: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # 54 training rows in batches of 8: 7 steps per epoch, so 3 steps end inside the first epoch.
    run_ok(capsys, "train", "--data", str(small_csv), "--out", str(run), "--quiet", *TINY_FLAGS,
           "--epochs", "3", "--batch-size", "8", "--max-steps", "3")
    metrics = check_run_dir(run, epochs=1, labels=LABELS)
    assert metrics["optimizer_steps"] == 3 and metrics["epochs_run"] == 1
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["steps"] == 3


# --- eval and predict -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts, labels = demo_sample(per_class=10, offset=40)
    return write_csv(tmp_path_factory.mktemp("eval") / "eval.csv", texts, labels)


def test_eval_table(capsys: pytest.CaptureFixture[str], trained_run: Path, eval_csv: Path) -> None:
    out, err = run_ok(capsys, "eval", str(trained_run), "--data", str(eval_csv))
    for needle in ("precision", "accuracy", "macro avg", "weighted avg", "confusion matrix", "log loss", *LABELS):
        assert needle in out
    assert "30 texts" in out


def test_eval_json_matches_classifier(capsys: pytest.CaptureFixture[str], trained_run: Path, eval_csv: Path) -> None:
    out, _ = run_ok(capsys, "eval", str(trained_run / "model"), "--data", str(eval_csv), "--json")
    metrics = json.loads(out)
    table = pd.read_csv(eval_csv)
    expected = Classifier.load(trained_run).evaluate(table["text"].tolist(), table["label"].tolist())
    assert metrics["n"] == 30
    assert metrics["labels"] == LABELS
    assert metrics["accuracy"] == expected["accuracy"] and metrics["macro_f1"] == expected["macro_f1"]
    assert metrics["per_class"] == expected["per_class"]
    assert metrics["confusion_matrix"] == expected["confusion_matrix"]


def test_predict_argument_texts(capsys: pytest.CaptureFixture[str], trained_run: Path) -> None:
    texts = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .", "The company cut 200 jobs ."]
    expected = Classifier.load(trained_run).predict(texts)
    out, _ = run_ok(capsys, "predict", str(trained_run), *texts, "--json")
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert [r["label"] for r in rows] == expected
    out, _ = run_ok(capsys, "predict", str(trained_run), *texts)  # the table
    assert "p(negative)" in out and "cut 200 jobs" in out and expected[0] in out


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".tsv"])
def test_predict_file_to_output(capsys: pytest.CaptureFixture[str], trained_run: Path, eval_csv: Path,
                                tmp_path: Path, suffix: str) -> None:
    target = tmp_path / "out" / f"predictions{suffix}"
    _, err = run_ok(capsys, "predict", str(trained_run), "--input", str(eval_csv), "--output", str(target))
    assert f"wrote 30 predictions to {target}" in err
    if suffix == ".jsonl":
        frame = pd.DataFrame([json.loads(line) for line in target.read_text().splitlines()])
    else:
        frame = pd.read_csv(target, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False)
    assert list(frame.columns) == ["text", "label", *(f"prob_{n}" for n in LABELS)]
    texts = pd.read_csv(eval_csv)["text"].tolist()
    assert frame["text"].tolist() == texts
    np.testing.assert_allclose(frame[[f"prob_{n}" for n in LABELS]].to_numpy().sum(axis=1), 1.0, atol=1e-5)
    assert frame["label"].tolist() == Classifier.load(trained_run).predict(texts)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp file left


def test_predict_txt_input_one_text_per_line(capsys: pytest.CaptureFixture[str], trained_run: Path,
                                             tmp_path: Path) -> None:
    texts = ["Net sales decreased by 12 % .", "Profit rose sharply", "The board meets on Monday ."]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out, _ = run_ok(capsys, "predict", str(trained_run), "--input", str(source))
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert [r["label"] for r in rows] == Classifier.load(trained_run).predict(texts)


# --- entry points ---------------------------------------------------------------------------------------


def test_python_dash_m_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "lastpool", "--help"], capture_output=True, text=True,
                          timeout=120, env=env_for_subprocess())
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "eval", "predict"):
        assert command in proc.stdout


def test_console_script(trained_run: Path, tmp_path: Path) -> None:
    script = shutil.which("lastpool", path=str(Path(sys.executable).parent))
    assert script is not None, "the lastpool console script is not installed next to this python"
    proc = subprocess.run([script, "predict", str(trained_run), "Profit rose 20 % .", "--json"],
                          capture_output=True, text=True, timeout=120, env=env_for_subprocess())
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["text"] == "Profit rose 20 % ." and row["label"] in LABELS
    # A user error through the real process: exit status 2 and one line, no traceback.
    proc = subprocess.run([script, "train", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, env=env_for_subprocess())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.csv'}: no such file"]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run_ok(capsys, "train", "--help")
    assert "--max-length" in out and "--eval-data" in out


# --- bad inputs -----------------------------------------------------------------------------------------


def train_fail(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> str:
    message = run_fail(capsys, tmp_path, "train", *args, "--out", str(tmp_path / "runs" / "r1"), *TINY_FLAGS)
    assert not (tmp_path / "runs").exists()
    return message


def test_missing_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    msg = train_fail(capsys, tmp_path, "--data", str(tmp_path / "nope.csv"))
    assert "nope.csv" in msg and "no such file" in msg


def test_unknown_format(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "data.xlsx").write_bytes(b"PK\x03\x04 not really")
    msg = train_fail(capsys, tmp_path, "--data", str(tmp_path / "data.xlsx"))
    assert "data.xlsx" in msg and "unsupported file type" in msg and ".xlsx" in msg


def test_missing_text_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    texts, labels = demo_sample()
    data = tmp_path / "d.csv"
    pd.DataFrame({"id": range(60), "body": texts, "label": labels}).to_csv(data, index=False)
    msg = train_fail(capsys, tmp_path, "--data", str(data))
    assert "d.csv" in msg and "no text column" in msg and "id, body, label" in msg
    msg = train_fail(capsys, tmp_path, "--data", str(data), "--text-col", "review")
    assert "no column 'review'" in msg


def test_ambiguous_columns(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    texts, labels = demo_sample()
    data = tmp_path / "d.csv"
    pd.DataFrame({"text": texts, "sentence": texts, "label": labels}).to_csv(data, index=False)
    msg = train_fail(capsys, tmp_path, "--data", str(data))
    assert "d.csv" in msg and "ambiguous text column" in msg and "text, sentence" in msg


def test_empty_text_names_the_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    texts, labels = demo_sample()
    texts[4] = "   "  # data row 5 is line 6 (after the header)
    msg = train_fail(capsys, tmp_path, "--data", str(write_csv(tmp_path / "d.csv", texts, labels)))
    assert "d.csv, line 6: empty text" in msg


def test_missing_label_names_the_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    texts, labels = demo_sample()
    rows = [{"text": t, "label": label} for t, label in zip(texts, labels, strict=True)]
    del rows[9]["label"]
    msg = train_fail(capsys, tmp_path, "--data", str(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert "d.jsonl, line 10: missing label" in msg


def test_single_class(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    texts, _ = demo_sample()
    msg = train_fail(capsys, tmp_path, "--data", str(write_csv(tmp_path / "d.csv", texts, ["neutral"] * 60)))
    assert "d.csv" in msg and "only one class" in msg and "'neutral'" in msg


def test_validation_label_unseen_in_training(capsys: pytest.CaptureFixture[str], small_csv: Path,
                                             tmp_path: Path) -> None:
    texts, labels = demo_sample(per_class=3, offset=40)
    labels[4] = "mixed"
    eval_csv = write_csv(tmp_path / "eval.csv", texts, labels)
    msg = train_fail(capsys, tmp_path, "--data", str(small_csv), "--eval-data", str(eval_csv))
    assert "eval.csv" in msg and "'mixed'" in msg and "never seen in training" in msg


def test_undecodable_bytes_name_the_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    lines = data.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b" ", b" \xff", 1)
    data.write_bytes(b"\n".join(lines))
    msg = train_fail(capsys, tmp_path, "--data", str(data))
    assert "d.csv, line 4: not valid UTF-8" in msg and "0xff" in msg


def test_label_not_in_labels_flag(capsys: pytest.CaptureFixture[str], small_csv: Path, tmp_path: Path) -> None:
    msg = train_fail(capsys, tmp_path, "--data", str(small_csv), "--labels", "negative,positive")
    assert "train.csv" in msg and "'neutral'" in msg and "--labels" in msg


def test_out_exists_and_not_empty(capsys: pytest.CaptureFixture[str], small_csv: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    msg = run_fail(capsys, tmp_path, "train", "--data", str(small_csv), "--out", str(run), *TINY_FLAGS)
    assert str(run) in msg and "already exists and is not empty" in msg
    assert (run / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--lr", "-0.1"], "lr"),
        (["--batch-size", "0"], "batch_size"),
        (["--pooling", "median"], "pooling"),
        (["--n-heads", "3"], "divisible by n_heads"),
        (["--val-fraction", "1.5"], "val_fraction"),
        (["--labels", "onlyone"], "--labels"),
    ],
)
def test_invalid_config_values(capsys: pytest.CaptureFixture[str], small_csv: Path, tmp_path: Path,
                               flags: list[str], needle: str) -> None:
    # Flags after TINY_FLAGS win, so "--n-heads 3" meets "--d-model 16".
    message = run_fail(capsys, tmp_path, "train", "--data", str(small_csv), "--out", str(tmp_path / "runs" / "r"),
                       *TINY_FLAGS, *flags)
    assert needle in message
    assert not (tmp_path / "runs").exists()


def test_unknown_yaml_field(capsys: pytest.CaptureFixture[str], small_csv: Path, tmp_path: Path) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text("epochs: 1\nlearning_rate: 0.1\n")
    msg = train_fail(capsys, tmp_path, "--config", str(config), "--data", str(small_csv))
    assert "exp.yaml" in msg and "unknown field" in msg and "learning_rate" in msg


def test_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    msg = train_fail(capsys, tmp_path, "--config", str(tmp_path / "none.yaml"))
    assert "none.yaml" in msg and "does not exist" in msg


@pytest.fixture
def model_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of the trained model folder, for tests that break it."""
    return Path(shutil.copytree(trained_run / "model", tmp_path / "model"))


def predict_and_eval_fail(capsys: pytest.CaptureFixture[str], root: Path, model: Path, data: Path) -> list[str]:
    return [
        run_fail(capsys, root, "predict", str(model), "some text"),
        run_fail(capsys, root, "eval", str(model), "--data", str(data)),
    ]


def test_path_that_is_not_a_model(capsys: pytest.CaptureFixture[str], small_csv: Path, tmp_path: Path) -> None:
    for msg in predict_and_eval_fail(capsys, tmp_path, tmp_path / "nothing", small_csv):
        assert "nothing" in msg and "no such model folder" in msg
    (tmp_path / "folder").mkdir()
    for msg in predict_and_eval_fail(capsys, tmp_path, tmp_path / "folder", small_csv):
        assert "folder" in msg and "not a lastpool model folder" in msg


def test_invalid_model_json(capsys: pytest.CaptureFixture[str], model_copy: Path, small_csv: Path,
                            tmp_path: Path) -> None:
    spec = model_copy / "lastpool.json"
    spec.write_text(spec.read_text()[:-20] + "{{ not json")
    for msg in predict_and_eval_fail(capsys, tmp_path, model_copy, small_csv):
        assert "lastpool.json" in msg and "invalid model description" in msg


def test_truncated_weights(capsys: pytest.CaptureFixture[str], model_copy: Path, small_csv: Path,
                           tmp_path: Path) -> None:
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for msg in predict_and_eval_fail(capsys, tmp_path, model_copy, small_csv):
        assert "model.safetensors" in msg and "corrupt or truncated" in msg


def test_pickle_files_are_refused(capsys: pytest.CaptureFixture[str], model_copy: Path, small_csv: Path,
                                  tmp_path: Path) -> None:
    (model_copy / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    for msg in predict_and_eval_fail(capsys, tmp_path, model_copy, small_csv):
        assert "pytorch_model.bin" in msg and "pickle" in msg


def test_predict_unsupported_output(capsys: pytest.CaptureFixture[str], trained_run: Path, eval_csv: Path,
                                    tmp_path: Path) -> None:
    msg = run_fail(capsys, tmp_path, "predict", str(trained_run), "--input", str(eval_csv),
                   "--output", str(tmp_path / "predictions.xlsx"))
    assert "predictions.xlsx" in msg and "unsupported format" in msg


def test_predict_needs_texts(capsys: pytest.CaptureFixture[str], trained_run: Path, eval_csv: Path,
                             tmp_path: Path) -> None:
    assert "give texts" in run_fail(capsys, tmp_path, "predict", str(trained_run))
    msg = run_fail(capsys, tmp_path, "predict", str(trained_run), "a text", "--input", str(eval_csv))
    assert "not both" in msg


def test_eval_bad_data(capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path: Path) -> None:
    texts, _ = demo_sample(per_class=2)
    data = write_csv(tmp_path / "e.csv", texts, ["neutral", "bullish"] * 3)
    msg = run_fail(capsys, tmp_path, "eval", str(trained_run), "--data", str(data))
    assert "e.csv" in msg and "'bullish'" in msg and "never seen in training" in msg


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--epochs", "abc"], "'--epochs'"),
        (["train", "--no-such-flag", "1"], "--no-such-flag"),
        (["evaluate"], "no such command 'evaluate'"),
        (["eval", "some/model"], "missing option '--data'"),
        (["predict"], "missing argument"),
    ],
)
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str],
                                   needle: str) -> None:
    """Flag typos and wrong types go through click (typer's own copy of it): still one line, exit 2."""
    assert needle in run_fail(capsys, tmp_path, *args)


def test_no_arguments_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err and "train" in captured.out + captured.err
