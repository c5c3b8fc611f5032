"""The model card: the ``README.md`` of a model folder, saying what the model does, how well, and its limits.

Pure functions returning strings, so the card can be built from the saved spec and metrics alone. This
module imports nothing heavy; the report module reuses its Markdown escaping and the Wilson interval.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import yaml

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#&~!])")
_NEWLINE = re.compile(r"\r\n|\r|\n")

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "weighted_f1": "weighted F1", "log_loss": "log loss",
                "ece": "ECE"}

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


def md_text(text: str) -> str:
    """Plain text for Markdown: punctuation that could start markup or raw HTML is backslash-escaped and
    line breaks become ``<br>``, so a table cell stays one cell and a ``<script>`` stays text."""
    return _NEWLINE.sub("<br>", _MD_SPECIAL.sub(r"\\\1", text))


def md_code(text: str) -> str:
    """An inline code span that shows ``text`` verbatim, whatever backticks it holds (newlines shown as ``\\n``)."""
    flat = _NEWLINE.sub(r"\\n", text)
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") or not flat.strip() else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    number = float(value)
    return "n/a" if math.isnan(number) else f"{number:.{digits}f}"


def _front_matter(spec: Mapping[str, Any]) -> str:
    """Hub-style metadata, so the folder uploads as a card that the Hub can index."""
    meta: dict[str, Any] = {"library_name": "lastpool", "pipeline_tag": "text-classification",
                            "tags": ["lastpool", "text-classification"]}
    backbone = spec.get("backbone") or {}
    if backbone.get("type") == "pretrained" and backbone.get("kind") == "hub" and backbone.get("source"):
        meta["base_model"] = str(backbone["source"])
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---"


def _backbone_lines(spec: Mapping[str, Any]) -> list[str]:
    backbone = spec.get("backbone") or {}
    lines: list[str] = []
    if backbone.get("type") == "pretrained":
        lines.append(f"- Backbone: pretrained decoder {md_code(str(backbone.get('source', 'unknown')))} "
                     f"({md_text(str(backbone.get('kind', 'unknown')))}, model type "
                     f"{md_code(str(backbone.get('model_type', 'unknown')))})")
        if backbone.get("sha256"):
            lines.append(f"- Backbone file sha256: {md_code(str(backbone['sha256']))}")
        if backbone.get("layer"):
            lines.append(f"- Pooled after block {int(backbone['layer'])}; the later blocks and the final norm "
                         "were dropped")
    else:
        cfg = backbone.get("config") or {}
        shape = ", ".join(f"{key} {cfg[key]}" for key in ("d_model", "n_layers", "n_heads", "d_ff",
                                                           "context_length", "vocab_size") if key in cfg)
        lines.append("- Backbone: a small decoder trained from scratch on the training data, without any "
                     f"pretraining ({md_text(shape) if shape else 'architecture not recorded'})")
    mode = str(spec.get("mode", "full"))
    if mode.startswith("top-"):
        mode_text = f"the last {mode[4:]} blocks of the backbone and the head were trained, the rest frozen"
    else:
        mode_text = MODE_TEXT.get(mode, mode)
    lora = spec.get("lora")
    if lora:
        mode_text += (f" (r {lora.get('r')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}"
                      f"{'; merged into the weights' if lora.get('merged') else ''})")
    lines.append(f"- Training mode: {md_code(mode)}, {md_text(mode_text)}")
    lines.append(f"- Pooling: {md_code(str(spec.get('pooling', 'last')))} (the head reads one vector per text)")
    prompt = spec.get("prompt")
    if prompt and prompt != "{text}":
        lines.append(f"- Prompt: {md_code(str(prompt))} (each text is put in place of {md_code('{text}')})")
    else:
        lines.append("- Prompt: none (the text is used as it is)")
    tokenizer = spec.get("tokenizer") or {}
    if tokenizer:
        source = f" from {md_code(str(tokenizer['source']))}" if tokenizer.get("source") else ""
        lines.append(f"- Tokenizer: {md_text(str(tokenizer.get('type', 'unknown')))}{source}, "
                     f"{tokenizer.get('vocab_size', '?')} tokens")
    kept = ", the prompt kept whole" if prompt and prompt != "{text}" else ""
    lines.append(f"- Max length: {spec.get('max_length', 'n/a')} tokens (longer texts are cut at the end{kept})")
    lines.append(f"- Precision: {md_code(str(spec.get('precision', 'fp32')))}")
    if spec.get("library_version"):
        lines.append(f"- Trained with lastpool {md_text(str(spec['library_version']))}")
    return lines


def _metric(metrics: Mapping[str, Any], name: str) -> Any:
    """A validation metric from a classification_metrics dict, or from a spec's ``val_*`` summary."""
    return metrics.get(name, metrics.get(f"val_{name}"))


