"""The ``lastpool`` command: a thin layer over ``Classifier`` and the data readers.

Every error a user can cause ends in one message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from lastpool.config import (
    DEPTH_SHARE,
    OUTPUT,
    PANELS,
    RUN,
    Flag,
    ServeConfig,
    default_words,
    flag_fields,
    serve_config,
)
from lastpool.errors import ConfigError, LastpoolError, TrainingStopped

if TYPE_CHECKING:
    from lastpool.classifier import Classifier
    from lastpool.config import RunConfig
    from lastpool.data.tables import Table, TableLayout
    from lastpool.tracking import Tracking
    from lastpool.training.checkpoint import Checkpoint

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

TRAIN_ONLY = frozenset({"resume", "save_every", "keep_checkpoints", "num_processes", "sharding"})  # not for cv/compare


def _int_or_auto(value: str | None) -> str | None:
    """``--epochs`` / ``--layer``: a positive whole number or ``auto`` (checked as a usage error)."""
    if value is None or value == "auto" or (value.isdigit() and int(value) >= 1):
        return value
    raise typer.BadParameter(f"expected a positive whole number or auto, got {value!r}")


def _layer_value(value: str | None) -> str | None:
    """``--layer``: a positive whole number, a share of the depth (``2/3``), ``auto`` or ``middle`` (checked
    as a usage error)."""
    if value == "middle" or (value is not None and re.fullmatch(DEPTH_SHARE, value)):
        return value
    try:
        return _int_or_auto(value)
    except typer.BadParameter:
        raise typer.BadParameter(f"expected a positive whole number, a share of the depth such as 2/3, auto or "
                                 f"middle, got {value!r}") from None


def _labels_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if len(names) < 2:
        raise ConfigError(f"--labels needs at least two comma-separated names (got {value!r})")
    return names


# What the flags of RunConfig's fields need beyond the field: a usage check for the values that mix
# numbers and words, and a path type for the run directory (a str in the config, as YAML has it).
_CALLBACKS: dict[str, Callable[[str | None], str | None]] = {"epochs": _int_or_auto, "layer": _layer_value}
_PATHS = frozenset({"out"})
_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _option_type(spec: Flag) -> type:
    """What a flag parses: the field's int, float or bool, else text (the config checks the choices, ``auto``
    and the lists; ``_run_config`` splits --labels and reads --label-names)."""
    if spec.name in _PATHS:
        return Path
    annotation = spec.field.annotation
    kinds = [arg for arg in get_args(annotation) or (annotation,) if arg is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float, bool) else str


def _flag_option(spec: Flag) -> inspect.Parameter:
    """A RunConfig field as a typer option; None (not given) leaves the value to the YAML file or default."""
    kind = _option_type(spec)
    decls = [f"{spec.option}/--no-{spec.option[2:]}"] if spec.switch else []
    # escape: typer reads help as rich markup, which would swallow a default such as "[off]"
    option = typer.Option(*decls, help=escape(spec.help), rich_help_panel=spec.panel, metavar=spec.metavar,
                          callback=_CALLBACKS.get(spec.name))
    return inspect.Parameter(spec.name, _KEYWORD, default=None, annotation=Annotated[kind | None, option])


# train's options that set no field: where the settings come from, a run to continue, and how it reports.
EXTRA_OPTIONS = (
    inspect.Parameter("config", _KEYWORD, default=None, annotation=Annotated[Path | None, typer.Option(
        help="YAML config file; flags override its fields")]),
    inspect.Parameter("resume", _KEYWORD, default=None, annotation=Annotated[Path | None, typer.Option(
        help="continue the stopped run in this run directory from its newest checkpoint (same settings and data; "
        "flags may repeat them)", rich_help_panel=RUN, metavar="RUN_DIR")]),
    inspect.Parameter("quiet", _KEYWORD, default=False, annotation=Annotated[bool, typer.Option(
        "--quiet", "-q", help="no progress bar or tables", rich_help_panel=OUTPUT)]),
)


def _panel_rank(param: inspect.Parameter) -> int:
    """Where an option's panel comes in PANELS (the options without one first, as --help shows them)."""
    panel = get_args(param.annotation)[1].rich_help_panel
    return PANELS.index(panel) if panel in PANELS else -1


def train_parameters() -> list[inspect.Parameter]:
    """Every option of ``lastpool train``: one per RunConfig field and EXTRA_OPTIONS, panel by panel."""
    return sorted([*(_flag_option(spec) for spec in flag_fields()), *EXTRA_OPTIONS], key=_panel_rank)


def _with_parameters(func: Any, params: list[inspect.Parameter]) -> Any:
    """Make ``func`` (which takes ``**options``) a command with these options: typer reads the signature."""
    func.__signature__ = inspect.Signature(params, return_annotation=None)
    func.__annotations__ = {p.name: p.annotation for p in params}
    return func


def _train_options(func: Any) -> Any:
    """``train``'s options, built from RunConfig's fields (one flag each) and EXTRA_OPTIONS."""
    return _with_parameters(func, train_parameters())


