"""``lastpool tune``: an Optuna study over a search space, each trial a training run scored on validation.

A trial trains on the training split with the drawn settings and reports its validation main score
after every epoch, so a pruner can stop a trial that is doing worse than the others had at that epoch.
The objective is the kept epoch's validation score (never a test set: tune has none). With
``--storage`` the study lives in a database: a stopped study continues where it was, and several
``lastpool tune`` processes (on one machine or many) share one study and its trial budget; each trial is
run by exactly one of them. A study records what it was made for (the search space, the fixed settings,
the data), and a process with other ones is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lastpool.config import RunConfig
from lastpool.errors import ConfigError
from lastpool.tracking import Tracking
from lastpool.tuning.space import Space, centre_of, space_json

COUNTED = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")  # trial states that use up the budget
STUDY_ATTR = "lastpool"  # the study's user attribute recording what it was made for


@dataclass
class TuneData:
    texts: Sequence[str]
    labels: Sequence[Any]
    pairs: Sequence[str] | None = None
    eval_texts: Sequence[str] | None = None
    eval_labels: Sequence[Any] | None = None
    eval_pairs: Sequence[str] | None = None

    def identity(self) -> str:
        digest = hashlib.sha256()
        for part in (self.texts, self.labels, self.pairs, self.eval_texts, self.eval_labels, self.eval_pairs):
            digest.update(json.dumps(list(part) if part is not None else None, default=str).encode())
        return digest.hexdigest()[:16]


class PruningObserver:
    """Reports the best validation main score so far after each epoch, and stops the trial when the pruner
    says so."""

    log_every = 10**9  # no steps: epochs only

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric, self.best = trial, metric, float("-inf")

    def started(self, params: dict[str, Any], step: int) -> None:
        pass

    def stepped(self, step: int, loss: float, lr: float) -> None:
        pass

    def epoch_ended(self, record: dict[str, Any]) -> None:
        import optuna

        value = float(record[f"val_{self.metric}"])
        # the best epoch so far: what the trial would keep if it stopped now, and steadier than one epoch
        self.best = max(self.best, value if value == value else float("-inf"))
        self.trial.report(self.best, int(record["epoch"]))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {record['epoch']}: best validation {self.metric} {self.best:.4f}")

    def state(self) -> dict[str, Any]:
        return {}


def check_optuna() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("lastpool tune needs Optuna: pip install 'lastpool[tune]'") from None


def open_study(config: RunConfig, space: Space, data: TuneData, storage: str | None, name: str,
               pruning: bool, trials: int) -> Any:
    """The study (created, or loaded from ``storage`` and checked to be the same search); errors are
    ConfigErrors before any trial runs."""
    import optuna

    from lastpool.training.run_state import RUN_CONTROL_FIELDS

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    made_for: dict[str, Any] = {"space": space_json(space), "data": data.identity(),
                "settings": {k: v for k, v in config.model_dump(mode="json").items()
                             if k not in space and k not in RUN_CONTROL_FIELDS | {"from_recipe"}}}
    # A seeded sampler repeats its draws: with a shared storage each process draws its own.
    seed = config.seed if storage is None else int.from_bytes(os.urandom(4), "little")
    pruner = pruner_for(config, trials) if pruning else optuna.pruners.NopPruner()
    try:
        backend = (optuna.storages.RDBStorage(storage, engine_kwargs=_engine_kwargs(storage))
                   if storage is not None else None)
        study = optuna.create_study(storage=backend, study_name=name, direction="maximize", load_if_exists=True,
                                    sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy and Optuna raise many kinds for one cause
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--storage {storage}: cannot open the study ({detail})") from None
    recorded = study.user_attrs.get(STUDY_ATTR)
    if recorded is None:
        study.set_user_attr(STUDY_ATTR, made_for)
        if centre := centre_of(space, config):
            study.enqueue_trial(centre, skip_if_exists=True)
    elif recorded != made_for:
        what = next(k for k in ("space", "data", "settings") if recorded.get(k) != made_for[k])
        shown = {"space": "search space", "data": "data", "settings": "fixed settings"}[what]
        differing = (sorted(k for k in set(recorded[what]) | set(made_for[what])
                            if recorded[what].get(k) != made_for[what].get(k))[:3]
                     if what != "data" else [])
        raise ConfigError(f"--storage {storage}: study {name!r} was made with another {shown}"
                          f"{' (' + ', '.join(differing) + ')' if differing else ''}; give another --study-name "
                          "or the same settings")
    return study


def pruner_for(config: RunConfig, trials: int) -> Any:
    """Median pruning that first lets a few trials finish (up to 5, a quarter of the budget) and judges a
    trial only after a quarter of its epochs: a trial's best score so far early in training says more
    about its learning rate than about where it ends."""
    import optuna

    epochs = config.epochs if isinstance(config.epochs, int) else 4
    return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, trials // 4)),
                                       n_warmup_steps=max(1, epochs // 4))


def _engine_kwargs(storage: str) -> dict[str, Any]:
    """SQLite: wait for the other workers' writes instead of failing at once."""
    return {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}


