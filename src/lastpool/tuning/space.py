"""The search space of ``lastpool tune``: which RunConfig fields a trial draws, and from what.

The default space is centred on the run's own settings (the recipe's, unless flags gave others): the
learning rate from a quarter to four times its value on a log scale, and the regularisation a mode
trains with. ``--space FILE.yaml`` replaces it, one field per entry::

    lr: {low: 1.0e-5, high: 1.0e-3, log: true}    # a float range (log: sampled on a log scale)
    lora_r: {low: 4, high: 32, step: 4}            # an int range (both ends whole numbers)
    batch_size: {choices: [8, 16, 32]}             # one of the values
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from lastpool.config import RunConfig
from lastpool.errors import ConfigError
from lastpool.recipes import family_of, kind_of

# What a trial may not draw: the data and the model (compare those with `lastpool compare`), the outputs,
# and the settings that say how a run is driven or recorded.
NOT_SEARCHED = frozenset({
    "data", "eval_data", "text_col", "label_col", "text_pair_col", "task", "label_sep", "label_cols", "labels",
    "label_names", "header", "sep", "quoting", "val_fraction", "model", "mode", "tokenizer", "trust_remote_code",
    "out", "save_every", "keep_checkpoints", "num_processes", "sharding", "report_to", "log_every",
    "tracking_uri", "experiment", "run_name", "from_recipe", "seed", "compile",
})


@dataclass(frozen=True)
class Param:
    """One searched field: a float or int range (``log``: on a log scale; ``step`` for ints), or choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def is_int(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v not in (None, False)}

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.is_int:
            return trial.suggest_int(name, int(self.low), int(self.high), step=self.step or 1, log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def corners(self) -> list[Any]:
        """Values at the space's edges, each of which must make a valid config."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


Space = dict[str, Param]


def default_space(config: RunConfig) -> Space:
    """Around ``config``'s own values, for its model kind and mode (``config`` is resolved: its recipe
    values are filled in)."""
    family, scratch = family_of(config.mode), kind_of(config.model) == "scratch"
    space: Space = {"lr": Param(low=config.lr / 4, high=config.lr * 4, log=True)}
    if family == "probe":
        space["weight_decay"] = Param(low=1e-6, high=0.1, log=True)
        return space
    space["warmup"] = Param(low=0.0, high=0.2)
    space["weight_decay"] = Param(low=0.0, high=0.2)
    if config.task in ("single", "auto"):
        space["label_smoothing"] = Param(low=0.0, high=0.2)
    if family == "lora":
        space["lora_r"] = Param(choices=(4, 8, 16, 32))
    if scratch:
        space["dropout"] = Param(low=0.0, high=0.4)
        space["batch_size"] = Param(choices=(16, 32, 64))
    else:
        space["batch_size"] = Param(choices=(8, 16, 32))
    return space


def centre_of(space: Space, config: RunConfig) -> dict[str, Any]:
    """``config``'s own values of the searched fields, each brought to the nearest value the space holds (a
    weight decay of 0 to a log range's low end): the study's first trial, so the run as configured is
    measured and the best trial is not below it on validation. A value missing from choices is drawn."""
    values: dict[str, Any] = {}
    for name, param in space.items():
        value = getattr(config, name)
        if param.choices is not None:
            if value in param.choices:
                values[name] = value
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # "auto" and the like: the sampler draws it
        assert param.low is not None and param.high is not None
        near = min(max(value, param.low), param.high)
        if param.is_int:
            step = param.step or 1
            near = int(param.low) + step * round((near - param.low) / step)
            near = min(near, int(param.high) - (int(param.high) - int(param.low)) % step)
        values[name] = near
    return values


def read_space(path: Path) -> Space:
    """A space file; anything malformed is a ConfigError naming the entry."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--space {path}: cannot read it ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--space {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"--space {path}: a search space is a mapping of field: {{low, high}} or {{choices}}")
    return {str(name): _param(path, str(name), spec) for name, spec in loaded.items()}


def _param(path: Path, name: str, spec: Any) -> Param:
    where = f"--space {path}, {name}"
    if name not in RunConfig.model_fields:
        raise ConfigError(f"{where}: not a training setting")
    if name in NOT_SEARCHED:
        raise ConfigError(f"{where}: not searched by tune (data, model, mode and run settings stay fixed; "
                          "compare models and modes with lastpool compare)")
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"{where}: give {{low: A, high: B}} (optionally log: true, step: N) or {{choices: [...]}}")
    unknown = sorted(set(spec) - {"low", "high", "log", "step", "choices"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (low, high, log, step or choices)")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices is a non-empty list, on its own")
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}: a choice is repeated")
        return Param(choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers:
        raise ConfigError(f"{where}: low and high must both be numbers")
    assert isinstance(low, (int, float)) and isinstance(high, (int, float))
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log is true or false")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low above 0")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 1
                             or not (isinstance(low, int) and isinstance(high, int))):
        raise ConfigError(f"{where}: step is a whole number >= 1, for a range of whole numbers")
    if step is not None and log:
        raise ConfigError(f"{where}: step and log do not go together")
    return Param(low=low, high=high, log=log, step=step)


def check_space(space: Space, config: RunConfig) -> None:
    """Every edge of every range (and every choice) must make a valid config, so no trial fails on it."""
    for name, param in space.items():
        for value in param.corners():
            try:
                RunConfig.model_validate({**config.model_dump(), name: value})
            except ValueError as exc:
                lines = str(exc).splitlines()
                detail = (lines[2] if len(lines) > 2 else lines[0]).split(" [type=")[0].strip()
                raise ConfigError(f"search space {name}: {value!r} is not a valid value ({detail})") from None


def space_json(space: Space) -> dict[str, Any]:
    return {name: param.to_json() for name, param in sorted(space.items())}