def _with_train_options(func: Any) -> Any:
    """Give a command every option of ``train`` (same names, help and panels) besides its own, so
    ``cv`` and ``compare`` accept exactly the flags a training run does (less TRAIN_ONLY)."""
    own = [p for p in inspect.signature(func, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
    names = {p.name for p in own} | TRAIN_ONLY
    shared = [p for p in train_parameters() if p.name not in names]
    return _with_parameters(func, [p.replace(kind=_KEYWORD) for p in own + shared])


@app.command()
@_train_options
def train(**options: Any) -> None:
    """Train a classifier and write a run directory (model/, config.yaml, history.jsonl, metrics.json)."""
    from lastpool.classifier import Classifier
    from lastpool.data.tables import read_table
    from lastpool.distributed import finish, launch_processes, process_rank, under_launcher
    from lastpool.runs import write_run
    from lastpool.tracking import Tracking
    from lastpool.training.checkpoint import CheckpointSettings

    cfg, run_dir, checkpoint = _start_run(options)
    if cfg.num_processes > 1 and not under_launcher():
        # This process only starts the N training processes and waits; they read the same flags.
        raise typer.Exit(launch_processes(cfg.num_processes, _ARGV + ([] if cfg.out else ["--out", str(run_dir)])))
    table = _training_table(cfg)
    assert table.labels is not None
    eval_table = read_table(cfg.eval_data, layout=table_layout(cfg)) if cfg.eval_data is not None else None

    settings = (CheckpointSettings(run_dir / "checkpoints", every=cfg.save_every, keep=cfg.keep_checkpoints)
                if cfg.keep_checkpoints > 0 else None)
    tracking = Tracking.open(cfg, run_dir, resume=checkpoint.state.get("observers") if checkpoint else None)
    with tracking:
        clf = Classifier(cfg).fit(
            table.texts, table.labels, eval_texts=eval_table.texts if eval_table else None,
            eval_labels=eval_table.labels if eval_table else None, quiet=options["quiet"],
            data_name=f"training data {table.source}",
            eval_name=f"validation data {cfg.eval_data}" if cfg.eval_data else "validation split",
            checkpoints=settings, resume=checkpoint, text_pairs=table.pairs,
            eval_text_pairs=eval_table.pairs if eval_table else None, observers=[tracking] if tracking.active else (),
        )
        if clf.task_note is not None and process_rank() == 0 and not options["quiet"]:
            err.print(f"task: {clf.config.task} ({clf.task_note}; --task sets it)")
        if process_rank() == 0:  # only the main process writes the run directory
            # The finished run replaces its checkpoints (and carries TensorBoard's event files over).
            tracking.pause()
            write_run(clf, run_dir, clf.config, {**clf.data_info, "source": table.source}, replace=run_dir.exists())
            tracking.log_final(_final_scores(clf))
            tracking.log_files(run_dir, run_dir / "model")
        finish()
    if process_rank() == 0:
        _report_run(clf, cfg, run_dir, quiet=options["quiet"])


def _final_scores(clf: Classifier) -> dict[str, float]:
    """A trained run's scores for the trackers: the kept epoch's validation scores, the baseline's."""
    from lastpool.tracking.base import final_scores

    assert clf.result is not None
    scores = {**final_scores(clf.result.val_metrics, "best_val"), "best_epoch": float(clf.result.best_epoch),
              "train_seconds": float(clf.result.train_seconds)}
    return {**scores, **final_scores(clf.baseline or {}, "baseline")}


def _start_run(options: dict[str, Any]) -> tuple[RunConfig, Path, Checkpoint | None]:
    """train's config, its run directory and, with --resume, the checkpoint it continues from."""
    from lastpool.runs import check_output_dir, default_run_dir
    from lastpool.training.checkpoint import latest_checkpoint, load_checkpoint

    resume: Path | None = options["resume"]
    if resume is None:
        cfg = _run_config(options)
        run_dir = Path(cfg.out) if cfg.out else default_run_dir()
        check_output_dir(run_dir)
        return cfg, run_dir, None
    if options["out"] is not None and Path(options["out"]).resolve() != resume.resolve():
        raise ConfigError("--resume continues the run in its own directory; leave out --out (or give the same)")
    checkpoint = load_checkpoint(latest_checkpoint(resume / "checkpoints"))
    saved = checkpoint.state.get("fingerprint", {}).get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"--resume {resume}: its checkpoint does not record the run's settings")
    # The run's own settings (and where it was tracked), then the flags given now: a flag that changes one
    # is refused later.
    tracked = checkpoint.state.get("observers", {}).get("settings", {})
    return _run_config({**options, "out": resume}, base={**saved, **tracked}), resume, checkpoint


def _report_run(clf: Classifier, cfg: RunConfig, run_dir: Path, quiet: bool) -> None:
    """The finished run in one line (on stdout with --quiet), after how the frozen blocks ran and the
    calibration."""
    assert clf.result is not None
    val = clf.result.val_metrics
    kept = f"best epoch {clf.result.best_epoch}" if clf.result.history else "no training"
    beside = ""
    task = clf.task
    if task.name != "single":
        from lastpool.evaluation.metrics import metric_title

        scores = ", ".join(f"{metric_title(name)} {val[name]:.4f}" for name in task.headline)
        if clf.baseline is not None:
            beside = "; bag-of-words baseline " + ", ".join(
                f"{metric_title(name)} {clf.baseline[name]:.4f}" for name in task.headline if name in clf.baseline)
        summary = f"run saved to {run_dir}  ({kept}: validation {scores}{beside})"
        (print if quiet else err.print)(summary)
        return
    if clf.baseline is not None:
        points = round(100 * (val["accuracy"] - clf.baseline["accuracy"]), 2) + 0.0
        beside = f"; bag-of-words baseline {clf.baseline['accuracy']:.4f}, {points:+.2f} points"
    if clf.fusion is not None:
        from lastpool.training.fusion import fusion_note

        beside += f"; {fusion_note(clf.fusion)}"
    summary = (f"run saved to {run_dir}  ({kept}: val accuracy {val['accuracy']:.4f}, "
               f"macro-F1 {val['macro_f1']:.4f}{beside})")
    if quiet:
        print(summary)
        return
    if clf.lower_blocks_cached is not None:
        err.print(f"{cfg.mode}: blocks 1-{clf.lower_blocks_cached} ran once; the top blocks trained on their "
                  "cached hidden states")
    elif clf.cache_note is not None:
        err.print(f"{cfg.mode}: the frozen blocks ran in every epoch ({clf.cache_note})")
    if clf.calibration is not None:
        c = clf.calibration
        err.print(f"calibration: temperature {c['temperature']:.3f}, validation ECE {c['ece_before']:.4f} -> "
                  f"{c['ece_after']:.4f}, log loss {c['log_loss_before']:.4f} -> {c['log_loss_after']:.4f}")
    err.print(summary)


def _runs_progress(total: int, quiet: bool) -> Progress:
    """One bar over the models a cv/compare trains; off with --quiet or when stderr is not a terminal."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, disable=quiet or not err.is_terminal, transient=True)


CV = "Cross-validation"


def _resampling_setup(command: str, cfg: RunConfig, folds: int, seeds: int) -> tuple[Path, Table, list[int], int]:
    """What cv and compare check and load before training: the output folder, the data, the seeds and
    how many models one setting trains."""
    from lastpool.classifier import stratification_keys
    from lastpool.crossval import fold_plan
    from lastpool.runs import check_output_dir, default_run_dir

    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1 (got {seeds})")
    if cfg.eval_data is not None:
        raise ConfigError(f"{command} makes its own splits of --data; --eval-data does not apply")
    out_dir = Path(cfg.out) if cfg.out else default_run_dir().with_name(f"{command}-{default_run_dir().name}")
    check_output_dir(out_dir)
    table = _training_table(cfg)
    assert table.labels is not None
    seed_list = [cfg.seed + i for i in range(seeds)]
    task, keys, _ = stratification_keys(cfg, table.labels)
    return out_dir, table, seed_list, len(fold_plan(keys, folds, seed_list, cfg.val_fraction, strict=task == "single"))


@app.command("cv")
@_with_train_options
def cross_validation(
    folds: Annotated[int, typer.Option(help="stratified K-fold; 1 = one stratified hold-out split per seed", rich_help_panel=CV)] = 5,  # noqa: E501
    seeds: Annotated[int, typer.Option(help="repeat with N seeds (--seed, --seed+1, ...): new folds and init", rich_help_panel=CV)] = 1,  # noqa: E501
    **options: Any,
) -> None:
    """Cross-validate a training config: mean, std and 95% CI of every metric; writes cv.json and reports."""
    from lastpool.crossval import cross_validate
    from lastpool.evaluation.crossval_report import cv_html, cv_markdown

    cfg = _run_config(options)
    out_dir, table, seed_list, total = _resampling_setup("cv", cfg, folds, seeds)
    assert table.labels is not None
    with _tracked(cfg, out_dir, {"folds": folds, "seeds": seeds}) as tracking, \
            _runs_progress(total, bool(options.get("quiet"))) as progress:
        task = progress.add_task("cross-validation", total=total)
        result = cross_validate(cfg, table.texts, table.labels, folds, seed_list,
                                on_run=lambda run: progress.advance(task), text_pairs=table.pairs, tracking=tracking)
        _save_resampling(out_dir, "cv.json", result, cfg, f"Cross-validation: {table.source}", cv_markdown, cv_html,
                         tracking)
        tracking.log_final({f"cv/{name}/{stat}": float(s[stat]) for name, s in result["summary"].items()
                            for stat in ("mean", "std")})
        tracking.log_files(out_dir)
    out.print(_interval_table(f"{len(result['runs'])} models ({folds} folds x {seeds} seeds)", "metric",
                              list(result["summary"].items())))
    err.print(f"cross-validation saved to {out_dir}")


COMPARE_AXES = ("pooling", "mode", "model")


@app.command("compare")
@_with_train_options
def compare_settings(
    metric: Annotated[str | None, typer.Option(help="metric that ranks the settings: accuracy, macro_f1, weighted_f1, log_loss, ece (multi-label: micro_f1, ...; regression: pearson, rmse, ...)", show_default="the task's main score: macro_f1, pearson; accuracy for single-label", rich_help_panel=CV)] = None,  # noqa: E501
    folds: Annotated[int, typer.Option(help="stratified K-fold; 1 = one stratified hold-out split per seed", rich_help_panel=CV)] = 5,  # noqa: E501
    seeds: Annotated[int, typer.Option(help="repeat with N seeds (--seed, --seed+1, ...)", rich_help_panel=CV)] = 1,
    **options: Any,
) -> None:
    """Compare settings on the same folds and seeds: give --pooling, --mode and/or --model comma-separated
    values (e.g. --pooling last,mean,max,first); a winner is named only when it beats the runner-up beyond
    the noise (paired t-test, p < 0.05)."""
    from lastpool.crossval import SUMMARY_METRICS, compare, settings_grid
    from lastpool.evaluation.crossval_report import compare_html, compare_markdown, verdict_text

    if metric is not None and metric not in SUMMARY_METRICS:
        raise ConfigError(f"--metric must be one of {', '.join(SUMMARY_METRICS)} (got {metric!r})")
    axes: dict[str, list[Any]] = {}
    for name in COMPARE_AXES:
        value = options.get(name)
        if isinstance(value, str) and "," in value:
            values = [v.strip() for v in value.split(",") if v.strip()]
            if len(set(values)) != len(values):
                raise ConfigError(f"--{name}: a value is repeated ({value!r})")
            axes[name] = values
            options[name] = None
    if not any(len(v) > 1 for v in axes.values()):
        raise ConfigError("nothing to compare: give --pooling, --mode or --model two or more comma-separated values")
    cfg = _run_config(options)
    for setting in settings_grid(axes):  # every combination must be a valid config before anything trains
        _run_config({**options, **setting})
    out_dir, table, seed_list, per_setting = _resampling_setup("compare", cfg, folds, seeds)
    assert table.labels is not None
    total = per_setting * len(settings_grid(axes))
    with _runs_progress(total, bool(options.get("quiet"))) as progress:
        task = progress.add_task("compare", total=total)
        if metric is None:
            from lastpool.classifier import stratification_keys
            from lastpool.crossval import DEFAULT_METRIC

            metric = DEFAULT_METRIC[stratification_keys(cfg, table.labels)[0]]
        with _tracked(cfg, out_dir, {"folds": folds, "seeds": seeds, "metric": metric,
                                     **{f"compare_{k}": ",".join(map(str, v)) for k, v in axes.items()}}) as tracking:
            result = compare(cfg, table.texts, table.labels, axes, folds, seed_list, metric=metric,
                             on_run=lambda name, run: progress.advance(task), text_pairs=table.pairs, tracking=tracking)
            _save_resampling(out_dir, "compare.json", result, cfg, f"Comparison on {table.source}", compare_markdown,
                             compare_html, tracking)
            tracking.log_final({f"compare/{r['name']}/{metric}/mean": float(r["summary"][metric]["mean"])
                                for r in result["results"]})
            tracking.log_files(out_dir)
    winner = result["verdict"].get("winner")
    out.print(_interval_table(
        f"{metric}: {len(result['results'])} settings x {len(result['results'][0]['runs'])} runs", "setting",
        [(r["name"] + (" *" if r["name"] == winner else ""), r["summary"][metric]) for r in result["results"]]))
    out.print(verdict_text(result).replace("**", ""))
    err.print(f"comparison saved to {out_dir}")


TUNE = "Search"


@app.command("tune")
@_with_train_options
def tune_settings(
    trials: Annotated[int, typer.Option(help="trials in the study, counted over every process that shares --storage", rich_help_panel=TUNE)] = 20,  # noqa: E501
    timeout: Annotated[float | None, typer.Option(help="stop starting trials after this many seconds", show_default="none", rich_help_panel=TUNE)] = None,  # noqa: E501
    storage: Annotated[str | None, typer.Option(help="study database (sqlite:///study.db, postgresql://...): a stopped study continues, several processes share one", show_default="in memory", rich_help_panel=TUNE)] = None,  # noqa: E501
    study_name: Annotated[str, typer.Option(help="the study's name in --storage", rich_help_panel=TUNE)] = "lastpool",
    space: Annotated[Path | None, typer.Option(help="search space YAML (field: {low, high, log, step} or {choices})", show_default="around the recipe's settings", rich_help_panel=TUNE)] = None,  # noqa: E501
    pruning: Annotated[bool, typer.Option("--pruning/--no-pruning", help="stop trials whose validation score per epoch is below the median of earlier trials'", rich_help_panel=TUNE)] = True,  # noqa: E501
    **options: Any,
) -> None:
    """Search training settings with Optuna, scored on validation: writes best.yaml (for train --config),
    trials.csv, tune.json and a report with the optimisation history and the parameters' importances."""
    from lastpool.data.tables import read_table
    from lastpool.runs import check_output_dir, default_run_dir, write_output_folder
    from lastpool.tuning.report import outputs
    from lastpool.tuning.space import check_space, default_space, read_space
    from lastpool.tuning.study import TuneData, check_optuna, counted_trials, main_metric_of, open_study, run_study

    check_optuna()
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1 (got {trials})")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout must be above 0 seconds (got {timeout})")
    cfg = _run_config(options)
    out_dir = Path(cfg.out) if cfg.out else default_run_dir().with_name(f"tune-{default_run_dir().name}")
    check_output_dir(out_dir)
    searched = read_space(space) if space is not None else default_space(cfg)
    check_space(searched, cfg)
    table = _training_table(cfg)
    assert table.labels is not None
    held = read_table(cfg.eval_data, layout=table_layout(cfg)) if cfg.eval_data is not None else None
    data = TuneData(table.texts, table.labels, table.pairs, held.texts if held else None,
                    held.labels if held else None, held.pairs if held else None)
    study = open_study(cfg, searched, data, storage, study_name, pruning, trials)
    metric = main_metric_of(cfg, data)
    with _tracked(cfg, out_dir, {"trials": trials, "study": study_name}) as tracking, \
            _runs_progress(trials, bool(options.get("quiet"))) as progress:
        task = progress.add_task("tune", total=trials, completed=counted_trials(study))
        run_study(study, cfg, searched, data, trials, timeout, tracking,
                  on_trial=lambda trial: progress.update(task, completed=counted_trials(study)))
        files = outputs(cfg, study, searched, metric)
        tracking.pause()
        write_output_folder(out_dir, files)
        if "best.yaml" in files:
            tracking.log_final({f"best_val/{metric}": float(study.best_value)})
        tracking.log_files(out_dir)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]
    summary = (f"best: trial {study.best_trial.number}, validation {metric} {study.best_value:.4f}"
               if "best.yaml" in files else "no trial finished")
    (print if options.get("quiet") else err.print)(
        f"tune saved to {out_dir}  ({len(finished)} trials finished in study {study_name!r}; {summary})")


