"""The bad-input and fault matrix, through the real CLI: every case ends in exactly one ``error: ...``
line on stderr, exit code 2, no traceback, and nothing written (``snapshot`` before == after).

Cases already covered elsewhere (``tests/test_cli.py`` and friends) are not repeated here; the full list,
with the test that covers each, is ``docs/RELIABILITY.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lastpool.cli import main
from lastpool.config import RunConfig
from tests.conftest import TINY_FLAGS, demo_sample, snapshot, write_csv

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_PROCFS = sys.platform.startswith("linux") and Path("/proc/self").is_dir()
skip_if_root = pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions")
needs_procfs = pytest.mark.skipif(not HAS_PROCFS, reason="needs Linux /proc (not writable, even by root)")


def expect_error(capsys: pytest.CaptureFixture[str], watch: Path, args: list[str]) -> str:
    """Run ``lastpool ARGS``: exit 2, one ``error:`` line, no traceback, no change under ``watch``."""
    before = snapshot(watch)
    try:
        code = main(args)
    except Exception as exc:  # noqa: BLE001 - an escaping exception is the traceback this file guards against
        pytest.fail(f"lastpool {args[0]} raised {type(exc).__name__} (a traceback for the user): {exc}")
    captured = capsys.readouterr()
    assert code == 2, (code, captured.out[-500:], captured.err[-500:])
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: "), captured.err
    assert snapshot(watch) == before, "a failed command left files behind (or removed some)"
    return lines[0]


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` must fail while loading the model; should a broken model load, fail here, not hang."""
    import lastpool.serving.app as serving

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("serve got as far as binding a socket: the broken model was accepted")

    monkeypatch.setattr(serving, "bind_socket", refuse)


@pytest.fixture
def labelled_csv(tmp_path: Path) -> Path:
    texts, labels = demo_sample()
    return write_csv(tmp_path / "data.csv", texts, labels)


# --- model folder problems: predict / eval / export / serve ------------------------------------------------

SPEC, WEIGHTS = "lastpool.json", "model.safetensors"


