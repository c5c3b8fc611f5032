"""One output record per text: the text, its prediction and (for a classifier) each label's probability."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def prediction_rows(clf: Any, texts: Sequence[str], pairs: Sequence[str] | None,
                    kept: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """``clf`` is a Classifier or an ONNX file's OnnxClassifier (both have ``task``, ``labels`` and
    ``logits``); ``kept``: input columns passed through, first in each record."""
    task = clf.task.name
    logits = clf.logits(list(texts), text_pairs=None if pairs is None else list(pairs))
    predictions = clf.task.outputs(logits)
    probabilities = clf.task.probabilities(logits) if task != "regression" else None
    rows = []
    for i, text in enumerate(texts):
        record: dict[str, Any] = {name: values[i] for name, values in (kept or {}).items()}
        record["text"] = text
        if pairs is not None:
            record["text_pair"] = pairs[i]
        if task == "regression":
            record["value"] = round(float(predictions[i]), 6)
            rows.append(record)
            continue
        assert probabilities is not None
        row = probabilities[i].tolist()
        if task == "multilabel":
            record["labels"] = predictions[i]
        else:
            record["label"] = clf.labels[max(range(len(row)), key=lambda k: row[k])]
        record.update({f"prob_{name}": round(float(p), 6) for name, p in zip(clf.labels, row, strict=True)})
        rows.append(record)
    return rows


def output_columns(clf: Any, pairs: bool) -> list[str]:
    """The columns ``prediction_rows`` fills, after any kept ones (to refuse a kept column of the same name)."""
    task = clf.task.name
    head = ["text", *(["text_pair"] if pairs else [])]
    if task == "regression":
        return [*head, "value"]
    return [*head, "labels" if task == "multilabel" else "label", *(f"prob_{name}" for name in clf.labels)]