def _validation_lines(metrics: Mapping[str, Any], intervals: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    accuracy, macro_f1 = _metric(metrics, "accuracy"), _metric(metrics, "macro_f1")
    n = _metric(metrics, "n")
    if accuracy is None and macro_f1 is None:
        return ["No validation metrics were recorded for this model."]
    lines = [f"Measured on {n} held-out validation texts." if n else "Measured on the held-out validation texts.", ""]
    if intervals:
        lines += ["| metric | this model | mean ± std | 95% interval of the mean |", "|---|---:|---:|---:|"]
        for key, entry in intervals.items():
            base = key.removeprefix("val_")
            lines.append(f"| {md_text(METRIC_NAMES.get(base, base))} | {_fmt(_metric(metrics, base))} | "
                         f"{_fmt(entry.get('mean'))} ± {_fmt(entry.get('std'))} | "
                         f"{_fmt(entry.get('ci95_low'))} to {_fmt(entry.get('ci95_high'))} |")
        runs = {int(entry["n"]) for entry in intervals.values() if entry.get("n")}
        count = f" ({max(runs)} runs)" if runs else ""
        lines += ["", f"The mean, standard deviation and 95% interval come from repeated training and evaluation of "
                  f"this configuration{count}, for example cross-validation over folds and seeds: they show how "
                  "much the scores move with the data split and the random initialisation."]
        return lines
    lines += ["| metric | value | 95% interval |", "|---|---:|---:|"]
    if accuracy is not None and n:
        low, high = wilson_interval(float(accuracy), int(n))
        lines.append(f"| accuracy | {_fmt(accuracy)} | {low:.4f} to {high:.4f} |")
    else:
        lines.append(f"| accuracy | {_fmt(accuracy)} | n/a |")
    lines.append(f"| macro-F1 | {_fmt(macro_f1)} | n/a |")
    lines.append("")
    if accuracy is not None and n:
        lines.append(f"The accuracy interval is a Wilson (binomial) 95% interval on the {n} validation texts: "
                     "it covers the sampling error of a small test set only, not a change of domain. "
                     "Macro-F1 has no closed-form interval; expect it to be at least as uncertain.")
    else:
        lines.append("The number of validation texts was not recorded, so no interval can be given.")
    return lines


def _calibration_lines(spec: Mapping[str, Any], calibration: Mapping[str, Any] | None) -> list[str]:
    if calibration is None:
        temperature = spec.get("temperature", 1.0)
        if temperature and float(temperature) != 1.0:
            return [f"Probabilities are softmax(logits / {_fmt(temperature)})."]
        return ["No temperature was fitted: the probabilities are the raw softmax of the logits and, like most "
                "fine-tuned classifiers, likely over-confident."]
    return [
        f"The logits are divided by a temperature T = {_fmt(calibration.get('temperature'))} fitted on the "
        "validation split, which changes no prediction, only the confidence. On that split the expected "
        f"calibration error went from {_fmt(calibration.get('ece_before'))} to {_fmt(calibration.get('ece_after'))} "
        f"and the log loss from {_fmt(calibration.get('log_loss_before'))} to "
        f"{_fmt(calibration.get('log_loss_after'))} (measured on the texts T was fitted on, so optimistic). "
        "Treat the probabilities as rough confidence, not exact chances."
    ]


def model_card(spec: dict[str, Any], data: dict[str, Any], metrics: dict[str, Any],
               calibration: dict[str, Any] | None, intervals: dict[str, Any] | None = None) -> str:
    """Markdown for a model folder's ``README.md``.

    ``spec`` is the saved ``lastpool.json`` as a dict, ``data`` the training data summary (``source``,
    ``rows``, ``class_counts``, optionally ``token_lengths`` and ``max_length``), ``metrics`` the
    validation metrics of ``classification_metrics``, ``calibration`` the temperature-scaling record,
    and ``intervals`` optional per-metric ``{mean, std, ci95_low, ci95_high}`` from repeated runs.
    """
    labels = [str(x) for x in spec.get("labels") or metrics.get("labels") or []]
    counts = {str(k): int(v) for k, v in (data.get("class_counts") or {}).items()}
    max_length = spec.get("max_length", data.get("max_length"))
    source = str(data.get("source", "unknown"))
    rows = data.get("rows", sum(counts.values()))
    n = _metric(metrics, "n")

    out = [_front_matter(spec), "", f"# Text classifier: {md_text(' / '.join(labels))}", ""]
    out.append(f"A lastpool classifier (a decoder language model with a linear head) that assigns each text one of "
               f"{len(labels)} labels: {', '.join(md_code(label) for label in labels)}.")
    out += ["", "## Model", "", *_backbone_lines(spec)]
    fusion = spec.get("fusion")
    if fusion:
        out += ["", f"Its scores add a bag-of-words model's ({md_text(str(fusion.get('description')))}, "
                f"{fusion.get('features')} n-grams; `bag_of_words.json` and `bag_of_words.safetensors`) to the "
                f"language model's, with a share of {_fmt(fusion.get('share'))} chosen on the validation split. "
                "An export (`lastpool export`) holds the language model alone."]

    out += ["", "## Training data", "", f"- Source: {md_code(source)}", f"- Rows: {rows}"]
    if counts:
        out += ["", "| label | texts |", "|---|---:|", *(f"| {md_text(k)} | {v} |" for k, v in counts.items())]
    lengths = data.get("token_lengths") or []
    if lengths and max_length:
        cut = sum(int(v) > int(max_length) for v in lengths)
        out += ["", f"{cut / len(lengths):.1%} of the training texts were longer than {max_length} tokens and were "
                "cut to fit."]

    out += ["", "## Validation results", "", *_validation_lines(metrics, intervals)]
    out += ["", "## Calibration", "", *_calibration_lines(spec, calibration)]

    out += ["", "## How to use", "", "From the command line (give this folder, or the run directory that holds it):",
            "", "```bash", 'lastpool predict path/to/model "the text to classify"',
            'lastpool predict path/to/model --input texts.csv --output predictions.csv', "```",
            "", "From Python:", "", "```python", "from lastpool import Classifier", "",
            'clf = Classifier.load("path/to/model")',
            'clf.predict(["the text to classify"])        # labels',
            'clf.predict_proba(["the text to classify"])  # one probability per label, in label order', "```"]

    small = f"{n} texts" if n else "a small split"
    out += ["", "## Intended use and limits", "",
            f"- Made for texts like its training data ({md_code(source)}): the same language, domain and style. "
            "Expect lower accuracy on other languages, topics or registers, and check it on a sample first.",
            f"- Short texts: only the first {max_length} tokens (prompt included) are read; the rest of a longer "
            "text is ignored.",
            f"- The label set is fixed: every text gets one of {', '.join(md_code(label) for label in labels)}, "
            "even a text that fits none of them. There is no \"other\" answer unless it was trained as a label.",
            "- Not for decisions with serious consequences for people (health, credit, employment, legal, "
            "moderation without appeal) without human review of its outputs.",
            f"- The validation scores come from {small}; they are estimates with the uncertainty shown above, "
            "and the validation split was also used to pick the epoch, fit the temperature and (where there is "
            "one) the bag-of-words share, so they lean "
            "optimistic. Measure on fresh labelled data before relying on a number.",
            "- It inherits the biases of its training labels and, for a pretrained backbone, of the backbone's "
            "pretraining data."]
    return "\n".join(out) + "\n"
