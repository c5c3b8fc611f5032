"""The model card: the ``README.md`` of a model folder, saying what the model does, how well, and its limits.

Pure functions of the saved spec and metrics, so the card can be rebuilt from a model folder alone. The
card is the Hub's YAML metadata followed by a ``render.Document`` rendered to Markdown (``render`` does
the escaping). This module imports nothing heavy; the run report reuses its Wilson interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

from lastpool.evaluation.metrics import metric_title
from lastpool.evaluation.render import (
    Block,
    BulletList,
    Code,
    CodeBlock,
    Document,
    Heading,
    Inline,
    Para,
    Table,
    fmt,
    render_markdown,
)
from lastpool.evaluation.render import md_text as md_text  # re-exported: callers import it from here

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


MODE_TEXT = {
    "full": "full fine-tuning: every weight of the backbone and the head was trained",
    "lora": "LoRA: low-rank adapters on the backbone's linear layers and the head were trained",
    "probe": "linear probe: the backbone was frozen and only the linear head was trained",
}


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion observed on ``n`` trials.

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0% or 100%, which
    matters on the small validation splits text classifiers are usually measured on.
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(max(float(accuracy), 0.0), 1.0)
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _front_matter(spec: Mapping[str, Any]) -> str:
    """Hub-style metadata, so the folder uploads as a card that the Hub can index."""
    meta: dict[str, Any] = {"library_name": "lastpool", "pipeline_tag": "text-classification",
                            "tags": ["lastpool", "text-classification"]}
    backbone = spec.get("backbone") or {}
    if backbone.get("type") == "pretrained" and backbone.get("kind") == "hub" and backbone.get("source"):
        meta["base_model"] = str(backbone["source"])
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---"


def _backbone_items(spec: Mapping[str, Any]) -> list[list[Inline]]:
    """The bullet points of the Model section: what the classifier is made of and how it was trained."""
    backbone = spec.get("backbone") or {}
    items: list[list[Inline]] = []
    if backbone.get("type") == "pretrained":
        items.append(["Backbone: pretrained decoder ", Code(str(backbone.get("source", "unknown"))),
                      f" ({backbone.get('kind', 'unknown')}, model type ",
                      Code(str(backbone.get("model_type", "unknown"))), ")"])
        if backbone.get("sha256"):
            items.append(["Backbone file sha256: ", Code(str(backbone["sha256"]))])
        if backbone.get("layer"):
            items.append([f"Pooled after block {int(backbone['layer'])}; the later blocks and the final norm "
                          "were dropped"])
    else:
        cfg = backbone.get("config") or {}
        shape = ", ".join(f"{key} {cfg[key]}" for key in ("d_model", "n_layers", "n_heads", "d_ff",
                                                           "context_length", "vocab_size") if key in cfg)
        items.append(["Backbone: a small decoder trained from scratch on the training data, without any "
                      f"pretraining ({shape or 'architecture not recorded'})"])
    mode = str(spec.get("mode", "full"))
    items.append(["Training mode: ", Code(mode), f", {_mode_text(mode, spec.get('lora'))}"])
    items.append(["Pooling: ", Code(str(spec.get("pooling", "last"))), " (the head reads one vector per text)"])
    prompt = spec.get("prompt")
    if prompt and prompt != "{text}":
        items.append(["Prompt: ", Code(str(prompt)), " (each text is put in place of ", Code("{text}"), ")"])
    else:
        items.append(["Prompt: none (the text is used as it is)"])
    tokenizer = spec.get("tokenizer") or {}
    if tokenizer:
        source: list[Inline] = [" from ", Code(str(tokenizer["source"]))] if tokenizer.get("source") else []
        items.append([f"Tokenizer: {tokenizer.get('type', 'unknown')}", *source,
                      f", {tokenizer.get('vocab_size', '?')} tokens"])
    kept = ", the prompt kept whole" if prompt and prompt != "{text}" else ""
    items.append([f"Max length: {spec.get('max_length', 'n/a')} tokens (longer texts are cut at the end{kept})"])
    items.append(["Precision: ", Code(str(spec.get("precision", "fp32")))])
    if spec.get("library_version"):
        items.append([f"Trained with lastpool {spec['library_version']}"])
    return items


def _mode_text(mode: str, lora: Mapping[str, Any] | None) -> str:
    """What a training mode trained, in words, with the LoRA settings where there are any."""
    text = (f"the last {mode[4:]} blocks of the backbone and the head were trained, the rest frozen"
            if mode.startswith("top-") else MODE_TEXT.get(mode, mode))
    if lora:
        text += (f" (r {lora.get('r')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}"
                 f"{'; merged into the weights' if lora.get('merged') else ''})")
    return text


def _metric(metrics: Mapping[str, Any], name: str) -> Any:
    """A validation metric from a classification_metrics dict, or from a spec's ``val_*`` summary."""
    return metrics.get(name, metrics.get(f"val_{name}"))


