"""The ``lastpool`` command: a thin layer over ``Classifier`` and the data readers.

Every error a user can cause ends in one message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table as RichTable

from lastpool.errors import ConfigError, LastpoolError

app = typer.Typer(
    name="lastpool",
    help="Decoder-only language models as text classifiers, by correct last-token pooling.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# soft_wrap: notices and messages stay on one line however narrow the terminal (or a pipe: 80 columns).
err = Console(stderr=True, soft_wrap=True)
out = Console()

# Option groups, so `--help` reads like the config file.
DATA, TOK, MODEL, OPT, OUT = "Data", "Tokenizer", "Model", "Optimisation", "Output"


def _labels_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if len(names) < 2:
        raise ConfigError(f"--labels needs at least two comma-separated names (got {value!r})")
    return names


@app.command()
def train(
    config: Annotated[Path | None, typer.Option(help="YAML config file; flags override its fields")] = None,
    data: Annotated[str | None, typer.Option(help="labelled data: csv, tsv, jsonl, parquet or sentence@label .txt", rich_help_panel=DATA)] = None,  # noqa: E501
    eval_data: Annotated[str | None, typer.Option(help="separate validation file (default: split --data)", rich_help_panel=DATA)] = None,  # noqa: E501
    text_col: Annotated[str | None, typer.Option(help="text column (auto-detected: text, sentence, ...)", rich_help_panel=DATA)] = None,  # noqa: E501
    label_col: Annotated[str | None, typer.Option(help="label column (auto-detected: label, ...)", rich_help_panel=DATA)] = None,  # noqa: E501
    labels: Annotated[str | None, typer.Option(help="label order, comma separated (default: sorted)", rich_help_panel=DATA)] = None,  # noqa: E501
    val_fraction: Annotated[float | None, typer.Option(help="stratified validation share [0.1]", rich_help_panel=DATA)] = None,  # noqa: E501
    tokenizer: Annotated[str | None, typer.Option(help="auto (the model's own; a trained BPE for scratch), bpe, or a HF tokenizer folder, .gguf file or hub id [auto]", rich_help_panel=TOK)] = None,  # noqa: E501
    vocab_size: Annotated[int | None, typer.Option(help="BPE vocabulary size [2000]", rich_help_panel=TOK)] = None,
    lowercase: Annotated[bool | None, typer.Option("--lowercase/--no-lowercase", help="BPE: fold case [off]", rich_help_panel=TOK)] = None,  # noqa: E501
    max_length: Annotated[int | None, typer.Option(help="truncate texts to this many tokens [64]", rich_help_panel=TOK)] = None,  # noqa: E501
    padding_side: Annotated[str | None, typer.Option(help="right or left [right]", rich_help_panel=TOK)] = None,
    prompt: Annotated[str | None, typer.Option(help="template around each text, with {text} once, e.g. $'{text}\\nSentiment:' (kept whole when a text is cut) [{text}]", rich_help_panel=TOK)] = None,  # noqa: E501
    model: Annotated[str | None, typer.Option(help="scratch, or a pretrained decoder: hub id, local folder or .gguf file [scratch]", rich_help_panel=MODEL)] = None,  # noqa: E501
    trust_remote_code: Annotated[bool | None, typer.Option("--trust-remote-code/--no-trust-remote-code", help="run a hub model's own code [off]", rich_help_panel=MODEL)] = None,  # noqa: E501
    grad_checkpointing: Annotated[bool | None, typer.Option("--grad-checkpointing/--no-grad-checkpointing", help="recompute activations to save memory [off]", rich_help_panel=MODEL)] = None,  # noqa: E501
    layer: Annotated[int | None, typer.Option(help="pretrained: pool the hidden states after this block; later blocks and the final norm are dropped [all]", rich_help_panel=MODEL)] = None,  # noqa: E501
    mode: Annotated[str | None, typer.Option(help="full, lora, probe (frozen backbone: a head on cached pooled features) or top-N (train the last N blocks) [full]", rich_help_panel=OPT)] = None,  # noqa: E501
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank [8]", rich_help_panel=OPT)] = None,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha [16]", rich_help_panel=OPT)] = None,
    lora_dropout: Annotated[float | None, typer.Option(help="LoRA dropout [0.05]", rich_help_panel=OPT)] = None,
    merge: Annotated[bool | None, typer.Option("--merge/--no-merge", help="LoRA: save merged weights, not the adapter [off]", rich_help_panel=OPT)] = None,  # noqa: E501
    precision: Annotated[str | None, typer.Option(help="auto, fp32 or bf16 (autocast) [auto: bf16 for pretrained models where fast]", rich_help_panel=OPT)] = None,  # noqa: E501
    d_model: Annotated[int | None, typer.Option(help="hidden size [128]", rich_help_panel=MODEL)] = None,
    n_layers: Annotated[int | None, typer.Option(help="decoder blocks [2]", rich_help_panel=MODEL)] = None,
    n_heads: Annotated[int | None, typer.Option(help="attention heads [4]", rich_help_panel=MODEL)] = None,
    d_ff: Annotated[int | None, typer.Option(help="MLP width [512]", rich_help_panel=MODEL)] = None,
    dropout: Annotated[float | None, typer.Option(help="dropout in the decoder [0.2]", rich_help_panel=MODEL)] = None,
    context_length: Annotated[int | None, typer.Option(help="position table size [max length]", rich_help_panel=MODEL)] = None,  # noqa: E501
    pooling: Annotated[str | None, typer.Option(help="last, mean, max or first [last]", rich_help_panel=MODEL)] = None,
    head_dropout: Annotated[float | None, typer.Option(help="dropout before the head [0]", rich_help_panel=MODEL)] = None,  # noqa: E501
    token_dropout: Annotated[float | None, typer.Option(help="training augmentation: delete this share of tokens [0.1]", rich_help_panel=MODEL)] = None,  # noqa: E501
    epochs: Annotated[int | None, typer.Option(help="[10]", rich_help_panel=OPT)] = None,
    batch_size: Annotated[int | None, typer.Option(help="[32]", rich_help_panel=OPT)] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate [1e-3]", rich_help_panel=OPT)] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay [0.1]", rich_help_panel=OPT)] = None,
    warmup: Annotated[float | None, typer.Option(help="warmup: fraction of steps (<1) or steps (>=1) [0.05]", rich_help_panel=OPT)] = None,  # noqa: E501
    max_steps: Annotated[int | None, typer.Option(help="stop after this many optimizer steps", rich_help_panel=OPT)] = None,  # noqa: E501
    grad_clip: Annotated[float | None, typer.Option(help="max gradient norm, 0 = off [1.0]", rich_help_panel=OPT)] = None,  # noqa: E501
    grad_accum: Annotated[int | None, typer.Option(help="gradient accumulation steps [1]", rich_help_panel=OPT)] = None,  # noqa: E501
    label_smoothing: Annotated[float | None, typer.Option(help="cross-entropy label smoothing [0.1]", rich_help_panel=OPT)] = None,  # noqa: E501
    calibrate: Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", help="temperature scaling fitted on the validation split after training [on]", rich_help_panel=OPT)] = None,  # noqa: E501
    seed: Annotated[int | None, typer.Option(help="random seed [0]", rich_help_panel=OPT)] = None,
    out: Annotated[Path | None, typer.Option(help="run directory [runs/<timestamp>]", rich_help_panel=OUT)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar or tables", rich_help_panel=OUT)] = False,  # noqa: E501
) -> None:
    """Train a classifier and write a run directory (model/, config.yaml, history.jsonl, metrics.json)."""
    params = dict(locals())  # every RunConfig field is a parameter of the same name
    from lastpool.classifier import Classifier
    from lastpool.config import RunConfig, resolve_config
    from lastpool.data.tables import load_demo, read_table
    from lastpool.runs import check_output_dir, data_summary, default_run_dir, write_run

    flags = {name: value for name, value in params.items() if name in RunConfig.model_fields}
    overrides: dict[str, Any] = {**flags, "labels": _labels_list(labels), "out": str(out) if out is not None else None}
    cfg = resolve_config(str(config) if config is not None else None, overrides)
    if quiet:
        _silence_library_progress()
    run_dir = Path(cfg.out) if cfg.out else default_run_dir()
    check_output_dir(run_dir)

    if cfg.data is None:
        table = load_demo()
        err.print("notice: no --data given; training on the built-in demo set (financial news sentiment)")
    else:
        table = read_table(cfg.data, text_col=cfg.text_col, label_col=cfg.label_col)
    assert table.labels is not None
    eval_texts = eval_labels = None
    if cfg.eval_data is not None:
        eval_table = read_table(cfg.eval_data, text_col=cfg.text_col, label_col=cfg.label_col)
        eval_texts, eval_labels = eval_table.texts, eval_table.labels

    clf = Classifier(cfg).fit(
        table.texts, table.labels, eval_texts=eval_texts, eval_labels=eval_labels, quiet=quiet,
        data_name=f"training data {table.source}",
        eval_name=f"validation data {cfg.eval_data}" if cfg.eval_data else "validation split",
    )
    write_run(clf, run_dir, cfg, data_summary(table.texts, table.labels, table.source))
    assert clf.result is not None
    val = clf.result.val_metrics
    summary = (f"run saved to {run_dir}  (best epoch {clf.result.best_epoch}: "
               f"val accuracy {val['accuracy']:.4f}, macro-F1 {val['macro_f1']:.4f})")
    if quiet:
        print(summary)
    else:
        if clf.calibration is not None:
            c = clf.calibration
            err.print(f"calibration: temperature {c['temperature']:.3f}, validation ECE {c['ece_before']:.4f} -> "
                      f"{c['ece_after']:.4f}, log loss {c['log_loss_before']:.4f} -> {c['log_loss_after']:.4f}")
        err.print(summary)


def _silence_library_progress() -> None:
    """--quiet also hides transformers' and huggingface_hub's own progress bars (GGUF loading, weights)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _metrics_table(metrics: dict[str, Any], title: str) -> RichTable:
    table = RichTable(title=title)
    for column in ("label", "precision", "recall", "f1", "support"):
        table.add_column(column, justify="right" if column != "label" else "left")
    for name, row in metrics["per_class"].items():
        table.add_row(name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
    table.add_section()
    table.add_row("accuracy", "", "", f"{metrics['accuracy']:.4f}", str(metrics["n"]))
    table.add_row("macro avg", "", "", f"{metrics['macro_f1']:.4f}", str(metrics["n"]))
    table.add_row("weighted avg", "", "", f"{metrics['weighted_f1']:.4f}", str(metrics["n"]))
    return table


@app.command("eval")
def evaluate(
    model: Annotated[str, typer.Argument(help="run directory or model folder")],
    data: Annotated[str, typer.Option(help="labelled data file")],
    text_col: Annotated[str | None, typer.Option(help="text column (auto-detected)")] = None,
    label_col: Annotated[str | None, typer.Option(help="label column (auto-detected)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print metrics as JSON")] = False,
) -> None:
    """Evaluate a trained model on a labelled file: accuracy, F1, per-class scores, confusion matrix."""
    from lastpool.classifier import Classifier
    from lastpool.data.tables import read_table

    clf = Classifier.load(model)
    table = read_table(data, text_col=text_col, label_col=label_col)
    assert table.labels is not None
    metrics = clf.evaluate(table.texts, table.labels, source=f"evaluation data {table.source}")
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    out.print(_metrics_table(metrics, f"{data} ({metrics['n']} texts)"))
    cm = RichTable(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for name in metrics["labels"]:
        cm.add_column(name, justify="right")
    for name, row in zip(metrics["labels"], metrics["confusion_matrix"], strict=True):
        cm.add_row(name, *(str(v) for v in row))
    out.print(cm)
    if "log_loss" in metrics:
        out.print(f"log loss {metrics['log_loss']:.4f}   expected calibration error {metrics['ece']:.4f}")


def _prediction_rows(texts: list[str], labels: list[str], probabilities: Any) -> list[dict[str, Any]]:
    rows = []
    for text, row in zip(texts, probabilities.tolist(), strict=True):
        best = max(range(len(labels)), key=lambda i: row[i])
        record: dict[str, Any] = {"text": text, "label": labels[best]}
        record.update({f"prob_{name}": round(float(p), 6) for name, p in zip(labels, row, strict=True)})
        rows.append(record)
    return rows


def _write_predictions(rows: list[dict[str, Any]], path: Path) -> None:
    from lastpool.fileio import atomic_write_text

    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".ndjson"}:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif suffix in {".csv", ".tsv"}:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["text", "label"],
                                delimiter="\t" if suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        raise ConfigError(f"--output {path}: unsupported format {suffix or '(none)'}; use .csv, .tsv or .jsonl")
    atomic_write_text(path, text)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="run directory or model folder")],
    texts: Annotated[list[str] | None, typer.Argument(help="texts to classify")] = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="file of texts (csv, tsv, jsonl, parquet, txt)")] = None,  # noqa: A002, E501
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write predictions to .csv, .tsv or .jsonl")] = None,  # noqa: E501
    text_col: Annotated[str | None, typer.Option(help="text column of --input (auto-detected)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines instead of a table")] = False,
) -> None:
    """Classify texts given as arguments or in a file; print them or write a .csv/.jsonl with probabilities."""
    from lastpool.classifier import Classifier
    from lastpool.data.tables import read_table

    if not texts and input is None:
        raise ConfigError("give texts to classify, or --input FILE")
    if texts and input is not None:
        raise ConfigError("give texts as arguments or --input FILE, not both")
    if output is not None and output.suffix.lower() not in {".csv", ".tsv", ".jsonl", ".ndjson"}:
        raise ConfigError(f"--output {output}: unsupported format; use .csv, .tsv or .jsonl")
    clf = Classifier.load(model)
    items = list(texts) if texts else read_table(input or "", text_col=text_col, require_labels=False).texts
    rows = _prediction_rows(items, clf.labels, clf.predict_proba(items))
    if output is not None:
        _write_predictions(rows, output)
        err.print(f"wrote {len(rows)} predictions to {output}")
    elif as_json or input is not None:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        table = RichTable()
        table.add_column("label")
        for name in clf.labels:
            table.add_column(f"p({name})", justify="right")
        table.add_column("text", overflow="fold")
        for row in rows:
            table.add_row(row["label"], *(f"{row[f'prob_{n}']:.3f}" for n in clf.labels), row["text"])
        out.print(table)