def _tracked(cfg: RunConfig, out_dir: Path, extra: dict[str, Any]) -> Tracking:
    """cv/compare's parent run (every model trained is a child of it), told its settings now."""
    from lastpool.tracking import Tracking

    tracking = Tracking.open(cfg, out_dir)
    tracking.started({**cfg.model_dump(mode="json"), **extra}, 0)
    return tracking


def _save_resampling(out_dir: Path, json_name: str, result: dict[str, Any], cfg: RunConfig, title: str,
                     markdown: Any, page: Any, tracking: Tracking) -> None:
    """cv/compare outputs: the result JSON (with the config), config.yaml and the two reports, at once (beside
    TensorBoard's event files, when the folds wrote some)."""
    from lastpool.config import dump_yaml

    result["config"] = cfg.model_dump(mode="json")
    config_yaml = dump_yaml(cfg)
    from lastpool.runs import write_output_folder

    tracking.pause()
    write_output_folder(out_dir, {json_name: json.dumps(result, indent=2) + "\n", "config.yaml": config_yaml,
                             "report.md": markdown(result, title, config_yaml),
                             "report.html": page(result, title, config_yaml)})


def _interval_table(title: str, first: str, rows: list[tuple[str, dict[str, float]]]) -> RichTable:
    """Mean, std and 95% interval per named row (names escaped: 'f1[negative]' is not markup)."""
    table = RichTable(title=title)
    for column in (first, "mean", "std", "95% CI"):
        table.add_column(column, justify="right")
    for name, s in rows:
        interval = f"[{s['ci95_low']:.4f}, {s['ci95_high']:.4f}]"
        table.add_row(escape(name), f"{s['mean']:.4f}", f"{s['std']:.4f}", interval)
    return table