def _validation(metrics: Mapping[str, Any], intervals: Mapping[str, Mapping[str, Any]] | None) -> list[Block]:
    accuracy, macro_f1 = _metric(metrics, "accuracy"), _metric(metrics, "macro_f1")
    n = _metric(metrics, "n")
    if accuracy is None and macro_f1 is None:
        return [Para(["No validation metrics were recorded for this model."])]
    blocks: list[Block] = [Para([f"Measured on {n} held-out validation texts." if n
                                 else "Measured on the held-out validation texts."])]
    if intervals:
        return [*blocks, *_repeated_runs(metrics, intervals)]
    if accuracy is not None and n:
        low, high = wilson_interval(float(accuracy), int(n))
        accuracy_row = ["accuracy", fmt(accuracy), f"{low:.4f} to {high:.4f}"]
        note = (f"The accuracy interval is a Wilson (binomial) 95% interval on the {n} validation texts: "
                "it covers the sampling error of a small test set only, not a change of domain. "
                "Macro-F1 has no closed-form interval; expect it to be at least as uncertain.")
    else:
        accuracy_row = ["accuracy", fmt(accuracy), "n/a"]
        note = "The number of validation texts was not recorded, so no interval can be given."
    table = Table(["metric", "value", "95% interval"], [accuracy_row, ["macro-F1", fmt(macro_f1), "n/a"]],
                  [False, True, True])
    return [*blocks, table, Para([note])]


def _repeated_runs(metrics: Mapping[str, Any], intervals: Mapping[str, Mapping[str, Any]]) -> list[Block]:
    """This model's scores beside the spread of repeated runs of its configuration."""
    rows = []
    for key, entry in intervals.items():
        base = key.removeprefix("val_")
        rows.append([metric_title(base), fmt(_metric(metrics, base)),
                     f"{fmt(entry.get('mean'))} ± {fmt(entry.get('std'))}",
                     f"{fmt(entry.get('ci95_low'))} to {fmt(entry.get('ci95_high'))}"])
    runs = {int(entry["n"]) for entry in intervals.values() if entry.get("n")}
    count = f" ({max(runs)} runs)" if runs else ""
    return [Table(["metric", "this model", "mean ± std", "95% interval of the mean"], rows,
                  [False, True, True, True]),
            Para([f"The mean, standard deviation and 95% interval come from repeated training and evaluation of "
                  f"this configuration{count}, for example cross-validation over folds and seeds: they show how "
                  "much the scores move with the data split and the random initialisation."])]


def _calibration(spec: Mapping[str, Any], calibration: Mapping[str, Any] | None) -> str:
    if calibration is None:
        temperature = spec.get("temperature", 1.0)
        if temperature and float(temperature) != 1.0:
            return f"Probabilities are softmax(logits / {fmt(temperature)})."
        return ("No temperature was fitted: the probabilities are the raw softmax of the logits and, like most "
                "fine-tuned classifiers, likely over-confident.")
    return (
        f"The logits are divided by a temperature T = {fmt(calibration.get('temperature'))} fitted on the "
        "validation split, which changes no prediction, only the confidence. On that split the expected "
        f"calibration error went from {fmt(calibration.get('ece_before'))} to {fmt(calibration.get('ece_after'))} "
        f"and the log loss from {fmt(calibration.get('log_loss_before'))} to "
        f"{fmt(calibration.get('log_loss_after'))} (measured on the texts T was fitted on, so optimistic). "
        "Treat the probabilities as rough confidence, not exact chances."
    )