def _edit_spec(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        spec = json.loads((folder / SPEC).read_text(encoding="utf-8"))
        spec.update(changes)
        (folder / SPEC).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return edit


def _edit_backbone_config(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        spec = json.loads((folder / SPEC).read_text(encoding="utf-8"))
        spec["backbone"]["config"].update(changes)
        (folder / SPEC).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return edit


def _corrupt_weights(folder: Path) -> None:
    path = folder / WEIGHTS
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _truncate_weights(folder: Path) -> None:
    path = folder / WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty_weights(folder: Path) -> None:
    (folder / WEIGHTS).write_bytes(b"")


def _remove_weights(folder: Path) -> None:
    (folder / WEIGHTS).unlink()


def _remove_spec(folder: Path) -> None:
    (folder / SPEC).unlink()


def _spec_not_json(folder: Path) -> None:
    (folder / SPEC).write_text("this is { not json", encoding="utf-8")


def _spec_binary(folder: Path) -> None:
    (folder / SPEC).write_bytes(b"\xff\xfe\x00\x01 binary")


def _remove_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()


def _corrupt_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").write_text("{ not a tokenizer", encoding="utf-8")


def _add_pickle(folder: Path) -> None:
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04\x95pickle")


# id -> (damage, substring of the message)
DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt-weights": (_corrupt_weights, "corrupt or truncated safetensors"),
    "truncated-weights": (_truncate_weights, "corrupt or truncated safetensors"),
    "empty-weights": (_empty_weights, "corrupt or truncated safetensors"),
    "missing-weights": (_remove_weights, "missing weights file model.safetensors"),
    "missing-spec": (_remove_spec, "not a lastpool model folder"),
    "spec-not-json": (_spec_not_json, "invalid model description"),
    "spec-not-utf8": (_spec_binary, "invalid model description"),
    "spec-wrong-type": (_edit_spec(max_length="x"), "max_length"),
    "spec-unknown-field": (_edit_spec(surprise=1), "surprise"),
    "spec-fewer-labels-than-head": (_edit_spec(labels=["negative", "positive"]), "weights do not match"),
    "spec-more-labels-than-head": (_edit_spec(labels=["a", "b", "c", "d"]), "weights do not match"),
    "spec-wider-model-than-weights": (_edit_backbone_config(d_model=32), "weights do not match"),
    "spec-inconsistent-architecture": (_edit_backbone_config(n_heads=3), "cannot be built"),
    "spec-duplicate-labels": (_edit_spec(labels=["a", "a", "b"]), "labels must be distinct"),
    "spec-prompt-without-slot": (_edit_spec(prompt="Sentiment:"), "{text}"),
    "missing-tokenizer": (_remove_tokenizer, "tokenizer files are missing"),
    "corrupt-tokenizer": (_corrupt_tokenizer, "could not load the saved tokenizer"),
    "pickle-file-present": (_add_pickle, "pickle"),
}
# Already covered for predict and eval in tests/test_cli.py (test_truncated_weights, test_invalid_model_json,
# test_pickle_files_are_refused); here they run for export and serve.
COVERED = {(damage, command) for damage in ("truncated-weights", "spec-not-json", "pickle-file-present")
           for command in ("predict", "eval")}
COMMANDS = ("predict", "eval", "export", "serve")


def _command(command: str, model: Path, data: Path, tmp_path: Path) -> list[str]:
    return {
        "predict": ["predict", str(model), "Operating profit rose .", "The company cut 200 jobs ."],
        "eval": ["eval", str(model), "--data", str(data)],
        "export": ["export", str(model), "--format", "onnx", "--out", str(tmp_path / "exported.onnx")],
        "serve": ["serve", str(model), "--port", "0"],
    }[command]


def _damage_params() -> list[Any]:
    params = []
    for damage in DAMAGES:
        for command in COMMANDS:
            if (damage, command) in COVERED:
                continue
            params.append(pytest.param(damage, command, id=f"{command}-{damage}"))
    return params


@pytest.mark.parametrize(("damage", "command"), _damage_params())
def test_damaged_model_folder(capsys: pytest.CaptureFixture[str], trained_run: Path, labelled_csv: Path,
                              tmp_path: Path, damage: str, command: str) -> None:
    model = Path(shutil.copytree(trained_run / "model", tmp_path / "model"))
    damage_fn, needle = DAMAGES[damage]
    damage_fn(model)
    message = expect_error(capsys, tmp_path, _command(command, model, labelled_csv, tmp_path))
    assert needle in message
    assert not (tmp_path / "exported.onnx").exists()


@pytest.mark.parametrize(
    ("where", "command"),
    # a missing path for predict and eval: tests/test_cli.py::test_path_that_is_not_a_model
    [pytest.param("missing-path", c, id=f"{c}-missing-path") for c in ("export", "serve")]
    + [pytest.param("file-not-folder", c, id=f"{c}-file-not-folder") for c in COMMANDS],
)
def test_model_path_is_not_a_folder(capsys: pytest.CaptureFixture[str], labelled_csv: Path, tmp_path: Path,
                                    where: str, command: str) -> None:
    model = tmp_path / "no-such-model"
    if where == "file-not-folder":
        model = tmp_path / "model.txt"
        model.write_text("not a model\n")
    message = expect_error(capsys, tmp_path, _command(command, model, labelled_csv, tmp_path))
    assert str(model) in message
    assert ("no such model folder" if where == "missing-path" else "not a lastpool model folder") in message


@pytest.mark.parametrize("what", ["missing", "garbage"])
def test_predict_with_a_bad_onnx_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, what: str) -> None:
    model = tmp_path / "model.onnx"
    if what == "garbage":
        model.write_bytes(b"not an onnx model")
    message = expect_error(capsys, tmp_path, ["predict", str(model), "Profit rose ."])
    assert "model.onnx" in message and ("does not exist" if what == "missing" else "not a loadable ONNX") in message


# --- data problems: train / eval / predict --input ---------------------------------------------------------


def _garbage_bytes() -> bytes:
    """Every byte value, NUL included, in a fixed shuffled order: what a binary file looks like."""
    return np.random.default_rng(1).permutation(np.tile(np.arange(256, dtype=np.uint8), 16)).tobytes()


def _utf16_phrasebank() -> bytes:
    texts, labels = demo_sample()
    return "\n".join(f"{t}@{label}" for t, label in zip(texts, labels, strict=True)).encode("utf-16")


DATA_FILES: dict[str, tuple[str, Callable[[Path], object], str]] = {
    # id -> (file name, how to make it, substring of the message)
    "directory": ("data.csv", lambda p: p.mkdir(), "is a directory"),
    "empty-file": ("data.csv", lambda p: p.write_bytes(b""), "empty file"),
    "header-only": ("data.csv", lambda p: p.write_text("text,label\n"), "no rows"),
    "no-label-column": ("data.csv", lambda p: p.write_text("text\nProfit rose .\nSales fell .\n"), "no label column"),
    "binary-csv": ("data.csv", lambda p: p.write_bytes(_garbage_bytes()), "NUL bytes"),
    "binary-jsonl": ("data.jsonl", lambda p: p.write_bytes(_garbage_bytes()), "NUL bytes"),
    "binary-parquet": ("data.parquet", lambda p: p.write_bytes(_garbage_bytes()), "not a valid parquet file"),
    "binary-txt": ("data.txt", lambda p: p.write_bytes(_garbage_bytes()), "NUL bytes"),
    "utf16-csv": ("data.csv", lambda p: p.write_bytes("text,label\nProfit rose .,positive\n".encode("utf-16")),
                  "NUL bytes"),
    # The .txt reader falls back to Latin-1, which decodes any byte; a UTF-16 file must still be refused.
    "utf16-txt": ("data.txt", lambda p: p.write_bytes(_utf16_phrasebank()), "NUL bytes"),
}
# eval reads data after a model is loaded, train before anything is trained; predict needs no labels.
DATA_COMMANDS = {"train": set(DATA_FILES), "eval": set(DATA_FILES),
                 "predict": set(DATA_FILES) - {"no-label-column"}}


def _data_params() -> list[Any]:
    params = []
    for command, cases in DATA_COMMANDS.items():
        for case in DATA_FILES:
            if case not in cases:
                continue
            params.append(pytest.param(command, case, id=f"{command}-{case}"))
    return params


def _data_command(command: str, data: Path, trained_run: Path, tmp_path: Path, *extra: str) -> list[str]:
    if command == "train":
        return ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet", *TINY_FLAGS, *extra]
    if command == "eval":
        return ["eval", str(trained_run), "--data", str(data), *extra]
    return ["predict", str(trained_run), "--input", str(data), "--output", str(tmp_path / "predictions.csv"),
            *extra]


@pytest.mark.parametrize(("command", "case"), _data_params())
def test_bad_data_file(capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path: Path, command: str,
                       case: str) -> None:
    name, make, needle = DATA_FILES[case]
    data = tmp_path / name
    make(data)
    message = expect_error(capsys, tmp_path, _data_command(command, data, trained_run, tmp_path))
    assert str(data) in message and needle in message
    assert not (tmp_path / "run").exists() and not (tmp_path / "predictions.csv").exists()


@skip_if_root
@pytest.mark.parametrize("command", ["train", "eval", "predict"])
def test_unreadable_data_file(capsys: pytest.CaptureFixture[str], trained_run: Path, labelled_csv: Path,
                              tmp_path: Path, command: str) -> None:
    labelled_csv.chmod(0)
    try:
        message = expect_error(capsys, tmp_path, _data_command(command, labelled_csv, trained_run, tmp_path))
    finally:
        labelled_csv.chmod(0o644)
    assert str(labelled_csv) in message and "cannot read" in message


@pytest.mark.parametrize(
    ("command", "flags", "needle"),
    [
        pytest.param("eval", ["--text-col", "body"], "no column 'body' (--text-col)", id="eval-text-col"),
        pytest.param("eval", ["--label-col", "y"], "no column 'y' (--label-col)", id="eval-label-col"),
        pytest.param("predict", ["--text-col", "body"], "no column 'body' (--text-col)", id="predict-text-col"),
        pytest.param("train", ["--label-col", "y"], "no column 'y' (--label-col)", id="train-label-col"),
    ],
)
def test_column_flag_names_a_missing_column(capsys: pytest.CaptureFixture[str], trained_run: Path,
                                            labelled_csv: Path, tmp_path: Path, command: str, flags: list[str],
                                            needle: str) -> None:
    """(``train --text-col`` is covered by tests/test_cli.py::test_missing_text_column.)"""
    message = expect_error(capsys, tmp_path, _data_command(command, labelled_csv, trained_run, tmp_path, *flags))
    assert needle in message and "found columns: text, label" in message


@pytest.mark.parametrize("case", ["directory", "empty-file"])
def test_bad_eval_data_for_train(capsys: pytest.CaptureFixture[str], trained_run: Path, labelled_csv: Path,
                                 tmp_path: Path, case: str) -> None:
    name, make, needle = DATA_FILES[case]
    bad = tmp_path / ("eval-" + name)
    make(bad)
    args = _data_command("train", labelled_csv, trained_run, tmp_path, "--eval-data", str(bad))
    message = expect_error(capsys, tmp_path, args)
    assert str(bad) in message and needle in message


# --- config problems -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        pytest.param(["--mode", "sideways"], "mode", id="unknown-mode"),
        pytest.param(["--prompt", "Sentiment:"], "{text}", id="prompt-without-text"),
        pytest.param(["--epochs", "0"], "epochs", id="zero-epochs"),
        pytest.param(["--max-length", "1"], "max_length", id="max-length-1"),
        pytest.param(["--padding-side", "middle"], "padding_side", id="unknown-padding-side"),
        pytest.param(["--precision", "fp8"], "precision", id="unknown-precision"),
        pytest.param(["--warmup", "-1"], "warmup", id="negative-warmup"),
        pytest.param(["--lr", "nan"], "lr", id="nan-lr"),
        pytest.param(["--labels", "a,a,b"], "duplicates", id="duplicate-labels"),
        pytest.param(["--layer", "1"], "--layer applies to pretrained models", id="layer-on-scratch"),
        pytest.param(["--lr", "inf"], "lr", id="inf-lr"),
        pytest.param(["--weight-decay", "inf"], "weight_decay", id="inf-weight-decay"),
        pytest.param(["--warmup", "inf"], "warmup", id="inf-warmup"),
        pytest.param(["--layer", "auto"], "--layer applies to pretrained models", id="layer-auto-on-scratch"),
        pytest.param(["--layer", "half"], "a share of the depth such as 2/3", id="layer-not-a-number"),
        pytest.param(["--layer", "4/3"], "names a block past the last", id="layer-share-past-the-last"),
        pytest.param(["--epochs", "many"], "positive whole number or auto", id="epochs-not-a-number"),
        pytest.param(["--patience", "0"], "patience", id="zero-patience"),
        pytest.param(["--mode", "zeroshot"], "needs a pretrained --model", id="zeroshot-on-scratch"),
        pytest.param(["--head-init", "labels"], "needs a pretrained --model", id="label-head-on-scratch"),
        pytest.param(["--head-init", "words"], "head_init", id="unknown-head-init"),
        pytest.param(["--mode", "probe", "--head-init", "labels"], "does not apply to mode probe",
                     id="label-head-on-probe"),
        pytest.param(["--mode", "zeroshot", "--layer", "3"], "drop --layer", id="zeroshot-with-layer"),
        pytest.param(["--no-baseline", "--fuse-baseline"], "fuse_baseline needs the baseline",
                     id="fusion-without-baseline"),
        pytest.param(["--label-names", "negative"], "neither label=words pairs nor an existing file",
                     id="label-names-not-pairs"),
        pytest.param(["--label-names", "negative=bad,negative=worse"], "named twice", id="label-names-twice"),
        pytest.param(["--label-names", "sideways=odd"], "does not have: sideways", id="label-names-unknown-label"),
    ],
)
def test_invalid_flag_values(capsys: pytest.CaptureFixture[str], labelled_csv: Path, tmp_path: Path,
                             flags: list[str], needle: str) -> None:
    """(negative lr, zero batch size, unknown pooling, --val-fraction 1.5: tests/test_cli.py)"""
    args = ["train", "--data", str(labelled_csv), "--out", str(tmp_path / "runs" / "r"), "--quiet", *TINY_FLAGS,
            "--epochs", "1", *flags]
    message = expect_error(capsys, tmp_path, args)
    assert needle in message
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param("- 1\n- 2\n", "must be a mapping", id="yaml-list"),
        pytest.param("just a sentence\n", "must be a mapping", id="yaml-scalar"),
        pytest.param("epochs: [1\n", "not valid YAML", id="yaml-syntax"),
        pytest.param(b"\xff\xfe\x00\x01", "not valid YAML", id="yaml-not-utf8"),
        pytest.param("lr: fast\n", "lr", id="yaml-wrong-type"),
        pytest.param("pooling: median\n", "pooling", id="yaml-bad-value"),
        pytest.param(None, "does not exist", id="config-is-a-directory"),
    ],
)
def test_bad_config_file(capsys: pytest.CaptureFixture[str], labelled_csv: Path, tmp_path: Path,
                         content: str | bytes | None, needle: str) -> None:
    """(unknown field, missing file: tests/test_cli.py; the same YAML errors without the CLI: test_config.py)"""
    config = tmp_path / "exp.yaml"
    if content is None:
        config.mkdir()
    elif isinstance(content, bytes):
        config.write_bytes(content)
    else:
        config.write_text(content, encoding="utf-8")
    args = ["train", "--config", str(config), "--data", str(labelled_csv), "--out", str(tmp_path / "run"),
            "--quiet"]
    message = expect_error(capsys, tmp_path, args)
    assert "exp.yaml" in message and needle in message