def _run_config(params: dict[str, Any], base: dict[str, Any] | None = None) -> RunConfig:
    """The RunConfig from a command's train options: ``base`` (a resumed run's settings), the YAML file,
    then the flags that were given."""
    from lastpool.config import RunConfig, resolve_config
    from lastpool.text.label_words import parse_label_names

    flags = {name: value for name, value in params.items() if name in RunConfig.model_fields}
    out_dir = params.get("out")
    names = params.get("label_names")
    columns = params.get("label_cols")
    overrides: dict[str, Any] = {**flags, "labels": _labels_list(params.get("labels")),
                                 "label_names": parse_label_names(names) if names is not None else None,
                                 "label_cols": ([c.strip() for c in columns.split(",") if c.strip()] or None)
                                 if columns is not None else None,
                                 "out": str(out_dir) if out_dir is not None else None}
    config_file = params.get("config")
    cfg = resolve_config(str(config_file) if config_file is not None else None, overrides, base=base)
    if params.get("quiet"):
        _silence_library_progress()
    return cfg


def _training_table(cfg: RunConfig) -> Table:
    from lastpool.data.tables import load_demo, read_table

    if cfg.data is None:
        table = load_demo()
        err.print("notice: no --data given; training on the built-in demo set (financial news sentiment)")
    else:
        table = read_table(cfg.data, layout=table_layout(cfg))
    assert table.labels is not None
    return table


