"""The run directory: model/, config.yaml, history.jsonl and metrics.json, written all at once.

The whole directory is assembled in a temporary folder beside the target and renamed into place at the
end, so an interrupted or failed run never leaves a half-written run directory behind.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from lastpool.classifier import Classifier
from lastpool.config import RunConfig, dump_yaml
from lastpool.errors import ConfigError
from lastpool.evaluation.metrics import length_summary
from lastpool.fileio import check_writable_dir, staged_dir


def default_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def check_output_dir(path: Path) -> None:
    """Fail before training, not after, if the run directory cannot be written."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"output directory {path} already exists and is not empty; choose another --out")
    # Probe the nearest existing ancestor without creating anything: a run that fails later (bad data,
    # bad flags) must leave no trace, not even empty parent folders.
    check_writable_dir(path.parent, f"cannot write to output directory {path.parent}")


def check_output_file(path: Path, what: str = "--output") -> None:
    """Fail before any work if ``path`` cannot be written as a file (its folder is missing or not
    writable, or it is a folder itself)."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a file name")
    check_writable_dir(path.parent, f"cannot write {what} {path}")


def run_report(clf: Classifier, config: RunConfig, data: dict[str, Any], token_lengths: list[int]) -> Any:
    """The report's inputs: history, validation metrics, reliability before/after calibration and the
    validation texts the model gets most confidently wrong."""
    from lastpool.evaluation.calibration import reliability_bins, softmax
    from lastpool.evaluation.report import RunReport

    assert clf.result is not None and clf.spec is not None and clf.validation is not None
    if clf.spec.task != "single":
        return _task_report(clf, config, data, token_lengths)
    names = clf.spec.labels
    logits, y, texts = clf.validation["logits"], clf.validation["labels"], clf.validation["texts"]
    before = softmax(logits)
    after = softmax(logits, clf.spec.temperature) if clf.calibration is not None else None
    probabilities = after if after is not None else before
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    wrong = sorted((i for i in range(len(y)) if predicted[i] != y[i]), key=lambda i: -confidence[i])
    return RunReport(
        title=f"lastpool run: {data.get('source', 'training data')}",
        config=config.model_dump(mode="json"),
        data={**data, "token_lengths": token_lengths, "max_length": config.max_length},
        history=clf.result.history, val=clf.result.val_metrics, calibration=clf.calibration,
        reliability_before=reliability_bins(before, y),
        reliability_after=reliability_bins(after, y) if after is not None else None,
        worst_errors=[{"text": texts[i], "label": names[y[i]], "predicted": names[predicted[i]],
                       "confidence": float(confidence[i])} for i in wrong[:10]],
        best_epoch=clf.result.best_epoch,
        baseline=getattr(clf, "baseline", None), layer_scores=getattr(clf, "layer_scores", None),
        chosen_layer=getattr(clf, "chosen_layer", None), fusion=getattr(clf, "fusion", None),
    )


def _task_report(clf: Classifier, config: RunConfig, data: dict[str, Any], token_lengths: list[int]) -> Any:
    """A multi-label or regression run's report inputs: no reliability diagram; a regression's (true,
    predicted) pairs and its largest errors."""
    from lastpool.evaluation.report import RunReport

    assert clf.result is not None and clf.spec is not None and clf.validation is not None
    values, worst = None, []
    if clf.spec.task == "regression":
        predicted = clf.validation["logits"].reshape(-1).tolist()
        values = [(float(t), float(p)) for t, p in zip(clf.validation["labels"], predicted, strict=True)]
        order = sorted(range(len(values)), key=lambda i: -abs(values[i][1] - values[i][0]))
        worst = [{"text": clf.validation["texts"][i], "label": values[i][0], "predicted": values[i][1]}
                 for i in order[:10]]
    return RunReport(
        title=f"lastpool run: {data.get('source', 'training data')}", config=config.model_dump(mode="json"),
        data={**data, "token_lengths": token_lengths, "max_length": config.max_length},
        history=clf.result.history, val=clf.result.val_metrics, calibration=None, reliability_before=[],
        reliability_after=None, worst_errors=worst, best_epoch=clf.result.best_epoch,
        baseline=clf.baseline, layer_scores=clf.layer_scores, chosen_layer=clf.chosen_layer,
        task=clf.spec.task, values=values)


def run_metrics(clf: Classifier, data: dict[str, Any] | None = None) -> dict[str, Any]:
    result = clf.result
    if result is None:
        raise ValueError("classifier has not been trained")
    return {
        "val": result.val_metrics,
        "calibration": clf.calibration,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "optimizer_steps": result.optimizer_steps,
        "train_seconds": result.train_seconds,
        "train_samples_per_second": result.train_samples_per_second,
        "baseline": getattr(clf, "baseline", None),  # bag-of-words baseline on the same splits, or None
        # the bag-of-words share fused in (0: the LM alone), and the LM's own validation scores
        "fusion": getattr(clf, "fusion", None),
        "layer_scores": getattr(clf, "layer_scores", None),  # --layer auto: probe accuracy per block, or None
        # top-N: how many frozen blocks ran once (their hidden states cached), or why they ran every epoch
        "lower_blocks_cached": getattr(clf, "lower_blocks_cached", None),
        "cache_note": getattr(clf, "cache_note", None),
        "data": data or {},
    }


# What a run puts in its own directory while it trains, kept in the finished one (its checkpoints are not).
KEPT_WHILE_TRAINING = ("tensorboard",)


def keep_tracking_files(out: Path, staged: Path) -> None:
    """Copy what the run wrote into ``out`` while it worked (TensorBoard's event files) into the staged
    folder that is about to replace it."""
    for name in KEPT_WHILE_TRAINING:
        if (out / name).is_dir():
            shutil.copytree(out / name, staged / name)


def write_output_folder(folder: Path, files: dict[str, str | bytes]) -> None:
    """A command's output folder at once (cv, compare, tune): staged, then renamed into place, with what
    tracking wrote into it meanwhile carried over. ``files``: text or bytes by relative path."""
    with staged_dir(folder, replace=folder.exists()) as tmp:
        for name, content in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        if folder.exists():
            keep_tracking_files(folder, tmp)


def write_run(clf: Classifier, out: Path, config: RunConfig, data: dict[str, Any] | None = None,
              replace: bool = False) -> Path:
    """Write the complete run directory to ``out`` atomically: model (with its model card), config,
    history, metrics, and report.md / report.html / plots/ when the validation predictions are known.
    ``replace``: ``out`` holds what the run wrote while training (checkpoints, TensorBoard's event files),
    swapped for the finished run only once it is written (the event files carried over)."""
    if clf.result is None:
        raise ValueError("classifier has not been trained")
    lengths = clf.token_lengths or []  # counted when the fit tokenized the data
    data = {**(data or {}), **length_summary(lengths, config.max_length)}
    with staged_dir(out, replace=replace) as tmp:
        model_dir = tmp / "model"
        model_dir.mkdir()
        clf.save_to(model_dir)
        (tmp / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
        with (tmp / "history.jsonl").open("w", encoding="utf-8") as handle:
            for record in clf.result.history:
                handle.write(json.dumps(record) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(run_metrics(clf, data), indent=2) + "\n", encoding="utf-8")
        if clf.validation is not None and clf.validation["logits"] is not None:
            from lastpool.evaluation.report import write_report

            write_report(tmp, run_report(clf, config, data, lengths))
        if replace:
            keep_tracking_files(out, tmp)
    return out