def counted_trials(study: Any) -> int:
    import optuna

    states = tuple(getattr(optuna.trial.TrialState, s) for s in COUNTED)
    return len(study.get_trials(deepcopy=False, states=states))


def run_study(study: Any, config: RunConfig, space: Space, data: TuneData, trials: int, timeout: float | None,
              tracking: Tracking, on_trial: Any = None) -> None:
    """Run trials until the study holds ``trials`` (counted over every process on the storage) or
    ``timeout`` seconds have passed."""
    import optuna

    def objective(trial: optuna.Trial) -> float:
        from lastpool.classifier import Classifier

        params = {name: param.suggest(trial, name) for name, param in space.items()}
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        trial_config = trial_settings(config, params)
        child = tracking.child(f"trial-{trial.number}")
        started = time.perf_counter()
        clf = Classifier(trial_config)
        observers: list[Any] = [PruningObserver(trial, main_metric_of(trial_config, data))]
        if child.active:
            observers.append(child)
        try:
            clf.fit(data.texts, data.labels, eval_texts=data.eval_texts, eval_labels=data.eval_labels,
                    text_pairs=data.pairs, eval_text_pairs=data.eval_pairs, quiet=True, observers=observers)
        except optuna.TrialPruned:
            child.finish("KILLED")  # stopped on purpose: not a failure
            raise
        except BaseException:
            child.finish("FAILED")
            raise
        assert clf.result is not None
        value = float(clf.result.val_metrics[clf.task.main_metric])
        trial.set_user_attr("best_epoch", clf.result.best_epoch)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        child.log_final({f"best_val/{clf.task.main_metric}": value})
        child.finish("FINISHED")
        return value

    def budget(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None:
            on_trial(trial)
        if counted_trials(study) >= trials:
            study.stop()

    if counted_trials(study) >= trials:
        return
    study.optimize(objective, timeout=timeout, callbacks=[budget], catch=(), gc_after_trial=True)


def main_metric_of(config: RunConfig, data: TuneData) -> str:
    from lastpool.tasks import MultiLabel, Regression, SingleLabel, Task, infer_task

    name = config.task if config.task != "auto" else infer_task(list(data.labels))[0]
    tasks: dict[str, type[Task]] = {"single": SingleLabel, "multilabel": MultiLabel, "regression": Regression}
    return tasks[name].main_metric


def trial_settings(config: RunConfig, params: dict[str, Any]) -> RunConfig:
    """``config`` with a trial's drawn values, which are the user's choice now, not the recipe's."""
    values = {**config.model_dump(), **params, "from_recipe": [f for f in config.from_recipe if f not in params]}
    return RunConfig.model_validate(values)