SEPARATORS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def table_layout(cfg: RunConfig, **overrides: Any) -> TableLayout:
    """How the run's data files hold their columns (the settings a model folder also keeps, so eval and
    predict read files the way training did); ``overrides``: the command's own flags that were given."""
    from lastpool.data.tables import TableLayout

    values: dict[str, Any] = {"text_col": cfg.text_col, "label_col": cfg.label_col, "pair_col": cfg.text_pair_col,
              "label_cols": tuple(cfg.label_cols) if cfg.label_cols else None, "label_sep": cfg.label_sep,
              "sep": cfg.sep, "header": cfg.header, "quoting": cfg.quoting,
              "numeric_labels": cfg.task == "regression"}
    values.update({key: value for key, value in overrides.items() if value is not None})
    sep: str | None = values["sep"]
    if sep is not None:
        sep = SEPARATORS.get(sep.lower(), sep)
        if len(sep) != 1:
            raise ConfigError(f"--sep must be one character, or tab/comma/semicolon/pipe (got {values['sep']!r})")
        values["sep"] = sep
    return TableLayout(**values)


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


def _multilabel_table(metrics: dict[str, Any], title: str) -> RichTable:
    table = RichTable(title=title)
    for column in ("label", "precision", "recall", "f1", "support", "threshold"):
        table.add_column(column, justify="right" if column != "label" else "left")
    for name, row in metrics["per_label"].items():
        table.add_row(name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]),
                      f"{row['threshold']:.3f}")
    table.add_section()
    for name in ("micro_f1", "macro_f1", "weighted_f1"):
        table.add_row(name.replace("_f1", " avg"), "", "", f"{metrics[name]:.4f}", str(metrics["n"]), "")
    return table


