"""Cross-validation and comparisons whose numbers come with their noise.

A 227-sentence validation split moves 0.44 points per sentence and a from-scratch model swings by
several points between seeds, so one number misleads. ``cross_validate`` trains on K-1 folds and
scores the held-out fold (repeated for several seeds), giving a mean, a standard deviation and a 95%
confidence interval for every metric. The held-out fold is never used for choosing the epoch or
fitting the temperature: each fit makes its own validation split inside its training folds.

``compare`` runs the same folds and seeds for every setting, so differences are paired, and names a
winner only when a paired t-test says the best setting beats the runner-up beyond the noise.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.model_selection import StratifiedKFold

from lastpool.config import RunConfig
from lastpool.errors import ConfigError, DataError
from lastpool.tracking import Tracking

# The scores a cross-validation summarises, per task (each also per label: f1[label]).
TASK_METRICS = {"single": ("accuracy", "macro_f1", "weighted_f1", "log_loss", "ece"),
                "multilabel": ("micro_f1", "macro_f1", "weighted_f1", "subset_accuracy", "hamming_loss",
                               "mean_average_precision", "log_loss"),
                "regression": ("pearson", "spearman", "rmse", "mae", "r2")}
DEFAULT_METRIC = {"single": "accuracy", "multilabel": "macro_f1", "regression": "pearson"}  # what compare ranks by
SUMMARY_METRICS = tuple(dict.fromkeys(name for names in TASK_METRICS.values() for name in names))
LOWER_IS_BETTER = {"log_loss", "ece", "hamming_loss", "rmse", "mae"}


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std and a 95% t-interval for the mean (the interval is the mean itself for n = 1)."""
    array = np.asarray(values, dtype=np.float64)
    n = len(array)
    mean = float(array.mean()) if n else float("nan")
    std = float(array.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def fold_plan(labels: Sequence[str], folds: int, seeds: Sequence[int], val_fraction: float, strict: bool = True
              ) -> list[tuple[int, int, list[int], list[int]]]:
    """(seed, fold, train indices, test indices) for stratified K-fold, reshuffled per seed.

    ``folds == 1`` means a repeated hold-out: one stratified split of ``val_fraction`` per seed.
    ``labels`` are the keys kept in proportion; not ``strict`` (a multi-label or regression set's keys),
    keys too rare to reach every fold are pooled instead of refused.
    """
    if folds < 1:
        raise ConfigError(f"--folds must be at least 1 (got {folds})")
    counts = {label: labels.count(label) for label in set(labels)}
    if not strict:
        need = max(folds, 2)
        labels = [label if counts[label] >= need else "(rare)" for label in labels]
        if labels.count("(rare)") and labels.count("(rare)") < need:  # too few rare rows even pooled
            common = max(counts, key=lambda k: counts[k])
            labels = [common if label == "(rare)" else label for label in labels]
        counts = {label: labels.count(label) for label in set(labels)}
    if folds > 1 and min(counts.values()) < folds:
        rare = min(counts, key=lambda k: counts[k])
        raise DataError(f"class {rare!r} has {counts[rare]} examples, fewer than --folds {folds}: "
                        "every fold needs one of each class")
    plan = []
    for seed in seeds:
        if folds == 1:
            from lastpool.data.split import stratified_split

            train, test = stratified_split(labels, val_fraction, seed)
            plan.append((seed, 0, train, test))
            continue
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        for fold, (train, test) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            plan.append((seed, fold, sorted(int(i) for i in train), sorted(int(i) for i in test)))
    return plan


def _scores(metrics: dict[str, Any], task: str) -> dict[str, float]:
    scores = {name: float(metrics[name]) for name in TASK_METRICS[task] if name in metrics}
    for label, row in (metrics.get("per_class") or metrics.get("per_label") or {}).items():
        scores[f"f1[{label}]"] = float(row["f1"])
    return scores


def cross_validate(config: RunConfig, texts: Sequence[str], labels: Sequence[Any], folds: int,
                   seeds: Sequence[int], on_run: Callable[[dict[str, Any]], None] | None = None,
                   text_pairs: Sequence[str] | None = None, tracking: Tracking | None = None,
                   run_prefix: str = "") -> dict[str, Any]:
    """Train and score one model per (seed, fold); per-run results and a summary of every metric (of the
    task: the labels' own, or ``config.task``). ``tracking``: each model is a child run of it (named
    ``{run_prefix}seed{S}-fold{K}``) with its training and its held-out fold's scores (``test/...``)."""
    from lastpool.classifier import Classifier, stratification_keys  # here: the CLI checks first, torch later

    task, keys, outputs = stratification_keys(config, labels)
    if task != "single":
        config = config.model_copy(update={"task": task})
    runs: list[dict[str, Any]] = []

    def pairs(rows: list[int]) -> list[str] | None:
        return [text_pairs[i] for i in rows] if text_pairs is not None else None

    for seed, fold, train, test in fold_plan(keys, folds, seeds, config.val_fraction, strict=task == "single"):
        started = time.perf_counter()
        child = (tracking or Tracking([])).child(f"{run_prefix}seed{seed}-fold{fold}")
        with child:
            clf = Classifier(config.model_copy(update={"seed": seed})).fit(
                [texts[i] for i in train], [labels[i] for i in train], quiet=True,
                data_name=f"fold {fold} training data", text_pairs=pairs(train),
                observers=[child] if child.active else ())
            metrics = clf.evaluate([texts[i] for i in test], [labels[i] for i in test], source=f"fold {fold}",
                                   text_pairs=pairs(test))
            assert clf.result is not None
            scores = _scores(metrics, task)
            run = {"seed": seed, "fold": fold, "n_train": len(train), "n_test": len(test),
                   "best_epoch": clf.result.best_epoch, "seconds": time.perf_counter() - started,
                   "temperature": clf.spec.temperature if clf.spec else 1.0, "scores": scores}
            child.log_final({f"test/{name}": value for name, value in scores.items()})
        if "confusion_matrix" in metrics:
            run["confusion_matrix"] = metrics["confusion_matrix"]
        runs.append(run)
        if on_run is not None:
            on_run(run)
    names = list(runs[0]["scores"]) if runs else []
    summary = {name: summarize([r["scores"][name] for r in runs]) for name in names}
    total = (np.sum([r["confusion_matrix"] for r in runs], axis=0).tolist()
             if runs and "confusion_matrix" in runs[0] else [])
    return {"task": task, "folds": folds, "seeds": list(seeds), "runs": runs, "summary": summary,
            "confusion_matrix_sum": total, "labels": outputs}


def settings_grid(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the compared values, e.g. {pooling: [last, mean]} -> [{pooling: last}, ...]."""
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(axes[n] for n in names))]


def setting_name(setting: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in setting.items())


def compare(config: RunConfig, texts: Sequence[str], labels: Sequence[Any], axes: dict[str, list[Any]],
            folds: int, seeds: Sequence[int], metric: str = "accuracy",
            on_run: Callable[[str, dict[str, Any]], None] | None = None,
            text_pairs: Sequence[str] | None = None, tracking: Tracking | None = None) -> dict[str, Any]:
    """Cross-validate every setting on the same folds and seeds; rank them and test the top two.
    ``tracking``: every model is a child run of it, named after its setting, seed and fold."""
    if not axes:
        raise ConfigError("nothing to compare: give at least one axis with two or more values")
    results = []
    for setting in settings_grid(axes):
        cfg = config.model_copy(update=setting)
        RunConfig.model_validate(cfg.model_dump())  # the combination itself must be valid
        name = setting_name(setting)

        def report(run: dict[str, Any], name: str = name) -> None:
            if on_run is not None:
                on_run(name, run)

        cv = cross_validate(cfg, texts, labels, folds, seeds, on_run=report, text_pairs=text_pairs,
                            tracking=tracking, run_prefix=f"{name} ")
        if metric not in cv["summary"]:
            raise ConfigError(f"--metric {metric} is not a score of a {cv['task']} task "
                              f"({', '.join(TASK_METRICS[cv['task']])})")
        results.append({"setting": setting, "name": name, **cv})
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    ranked = sorted(results, key=lambda r: -sign * r["summary"][metric]["mean"])
    verdict: dict[str, Any] = {"metric": metric, "best": ranked[0]["name"], "winner": None}
    if len(ranked) > 1:
        best = [r["scores"][metric] for r in ranked[0]["runs"]]
        second = [r["scores"][metric] for r in ranked[1]["runs"]]
        diffs = np.asarray(best) - np.asarray(second)
        if len(diffs) > 1 and np.any(diffs != diffs[0]):
            p_value = float(stats.ttest_rel(best, second).pvalue)
        else:  # one pair, or identical differences: no spread to test against
            p_value = 0.0 if len(diffs) > 1 and sign * diffs[0] > 0 else 1.0
        verdict.update({"runner_up": ranked[1]["name"], "mean_difference": float(diffs.mean()),
                        "p_value": p_value, "pairs": len(diffs)})
        if p_value < 0.05 and sign * diffs.mean() > 0:
            verdict["winner"] = ranked[0]["name"]
    return {"axes": axes, "folds": folds, "seeds": list(seeds), "metric": metric,
            "results": [{k: v for k, v in r.items()} for r in ranked], "verdict": verdict}