# --- model sources ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "source", "needle"),
    [
        pytest.param("--model", "fake", "not a GGUF file", id="model-gguf-not-gguf"),
        pytest.param("--model", "missing", "does not exist", id="model-gguf-missing"),
        pytest.param("--tokenizer", "fake", "not a GGUF file", id="tokenizer-gguf-not-gguf"),
        pytest.param("--tokenizer", "missing", "does not exist", id="tokenizer-gguf-missing"),
    ],
)
def test_bad_gguf_source(capsys: pytest.CaptureFixture[str], labelled_csv: Path, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch, flag: str, source: str, needle: str) -> None:
    monkeypatch.setenv("LASTPOOL_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "x.gguf"
    if source == "fake":
        path.write_text("a text file, not GGUF\n")
    args = ["train", "--data", str(labelled_csv), flag, str(path), "--out", str(tmp_path / "run"), "--quiet",
            *TINY_FLAGS]
    message = expect_error(capsys, tmp_path, args)
    assert "x.gguf" in message and needle in message


@pytest.mark.parametrize("flag", ["--model", "--tokenizer"])
def test_hub_id_offline_fails_fast(capsys: pytest.CaptureFixture[str], labelled_csv: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    args = ["train", "--data", str(labelled_csv), flag, "someone/not-cached-model-xyz", "--out",
            str(tmp_path / "run"), "--quiet", *TINY_FLAGS]
    message = expect_error(capsys, tmp_path, args)
    assert time.monotonic() - start < 15, "offline must fail fast, not retry connections"
    assert "someone/not-cached-model-xyz" in message and "unreachable" in message


def test_trust_remote_code_is_off_by_default() -> None:
    assert RunConfig().trust_remote_code is False


# --- output problems -------------------------------------------------------------------------------------


def _train_to(out: Path, data: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--quiet", *TINY_FLAGS]


def test_out_is_an_existing_file(capsys: pytest.CaptureFixture[str], labelled_csv: Path, tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.write_text("keep me")
    message = expect_error(capsys, tmp_path, _train_to(target, labelled_csv))
    assert str(target) in message and "already exists" in message
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("command", ["train", "cv"])
def test_out_under_a_file(capsys: pytest.CaptureFixture[str], labelled_csv: Path, tmp_path: Path,
                          command: str) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = [command, "--data", str(labelled_csv), "--out", str(blocker / "sub" / "run"), "--quiet", *TINY_FLAGS]
    message = expect_error(capsys, tmp_path, args)
    assert "afile" in message and "not a directory" in message


@skip_if_root
def test_out_in_an_unwritable_folder(capsys: pytest.CaptureFixture[str], labelled_csv: Path,
                                     tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        message = expect_error(capsys, tmp_path, _train_to(locked / "run", labelled_csv))
    finally:
        locked.chmod(0o755)
    assert "cannot write to output directory" in message and "locked" in message


@needs_procfs
def test_out_in_a_read_only_system_folder(capsys: pytest.CaptureFixture[str], labelled_csv: Path,
                                          tmp_path: Path) -> None:
    """The unwritable-folder case that also holds for root: nobody can create files in /proc."""
    target = Path("/proc") / f"lastpool-test-{os.getpid()}"
    message = expect_error(capsys, tmp_path, _train_to(target, labelled_csv))
    assert "cannot write to output directory /proc" in message
    assert not target.exists()


def _unwritable_target(tmp_path: Path, kind: str, name: str) -> Path:
    if kind == "under-a-file":
        (tmp_path / "afile").write_text("x")
        return tmp_path / "afile" / name
    if kind == "existing-directory":
        (tmp_path / name).mkdir()
        return tmp_path / name
    if kind == "chmod-555":
        (tmp_path / "locked").mkdir(mode=0o555)
        return tmp_path / "locked" / name
    return Path("/proc") / f"lastpool-{os.getpid()}-{name}"


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("under-a-file"),
        pytest.param("existing-directory"),
        pytest.param("chmod-555", marks=[skip_if_root]),
        pytest.param("procfs", marks=[needs_procfs]),
    ],
)
def test_predict_output_cannot_be_written(capsys: pytest.CaptureFixture[str], trained_run: Path,
                                          labelled_csv: Path, tmp_path: Path, kind: str) -> None:
    target = _unwritable_target(tmp_path, kind, "predictions.csv")
    try:
        message = expect_error(capsys, tmp_path, ["predict", str(trained_run), "--input", str(labelled_csv),
                                                  "--output", str(target)])
    finally:
        if kind == "chmod-555":
            (tmp_path / "locked").chmod(0o755)
    assert "predictions.csv" in message
    assert kind == "existing-directory" or not target.exists()


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("under-a-file"),
        pytest.param("chmod-555", marks=[skip_if_root]),
        pytest.param("procfs", marks=[needs_procfs]),
    ],
)
def test_export_out_cannot_be_written(capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path: Path,
                                      kind: str) -> None:
    target = _unwritable_target(tmp_path, kind, "model.onnx")
    try:
        message = expect_error(capsys, tmp_path, ["export", str(trained_run), "--format", "onnx", "--out",
                                                  str(target)])
    finally:
        if kind == "chmod-555":
            (tmp_path / "locked").chmod(0o755)
    assert "model.onnx" in message
    assert not target.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(["--output", "predictions"], "unsupported format", id="predict-output-no-extension"),
        pytest.param(["--output", "predictions.json"], "unsupported format", id="predict-output-json"),
    ],
)
def test_predict_output_format(capsys: pytest.CaptureFixture[str], trained_run: Path, labelled_csv: Path,
                               tmp_path: Path, args: list[str], needle: str) -> None:
    """(``.xlsx`` is covered by tests/test_cli.py::test_predict_unsupported_output.)"""
    output = tmp_path / args[1]
    message = expect_error(capsys, tmp_path, ["predict", str(trained_run), "--input", str(labelled_csv),
                                              args[0], str(output)])
    assert needle in message


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(["--format", "onnx", "--out", "model.bin"], "must be a .onnx file", id="onnx-wrong-suffix"),
        pytest.param(["--format", "hf", "--out", "hf"], "from-scratch GPT", id="hf-from-scratch"),
    ],
)
def test_export_refusals(capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path: Path,
                         args: list[str], needle: str) -> None:
    message = expect_error(capsys, tmp_path, ["export", str(trained_run), *args[:3], str(tmp_path / args[3])])
    assert needle in message