def _scores_table(metrics: dict[str, Any], names: tuple[str, ...], title: str) -> RichTable:
    table = RichTable(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in names:
        if name in metrics:
            table.add_row(name, f"{metrics[name]:.4f}")
    return table


MULTILABEL_SCORES = ("subset_accuracy", "hamming_loss", "mean_average_precision", "log_loss")
REGRESSION_SCORES = ("rmse", "mae", "pearson", "spearman", "r2")


@app.command("eval")
def evaluate(
    model: Annotated[str, typer.Argument(help="run directory or model folder")],
    data: Annotated[str, typer.Option(help="labelled data file (read as the training data was, unless the flags "
                                      "below say otherwise)")],
    text_col: Annotated[str | None, typer.Option(help="text column (auto-detected)")] = None,
    text_pair_col: Annotated[str | None, typer.Option(help="second text column (pairs)")] = None,
    label_col: Annotated[str | None, typer.Option(help="label column (auto-detected)")] = None,
    label_sep: Annotated[str | None, typer.Option(help="multi-label: separator in the label column")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header", help="the first row names the columns")] = None,
    sep: Annotated[str | None, typer.Option(help="field separator (tab, ',', ...)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print metrics as JSON")] = False,
    language_model_only: Annotated[bool, typer.Option("--language-model-only", help="score the language model without the bag-of-words part it was fused with (what an export computes)")] = False,  # noqa: E501
) -> None:
    """Evaluate a trained model on a labelled file: the task's scores (accuracy, F1, per-class scores, confusion
    matrix; multi-label: per-label scores, subset accuracy, Hamming loss; regression: RMSE, Pearson, ...)."""
    from lastpool.classifier import Classifier
    from lastpool.data.tables import read_table

    clf = Classifier.load(model)
    if language_model_only:
        clf = clf.language_model_only()
    layout = table_layout(clf.config, text_col=text_col, pair_col=text_pair_col, label_col=label_col,
                          label_sep=label_sep, header=header, sep=sep)
    table = read_table(data, layout=layout)
    assert table.labels is not None
    metrics = clf.evaluate(table.texts, table.labels, source=f"evaluation data {table.source}",
                           text_pairs=table.pairs)
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    title = f"{data} ({metrics['n']} texts)"
    task = clf.task.name
    if task == "regression":
        out.print(_scores_table(metrics, REGRESSION_SCORES, title))
        return
    if task == "multilabel":
        out.print(_multilabel_table(metrics, title))
        out.print(_scores_table(metrics, MULTILABEL_SCORES, "multi-label scores"))
        return
    out.print(_metrics_table(metrics, title))
    cm = RichTable(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for name in metrics["labels"]:
        cm.add_column(name, justify="right")
    for name, row in zip(metrics["labels"], metrics["confusion_matrix"], strict=True):
        cm.add_row(name, *(str(v) for v in row))
    out.print(cm)
    if "log_loss" in metrics:
        out.print(f"log loss {metrics['log_loss']:.4f}   expected calibration error {metrics['ece']:.4f}")


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="run directory, model folder, or an exported .onnx file")],
    texts: Annotated[list[str] | None, typer.Argument(help="texts to classify")] = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="file of texts (csv, tsv, jsonl, parquet, txt)")] = None,  # noqa: A002, E501
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write predictions to .csv, .tsv, .jsonl or .parquet")] = None,  # noqa: E501
    text_col: Annotated[str | None, typer.Option(help="text column of --input (auto-detected)")] = None,
    text_pair_col: Annotated[str | None, typer.Option(help="second text column of --input (a model of pairs)")] = None,
    header: Annotated[bool | None, typer.Option("--header/--no-header", help="the first row of --input names the columns")] = None,  # noqa: E501
    sep: Annotated[str | None, typer.Option(help="field separator of --input (tab, ',', ...)")] = None,
    keep_cols: Annotated[str | None, typer.Option(help="columns of --input to copy into the predictions (id,...)")] = None,  # noqa: E501
    chunk_rows: Annotated[int, typer.Option(min=1, help="rows of --input read, scored and written at a time")] = 4096,
    resume: Annotated[bool, typer.Option(help="go on with an interrupted --output from its last finished chunk")] = False,  # noqa: E501
    num_processes: Annotated[int, typer.Option(min=1, help="score --input in this many processes on this machine")] = 1,  # noqa: E501
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines instead of a table")] = False,
) -> None:
    """Classify texts given as arguments or in a file; print them or write a file with probabilities
    (multi-label: the labels over their thresholds; regression: the value). A file is read, scored and
    written in chunks: memory does not grow with it, and --resume continues after an interruption."""
    from lastpool.distributed import launch_processes, under_launcher
    from lastpool.scoring.parts import output_format, write_rows
    from lastpool.scoring.rows import prediction_rows

    if not texts and input is None:
        raise ConfigError("give texts to classify, or --input FILE")
    if texts and input is not None:
        raise ConfigError("give texts as arguments or --input FILE, not both")
    if output is not None:
        from lastpool.runs import check_output_file

        output_format(output)
        check_output_file(output)
    file_only = {"--keep-cols": keep_cols is not None, "--resume": resume, "--num-processes": num_processes > 1}
    wrong = [flag for flag, given in file_only.items() if given and (input is None or output is None)]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: only with --input FILE and --output FILE")
    if num_processes > 1 and not under_launcher():
        raise typer.Exit(launch_processes(num_processes, _ARGV))
    from lastpool.export import load_predictor

    clf = load_predictor(model)
    if texts:
        rows = prediction_rows(clf, list(texts), None)
        if output is not None:
            write_rows(output, rows)
            err.print(f"wrote {len(rows)} predictions to {output}")
        elif as_json:
            for row in rows:
                print(json.dumps(row, ensure_ascii=False))
        else:
            out.print(_predictions_table(rows, clf.labels))
        return
    stream = _prediction_stream(clf, input or "", chunk_rows, text_col=text_col, pair_col=text_pair_col,
                                header=header, sep=sep, keep_cols=keep_cols)
    if output is None:  # JSON lines on stdout, a chunk at a time
        for chunk in stream:
            for row in prediction_rows(clf, chunk.table.texts, chunk.table.pairs, chunk.kept):
                print(json.dumps(row, ensure_ascii=False, default=str))
        return
    from lastpool.distributed import finish, process_rank
    from lastpool.scoring.batch import score_file

    n = score_file(clf, stream, output, Path(model), resume=resume, quiet=quiet)
    finish()
    if process_rank() == 0:
        err.print(f"wrote {n} predictions to {output}")