def _listing(labels: list[str]) -> list[Inline]:
    """The labels as inline code, comma-separated."""
    parts: list[Inline] = []
    for label in labels:
        if parts:
            parts.append(", ")
        parts.append(Code(label))
    return parts


def _training_data(data: Mapping[str, Any], max_length: Any) -> list[Block]:
    counts = {str(k): int(v) for k, v in (data.get("class_counts") or data.get("label_counts") or {}).items()}
    blocks: list[Block] = [
        Heading(2, "Training data"),
        BulletList([["Source: ", Code(str(data.get("source", "unknown")))],
                    [f"Rows: {data.get('rows', sum(counts.values()))}"]]),
    ]
    if counts:
        blocks.append(Table(["label", "texts"], [[k, str(v)] for k, v in counts.items()], [False, True]))
    lengths = data.get("token_lengths") or []
    if lengths and max_length:
        cut = sum(int(v) > int(max_length) for v in lengths)
        blocks.append(Para([f"{cut / len(lengths):.1%} of the training texts were longer than {max_length} tokens "
                            "and were cut to fit."]))
    return blocks


HOW_TO_USE: list[Block] = [
    Heading(2, "How to use"),
    Para(["From the command line (give this folder, or the run directory that holds it):"]),
    CodeBlock('lastpool predict path/to/model "the text to classify"\n'
              "lastpool predict path/to/model --input texts.csv --output predictions.csv\n", "bash"),
    Para(["From Python:"]),
    CodeBlock("from lastpool import Classifier\n\n"
              'clf = Classifier.load("path/to/model")\n'
              'clf.predict(["the text to classify"])        # labels\n'
              'clf.predict_proba(["the text to classify"])  # one probability per label, in label order\n',
              "python"),
]


TASK_SCORES = {"multilabel": ("micro_f1", "macro_f1", "weighted_f1", "subset_accuracy", "hamming_loss"),
               "regression": ("pearson", "spearman", "rmse", "mae", "r2")}


def _task_validation(task: str, metrics: Mapping[str, Any]) -> list[Block]:
    """A multi-label or regression model's validation scores (no closed-form intervals for these)."""
    rows = [[metric_title(name), fmt(_metric(metrics, name))] for name in TASK_SCORES[task]
            if _metric(metrics, name) is not None]
    if not rows:
        return [Para(["No validation metrics were recorded for this model."])]
    n = _metric(metrics, "n")
    return [Para([f"Measured on {n} held-out validation texts." if n else "Measured on the held-out validation "
                  "texts."]), Table(["metric", "value"], rows, [False, True])]


def _what_it_does(task: str, labels: list[str]) -> list[Inline]:
    if task == "regression":
        return ["A lastpool regression model (a decoder language model with a linear head) that predicts one number "
                "per text: ", Code(labels[0] if labels else "value"), "."]
    if task == "multilabel":
        return ["A lastpool multi-label classifier (a decoder language model with a linear head) that gives each text "
                f"any of {len(labels)} labels: ", *_listing(labels), ", each where its probability reaches the "
                "label's threshold (chosen on the validation split)."]
    return ["A lastpool classifier (a decoder language model with a linear head) that assigns each text one of "
            f"{len(labels)} labels: ", *_listing(labels), "."]


def _label_limit(task: str, labels: list[str]) -> list[Inline]:
    if task == "regression":
        return ["It predicts values like those it was trained on; far outside the training range its numbers mean "
                "little."]
    if task == "multilabel":
        return ["The label set is fixed: a text gets some of ", *_listing(labels), ", or none of them when no "
                "label reaches its threshold."]
    return ["The label set is fixed: every text gets one of ", *_listing(labels),
            ", even a text that fits none of them. There is no \"other\" answer unless it was trained as a label."]