# typer >= 0.2x ships its own copy of click (``typer._click``) whose exceptions are not click's, so
# catch both families; otherwise a mistyped flag ends in a traceback.
_USAGE_ERRORS: tuple[type[Exception], ...] = (click.exceptions.ClickException,) + tuple(
    t for t in (getattr(typer, "TyperException", None),) if isinstance(t, type) and issubclass(t, Exception)
)
_ABORTS: tuple[type[BaseException], ...] = (click.exceptions.Abort, typer.Abort)
_EXITS: tuple[type[BaseException], ...] = (click.exceptions.Exit, typer.Exit)


def _usage_error(exc: Exception) -> int:
    """A click/typer usage error as one ``error:`` line (plus the help for a bare ``lastpool``)."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `lastpool` alone: show the help
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        return 2
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None and getattr(ctx, "command_path", None) else ""
    text = " ".join(str(message).split())
    sys.stderr.write(f"error: {text[:1].lower() + text[1:]}{hint}\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map user errors to exit code 2 with one clear message."""
    try:
        result = app(args=argv, standalone_mode=False, prog_name="lastpool")
    except LastpoolError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except _ABORTS:
        err.print("aborted")
        return 130
    except _USAGE_ERRORS as exc:
        return _usage_error(exc)
    except _EXITS as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    # Without standalone mode, --help and similar early exits return their exit code instead of raising.
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def entry() -> None:
    """Console-script entry: exit with ``main``'s code."""
    sys.exit(main())