def _prediction_stream(clf: Any, path: str, chunk_rows: int, keep_cols: str | None, **layout: Any) -> Any:
    """``--input`` in chunks, laid out as the model's training data was unless the flags say otherwise."""
    from lastpool.classifier import Classifier
    from lastpool.data.streaming import TableStream

    config = clf.config if isinstance(clf, Classifier) else _saved_config(clf.spec.config)
    kept = [c.strip() for c in keep_cols.split(",")] if keep_cols is not None else []
    if any(not c for c in kept):
        raise ConfigError(f"--keep-cols {keep_cols!r}: an empty column name")
    return TableStream(path, table_layout(config, **layout), chunk_rows=chunk_rows, keep_cols=kept)


def _saved_config(values: dict[str, Any] | None) -> RunConfig:
    """The training settings an ONNX file carries (how its data files were laid out), else the defaults."""
    from pydantic import ValidationError

    from lastpool.config import RunConfig

    try:
        return RunConfig.model_validate(values or {})
    except ValidationError:
        return RunConfig()


def _predictions_table(rows: list[dict[str, Any]], labels: list[str]) -> RichTable:
    table = RichTable()
    first = "value" if rows and "value" in rows[0] else "labels" if rows and "labels" in rows[0] else "label"
    table.add_column(first)
    shown = [] if first == "value" else labels
    for name in shown:
        table.add_column(f"p({name})", justify="right")
    table.add_column("text", overflow="fold")
    for row in rows:
        value = row[first]
        cell = f"{value:.4f}" if first == "value" else ", ".join(value) if first == "labels" else value
        text = row["text"] + (f" | {row['text_pair']}" if "text_pair" in row else "")
        table.add_row(cell, *(f"{row[f'prob_{n}']:.3f}" for n in shown), text)
    return table


