"""The run configuration: every field has a flag that reaches it, YAML loading, precedence, seed.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

import lastpool.cli
import lastpool.config
from lastpool.cli import main
from lastpool.config import (
    PANELS,
    RECORDS,
    RunConfig,
    dump_yaml,
    flag_fields,
    load_yaml,
    make_config,
    resolve_config,
)
from lastpool.errors import ConfigError, LastpoolError
from lastpool.recipes import RECIPE_FIELDS

REPO = Path(__file__).resolve().parents[1]

# A valid, non-default value for every field, as the flag's text (None: a switch, given alone) and as the
# resulting field value. Entries for fields that do not exist (yet) are ignored.
FLAG_VALUES: dict[str, tuple[str | None, Any]] = {
    "data": ("x.csv", "x.csv"),
    "eval_data": ("y.csv", "y.csv"),
    "text_col": ("body", "body"),
    "label_col": ("tag", "tag"),
    "text_pair_col": ("second", "second"),
    "task": ("multilabel", "multilabel"),
    "label_sep": (";", ";"),
    "label_cols": ("joy,anger", ["joy", "anger"]),
    "header": ("--no-header", False),
    "sep": ("tab", "tab"),
    "quoting": ("none", "none"),
    "pair_template": ("A: {text} B: {text_pair}", "A: {text} B: {text_pair}"),
    "class_weight": ("balanced", "balanced"),
    "labels": ("b,a,c", ["b", "a", "c"]),
    "label_names": ("a=alpha,b=beta", {"a": "alpha", "b": "beta"}),
    "val_fraction": ("0.25", 0.25),
    "tokenizer": ("some/folder", "some/folder"),
    "vocab_size": ("777", 777),
    "lowercase": (None, True),  # a switch: --lowercase / --no-lowercase
    "max_length": ("40", 40),
    "padding_side": ("left", "left"),
    "prompt": ("Text: {text} Label:", "Text: {text} Label:"),
    "layer": ("5", 5),
    "final_norm": ("--final-norm", True),
    "model": ("some/model", "some/model"),
    "trust_remote_code": (None, True),  # a switch
    "grad_checkpointing": (None, True),  # a switch
    "compile": (None, True),
    "precision": ("bf16", "bf16"),
    "mode": ("top-2", "top-2"),
    "lora_r": ("4", 4),
    "lora_alpha": ("32", 32),
    "lora_dropout": ("0.1", 0.1),
    "merge": (None, True),
    "calibrate": ("--no-calibrate", False),
    "head_bias": ("--no-head-bias", False),
    "head_init": ("labels", "labels"),
    "patience": ("3", 3),
    "baseline": ("--no-baseline", False),
    "fuse_baseline": ("--no-fuse-baseline", False),
    "d_model": ("48", 48),
    "n_layers": ("3", 3),
    "n_heads": ("6", 6),
    "d_ff": ("96", 96),
    "dropout": ("0.3", 0.3),
    "context_length": ("512", 512),
    "pooling": ("max", "max"),
    "head_dropout": ("0.2", 0.2),
    "token_dropout": ("0.15", 0.15),
    "epochs": ("7", 7),
    "batch_size": ("5", 5),
    "lr": ("0.0123", 0.0123),
    "weight_decay": ("0.3", 0.3),
    "warmup": ("12", 12.0),
    "max_steps": ("99", 99),
    "save_every": ("25", 25),
    "keep_checkpoints": ("3", 3),
    "num_processes": ("2", 2),
    "sharding": ("fsdp", "fsdp"),
    "report_to": ("tensorboard,mlflow", ["tensorboard", "mlflow"]),
    "log_every": ("7", 7),
    "tracking_uri": ("sqlite:///t.db", "sqlite:///t.db"),
    "experiment": ("sentiment", "sentiment"),
    "run_name": ("first", "first"),
    "grad_clip": ("0.7", 0.7),
    "grad_accum": ("3", 3),
    "label_smoothing": ("0.05", 0.05),
    "seed": ("11", 11),
    "out": ("somewhere/run", "somewhere/run"),
}


def train_option_names() -> set[str]:
    # Duck-typed: typer >= 0.2x builds commands from its own copy of click, not ``click`` itself.
    group = typer.main.get_command(lastpool.cli.app)
    command = group.commands["train"]  # type: ignore[attr-defined]
    return {opt for param in command.params if param.param_type_name == "option" for opt in param.opts}


SETTINGS = [name for name in RunConfig.model_fields if name not in RECORDS]


def test_every_config_field_has_a_train_flag() -> None:
    options = train_option_names()
    missing = [name for name in SETTINGS if "--" + name.replace("_", "-") not in options]
    assert missing == [], f"RunConfig fields without a `lastpool train` flag: {missing}"
    # ... and every flag other than --config/--quiet/--help is a config field.
    fields = {"--" + name.replace("_", "-") for name in SETTINGS}
    extra = {o for o in options if o.startswith("--")} - fields - {"--config", "--quiet", "--help", "--resume"}
    assert extra == set()


def test_every_flag_reaches_its_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each flag sets exactly its own field in the resolved config (caught before any training)."""
    missing = set(SETTINGS) - set(FLAG_VALUES)
    assert not missing, f"add a test value to FLAG_VALUES for the new config field(s) {sorted(missing)}"
    resolved: list[RunConfig] = []
    real = lastpool.config.resolve_config

    class Stop(LastpoolError):
        pass

    def spy(config_file: str | None, overrides: dict[str, Any], base: dict[str, Any] | None = None) -> RunConfig:
        resolved.append(real(config_file, overrides, base=base))
        raise Stop("stop")

    monkeypatch.setattr(lastpool.config, "resolve_config", spy)
    defaults = RunConfig()
    for name in SETTINGS:
        text, value = FLAG_VALUES[name]
        assert getattr(defaults, name) != value, f"{name}: pick a non-default test value"
        if text is not None and text.startswith("--"):  # a switch whose default is on: its --no- form
            args = ["train", text]
        else:
            args = ["train", "--" + name.replace("_", "-"), *([text] if text is not None else [])]
        if name == "n_heads":
            args += ["--d-model", "48"]
        code = main(args)
        assert code == 2
        cfg = resolved.pop()
        assert getattr(cfg, name) == value, name
        changed = {k for k in SETTINGS if getattr(cfg, k) != getattr(defaults, k)}
        # A pretrained model brings its default mode and that mode's recipe: the settings left unset follow
        # the table's row.
        follows = {*RECIPE_FIELDS, "mode"} if name == "model" else set()
        if name == "baseline":  # no baseline, nothing to fuse with (tests/test_recipes.py)
            follows = {"fuse_baseline"}
        assert changed <= {name, "d_model"} | follows, (name, changed)
        assert name not in cfg.from_recipe


