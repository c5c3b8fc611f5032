"""What ``lastpool tune`` writes: ``best.yaml`` (a config ``lastpool train --config`` takes), ``trials.csv``,
``tune.json`` and a report (Markdown and HTML) with the trials table, the optimisation history and the
parameters' importances."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import yaml

from lastpool.config import RunConfig
from lastpool.evaluation.render import Code, Document, Figure, Heading, Para, Table, fmt, render_html, render_markdown
from lastpool.tuning.space import Space, space_json
from lastpool.tuning.study import trial_settings


def trial_rows(study: Any, space: Space) -> list[dict[str, Any]]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        rows.append({"trial": trial.number, "state": trial.state.name, "value": trial.value,
                     "epochs_run": len(trial.intermediate_values), **{k: trial.params.get(k) for k in space},
                     "seconds": trial.user_attrs.get("seconds"), "worker": trial.user_attrs.get("worker")})
    return rows


def importances(study: Any) -> dict[str, float]:
    """Each parameter's share of the objective's variance over the finished trials (fANOVA, seeded); empty
    until two trials finished with different values."""
    import warnings

    import optuna

    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():  # Optuna warns when every trial scored the same
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def best_config(config: RunConfig, study: Any) -> RunConfig:
    """The run's settings with the best trial's values: what ``best.yaml`` holds."""
    return trial_settings(config, dict(study.best_trial.params))


def best_yaml(config: RunConfig) -> str:
    values = {k: v for k, v in config.model_dump(mode="json").items() if k not in ("from_recipe", "out")}
    return yaml.safe_dump(values, sort_keys=False)


def outputs(config: RunConfig, study: Any, space: Space, metric: str) -> dict[str, str | bytes]:
    """Every file of the tune folder, by name (plots under ``plots/``)."""
    from lastpool.tuning.plots import history_png, importance_png

    rows, weights = trial_rows(study, space), importances(study)
    completed = [r for r in rows if r["state"] == "COMPLETE"]
    files: dict[str, str | bytes] = {"trials.csv": _csv(rows)}
    summary: dict[str, Any] = {"study": study.study_name, "metric": metric, "space": space_json(space),
                               "trials": rows, "importances": weights, "best": None}
    history = history_png(rows, metric)
    files["plots/optimisation_history.png"] = history
    figures = [Figure("optimisation history", "plots/optimisation_history.png", history)]
    if weights:
        png = importance_png(weights)
        files["plots/parameter_importances.png"] = png
        figures.append(Figure("parameter importances", "plots/parameter_importances.png", png))
    best_text = "no trial finished"
    if completed:
        best = study.best_trial
        settings = best_config(config, study)
        files["best.yaml"] = best_yaml(settings)
        summary["best"] = {"trial": best.number, "value": best.value, "params": best.params}
        best_text = f"trial {best.number}: validation {metric} {fmt(best.value)}"
    files["tune.json"] = json.dumps(summary, indent=2, default=str) + "\n"
    doc = Document(f"lastpool tune: {study.study_name}", [
        Para([f"{len(rows)} trials ({len(completed)} complete, "
              f"{sum(r['state'] == 'PRUNED' for r in rows)} pruned), objective: validation {metric}. Best: "
              f"{best_text}. Train with it: ", Code("lastpool train --config best.yaml")]),
        Heading(2, "Trials"), _table(rows, space, metric),
        Heading(2, "Optimisation history and parameter importances"), *figures,
    ])
    files["report.md"] = render_markdown(doc)
    files["report.html"] = render_html(doc)
    return files


def _table(rows: list[dict[str, Any]], space: Space, metric: str) -> Table:
    header = ["trial", "state", metric, "epochs", *space]
    body = [[str(r["trial"]), r["state"], fmt(r["value"]) if r["value"] is not None else "-", str(r["epochs_run"]),
             *(fmt(r[k]) if isinstance(r[k], float) else str(r[k]) for k in space)] for r in rows]
    best = max((i for i, r in enumerate(rows) if r["state"] == "COMPLETE"), key=lambda i: rows[i]["value"],
               default=None)
    return Table(header, body, [True, False, True, True, *(True for _ in space)],
                 frozenset({best}) if best is not None else frozenset())


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()