@app.command("export")
def export_model(
    model: Annotated[str, typer.Argument(help="run directory or model folder")],
    format: Annotated[str, typer.Option("--format", "-f", help="hf (a transformers folder) or onnx (one .onnx file)")],  # noqa: A002, E501
    out: Annotated[Path, typer.Option(help="output folder (hf) or .onnx file (onnx)")],
    quantize: Annotated[str, typer.Option(help="onnx: none, or int8 (ONNX Runtime's dynamic quantization)")] = "none",
) -> None:
    """Export for transformers (AutoModelForSequenceClassification / pipeline) or ONNX Runtime; the export
    is checked against lastpool's own logits before it is written (int8: how far it moved them is shown)."""
    from lastpool.classifier import Classifier
    from lastpool.export import export_hf, export_onnx

    if format not in ("hf", "onnx"):
        raise ConfigError(f"--format must be hf or onnx (got {format!r})")
    if quantize not in ("none", "int8"):
        raise ConfigError(f"--quantize must be none or int8 (got {quantize!r})")
    if quantize != "none" and format != "onnx":
        raise ConfigError("--quantize int8 is for --format onnx (a transformers folder keeps float weights)")
    if out.exists() and (format == "onnx" or (out.is_dir() and any(out.iterdir()))):
        raise ConfigError(f"{out} already exists; choose another --out")
    from lastpool.runs import check_output_dir, check_output_file

    if format == "onnx":
        check_output_file(out, "--out")
    else:
        check_output_dir(out)
    clf = Classifier.load(model)
    if format == "hf":
        export_hf(clf, out)
    else:
        export_onnx(clf, out, quantize="int8" if quantize == "int8" else "none")
    err.print(f"exported {model} to {out} ({format}{', int8' if quantize == 'int8' else ''})")
    if quantize == "int8":
        from lastpool.export import CHECK_TEXTS, int8_check

        pairs = list(reversed(CHECK_TEXTS)) if clf.encoder is not None and clf.encoder.pairs else None
        check = int8_check(clf, out, CHECK_TEXTS, pairs)
        agree = f"predictions agree on {check['agreement']:.0%} of {len(CHECK_TEXTS)} check texts, " \
            if "agreement" in check else ""
        err.print(f"int8 check: {agree}largest {'value' if 'agreement' not in check else 'probability'} "
                  f"difference {check['max_difference']:.4f} (measure agreement on your own data with "
                  "predict MODEL.onnx)")
    if clf.spec is not None and clf.spec.fusion is not None:
        alone = ((clf.fusion or {}).get("language_model") or {}).get("accuracy")
        scores = (f" (validation accuracy {float(alone):.4f} alone, {float(clf.spec.metrics['val_accuracy']):.4f} "
                  "fused)" if alone is not None and clf.spec.metrics.get("val_accuracy") is not None else "")
        err.print(f"note: the export holds the language model alone; the bag-of-words part it was fused with "
                  f"(share {clf.spec.fusion.share:g}) stays in lastpool's model folder{scores}")


def _serve_help(name: str) -> str:
    """A serve flag's help: ServeConfig's description and default (the one home of both)."""
    field = ServeConfig.model_fields[name]
    default = default_words(field.default)  # on/off, and none shown for an unset key
    return escape(f"{field.description} [{default}]" if default is not None else str(field.description))


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="run directory or model folder")],
    host: Annotated[str | None, typer.Option(help=_serve_help("host"))] = None,
    port: Annotated[int | None, typer.Option(help=_serve_help("port"))] = None,
    max_batch: Annotated[int | None, typer.Option(help=_serve_help("max_batch"))] = None,
    max_body_bytes: Annotated[int | None, typer.Option(help=_serve_help("max_body_bytes"))] = None,
    api_key: Annotated[str | None, typer.Option(envvar="LASTPOOL_API_KEY", show_envvar=True,
                                                help=_serve_help("api_key"))] = None,
    batch_wait_ms: Annotated[float | None, typer.Option(help=_serve_help("batch_wait_ms"))] = None,
    max_batch_tokens: Annotated[int | None, typer.Option(help=_serve_help("max_batch_tokens"))] = None,
    max_batch_texts: Annotated[int | None, typer.Option(help=_serve_help("max_batch_texts"))] = None,
    micro_batching: Annotated[bool | None, typer.Option("--micro-batching/--no-micro-batching",
                                                        help=_serve_help("micro_batching"))] = None,
    log_level: Annotated[str | None, typer.Option(help=_serve_help("log_level"))] = None,
) -> None:
    """Serve a model over HTTP: POST /v1/classify, GET /v1/model, GET /health, docs at /docs. Stops
    gracefully on SIGTERM or Ctrl-C (requests in flight are answered first)."""
    given = {name: value for name, value in locals().items() if name in ServeConfig.model_fields}  # every flag
    cfg = serve_config({name: value for name, value in given.items() if value is not None}, flags=True)
    from lastpool.serving.app import serve as run_server

    def announce(url: str) -> None:
        auth = ", API key required on /v1/*" if cfg.api_key else ""
        sys.stderr.write(f"serving {model} at {url}  (docs: {url}/docs{auth}; Ctrl-C or SIGTERM to stop)\n")
        sys.stderr.flush()

    run_server(model, cfg, announce=announce)


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


_ARGV: list[str] = []  # this invocation's arguments, for the processes --num-processes starts


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map user errors to exit code 2 with one clear message."""
    from lastpool.distributed import process_rank

    _ARGV[:] = list(argv) if argv is not None else sys.argv[1:]
    quiet_rank = process_rank() != 0  # with several processes the main one reports; the same error once
    try:
        result = app(args=argv, standalone_mode=False, prog_name="lastpool")
    except TrainingStopped as exc:
        from lastpool.distributed import finish

        # Every process stops at the same step (the trainer all-reduces the stop flag), so they close the
        # process group together; left open, its threads can abort the process as it exits.
        finish()
        if not quiet_rank:
            sys.stderr.write(f"{exc}\n")
        return exc.exit_code
    except LastpoolError as exc:
        if not quiet_rank:
            sys.stderr.write(f"error: {exc}\n")
        return 2
    except OSError as exc:  # the file system said no (disk full, permissions, ...): say what and where
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"error: {exc.strerror or exc}{where}\n")
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