def test_every_setting_carries_its_flag() -> None:
    """The CLI and the README's table are built from the fields: each setting has a panel and help text;
    the records have no flag."""
    flags = {spec.name: spec for spec in flag_fields()}
    assert sorted(flags) == sorted(SETTINGS)
    for spec in flags.values():
        assert spec.panel in PANELS, spec.name
        assert spec.field.description, f"{spec.name}: give the field a description (its --help line)"
        assert spec.help.startswith(spec.field.description)
    assert flags["val_fraction"].help.endswith(" [0.1]")  # the default, from the field
    assert flags["lowercase"].help.endswith(" [off]") and flags["calibrate"].help.endswith(" [on]")
    assert flags["lr"].help.endswith(" (recipe default)")  # the recipe table fills it
    assert flags["max_steps"].help == "stop after this many optimizer steps"  # unset: no marker
    assert "autocast" not in flags["precision"].help + flags["precision"].doc


def test_yaml_then_flags_precedence(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlr: 0.002\npooling: mean\n")
    cfg = resolve_config(str(path), {"epochs": 5, "lr": None, "batch_size": None})
    assert cfg.epochs == 5  # flag beats file
    assert cfg.lr == 0.002 and cfg.pooling == "mean"  # file beats default; an unset flag does not override
    assert cfg.batch_size == RunConfig().batch_size


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = RunConfig(labels=["b", "a"], warmup=10, d_model=48, n_heads=6, padding_side="left")
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert resolve_config(str(path), {}) == cfg


def test_seed_yaml_has_the_tutorial_setup() -> None:
    path = REPO / "configs" / "seed.yaml"
    values = load_yaml(path)
    cfg = make_config(values, source=str(path))
    expected = {
        "d_model": 32, "n_layers": 1, "n_heads": 1, "d_ff": 64, "dropout": 0.0, "lr": 0.0048, "epochs": 6,
        "warmup": 0, "batch_size": 32, "max_length": 64, "val_fraction": 0.1,
    }
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.warmup_steps(1000) == 0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("epochs: 2\nlearning_rate: 0.1\n", "unknown field(s) learning_rate"),
        ("- 1\n- 2\n", "must be a mapping"),
        ("epochs: [1\n", "not valid YAML"),
    ],
)
def test_bad_yaml(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        resolve_config(str(path), {})
    assert needle in str(info.value) and "c.yaml" in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"lr": -1}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"pooling": "median"}, "pooling"),
        ({"d_model": 16, "n_heads": 3}, "divisible"),
        ({"max_length": 64, "context_length": 32}, "context_length"),
        ({"labels": ["a", "a"]}, "duplicates"),
        ({"padding_side": "middle"}, "padding_side"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_invalid_values_are_one_line_config_errors(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(values, source="flags")
    message = str(info.value)
    assert needle in message and message.startswith("flags: invalid configuration")
    assert "\n" not in message


def test_warmup_fraction_or_steps() -> None:
    assert RunConfig(warmup=0.1).warmup_steps(200) == 20
    assert RunConfig(warmup=15).warmup_steps(200) == 15
    assert RunConfig(warmup=0).warmup_steps(200) == 0