def _limits(labels: list[str], source: str, max_length: Any, n: Any, task: str = "single") -> list[Block]:
    """What the model is not for: the section a reader who skims should still reach."""
    small = f"{n} texts" if n else "a small split"
    return [Heading(2, "Intended use and limits"), BulletList([
        ["Made for texts like its training data (", Code(source), "): the same language, domain and style. "
         "Expect lower accuracy on other languages, topics or registers, and check it on a sample first."],
        [f"Short texts: only the first {max_length} tokens (prompt included) are read; the rest of a longer "
         "text is ignored."],
        _label_limit(task, labels),
        ["Not for decisions with serious consequences for people (health, credit, employment, legal, "
         "moderation without appeal) without human review of its outputs."],
        [f"The validation scores come from {small}; they are estimates with the uncertainty shown above, "
         "and the validation split was also used to pick the epoch, fit the temperature and (where there is "
         "one) the bag-of-words share, so they lean optimistic. Measure on fresh labelled data before relying "
         "on a number."],
        ["It inherits the biases of its training labels and, for a pretrained backbone, of the backbone's "
         "pretraining data."],
    ])]


def model_card_document(spec: Mapping[str, Any], data: Mapping[str, Any], metrics: Mapping[str, Any],
                        calibration: Mapping[str, Any] | None,
                        intervals: Mapping[str, Any] | None = None) -> Document:
    """The card's content (everything but the Hub metadata); arguments as for ``model_card``."""
    labels = [str(x) for x in spec.get("labels") or metrics.get("labels") or []]
    max_length = spec.get("max_length", data.get("max_length"))
    task = str(spec.get("task") or "single")
    blocks: list[Block] = [Para(_what_it_does(task, labels)), Heading(2, "Model"), BulletList(_backbone_items(spec))]
    fusion = spec.get("fusion")
    if fusion:
        blocks.append(Para([
            f"Its scores add a bag-of-words model's ({fusion.get('description')}, {fusion.get('features')} n-grams; ",
            Code("bag_of_words.json"), " and ", Code("bag_of_words.safetensors"), ") to the language model's, "
            f"with a share of {fmt(fusion.get('share'))} chosen on the validation split. An export (",
            Code("lastpool export"), ") holds the language model alone."]))
    blocks += _training_data(data, max_length)
    validation = _validation(metrics, intervals) if task == "single" else _task_validation(task, metrics)
    blocks += [Heading(2, "Validation results"), *validation]
    if task == "single":
        blocks += [Heading(2, "Calibration"), Para([_calibration(spec, calibration)])]
    elif task == "multilabel" and spec.get("temperatures"):
        record = calibration or {}
        blocks += [Heading(2, "Calibration"), Para([
            "Each label's logit is divided by a temperature of its own, fitted on the validation split (mean "
            f"binary log loss {fmt(record.get('log_loss_before'))} before, {fmt(record.get('log_loss_after'))} "
            "after, on the texts it was fitted on); the thresholds are chosen on the calibrated probabilities."])]
    blocks += HOW_TO_USE
    blocks += _limits(labels, str(data.get("source", "unknown")), max_length, _metric(metrics, "n"), task)
    return Document(f"Text classifier: {' / '.join(labels)}", blocks)


def model_card(spec: dict[str, Any], data: dict[str, Any], metrics: dict[str, Any],
               calibration: dict[str, Any] | None, intervals: dict[str, Any] | None = None) -> str:
    """Markdown for a model folder's ``README.md``: Hub metadata, then the rendered card.

    ``spec`` is the saved ``lastpool.json`` as a dict, ``data`` the training data summary (``source``,
    ``rows``, ``class_counts``, optionally ``token_lengths`` and ``max_length``), ``metrics`` the
    validation metrics of ``classification_metrics``, ``calibration`` the temperature-scaling record,
    and ``intervals`` optional per-metric ``{mean, std, ci95_low, ci95_high}`` from repeated runs.
    """
    document = model_card_document(spec, data, metrics, calibration, intervals)
    return _front_matter(spec) + "\n\n" + render_markdown(document)
