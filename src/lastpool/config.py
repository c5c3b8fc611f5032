"""Every setting, typed: ``RunConfig`` (training, read from YAML and overridden by CLI flags) and
``ServeConfig`` (the server), with their defaults, bounds and descriptions, and the vocabularies
settings take (``PoolingName``).

Flat on purpose: every field has exactly one CLI flag of the same name (``max_length`` is
``--max-length``), so "every field a flag can override" holds by construction. The resolved config is
saved with each run. It imports no torch, so the command line builds its help from it quickly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lastpool.errors import ConfigError
from lastpool.recipes import default_mode, recipe

AUTO = "auto"
MIDDLE = "middle"  # --layer middle: the block at half the depth
PoolingName = Literal["last", "mean", "max", "first"]  # models/pooling.py implements each
# The dtype a model's weights run in: "bf16" is bf16 weights (in training, with float32 master copies).
Precision = Literal["fp32", "bf16"]
POOLING_NAMES: tuple[str, ...] = get_args(PoolingName)
RECORDS = frozenset({"from_recipe"})  # fields that record how a config was resolved: no flag sets them


class RunConfig(BaseModel):
    """Everything that defines a training run.

    Settings left unset come from the recipe for the run's model kind and mode (``lastpool.recipes``);
    ``from_recipe`` lists those, so a saved config says which values the user chose and which the table
    did. The field defaults below apply to the settings no recipe row names.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # data
    data: str | None = Field(default=None, description="training data file; the built-in demo set if unset")
    eval_data: str | None = Field(default=None, description="separate validation file (else a stratified split)")
    text_col: str | None = Field(default=None, description="text column (auto: text, sentence, ...)")
    label_col: str | None = Field(default=None, description="label column (auto: label, sentiment, ...)")
    labels: list[str] | None = Field(default=None, description="label order, e.g. negative,neutral,positive")
    label_names: dict[str, str] | None = Field(
        default=None, description="words for labels that are codes, e.g. 0=negative,1=positive (or a file)")
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="validation share of --data")

    # tokenizer
    tokenizer: str = Field(
        default="auto", description="auto (the model's own; a trained BPE for scratch), bpe, or a HF tokenizer"
    )
    vocab_size: int = Field(default=2000, ge=300, description="BPE vocabulary size")
    lowercase: bool = Field(default=False, description="BPE: fold case before tokenizing")
    max_length: int = Field(default=64, ge=2, description="truncate texts to this many tokens")
    padding_side: Literal["right", "left"] = Field(default="right", description="where batches are padded")
    prompt: str = Field(default="{text}",
                        description="template around each text, e.g. '{text}\\nSentiment:', or auto")

    # model
    model: str = Field(default="scratch", description="scratch, or a pretrained decoder: hub id, folder, .gguf")
    trust_remote_code: bool = Field(default=False, description="allow a hub model's own Python code")
    grad_checkpointing: bool = Field(default=False, description="recompute activations to save memory")
    compile: bool = Field(default=False, description="torch.compile each decoder block for training")
    layer: Annotated[int, Field(ge=1)] | Literal["auto", "middle"] | None = Field(
        default=None, description="pretrained: pool the hidden states after this block (later ones dropped), "
                                  "auto (chosen by a linear probe) or middle (half the model's depth)")
    final_norm: bool = Field(default=False, description="with --layer N or middle: keep the final norm after "
                             "that block (a model of N blocks, which export --format hf accepts)")
    mode: str = Field(default="auto", pattern=r"^(auto|full|lora|probe|zeroshot|top-[1-9][0-9]*)$",
                      description="full, lora, probe (frozen backbone, head on cached features), top-N or zeroshot; "
                                  "auto: the model kind's default mode")
    lora_r: int = Field(default=8, ge=1, description="LoRA rank")
    lora_alpha: int = Field(default=16, ge=1, description="LoRA scaling numerator")
    # 0, as in peft: on a CPU the random masks of 0.05 cost a third of a LoRA step (210 adapted projections
    # of SmolLM2, one mask each per step) for no accuracy measured on Financial PhraseBank (docs/BENCHMARKS.md).
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    merge: bool = Field(default=False, description="LoRA: save merged full weights instead of the adapter")
    precision: Literal["auto", "fp32", "bf16"] = Field(default="auto", description="auto, fp32 or bf16 autocast")
    d_model: int = Field(default=128, gt=0)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=4, ge=1)
    d_ff: int = Field(default=512, gt=0)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    context_length: int | None = Field(default=None, gt=0, description="position table size (default max_length)")
    pooling: PoolingName = Field(default="last", description="last, mean, max or first")
    head_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    head_bias: bool = Field(default=True, description="a bias in the linear head (off: exportable to transformers)")
    head_init: Literal["random", "labels"] = Field(
        default="random", description="random, or labels: head rows start from the LM's rows for the label words")
    token_dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="training: delete tokens at this rate")

    # optimisation
    epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=10, description="epochs, or auto: from the data size and the number of labels")
    patience: int | None = Field(default=None, ge=1,
                                 description="stop after this many epochs without a better validation macro-F1")
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.1, ge=0.0)
    warmup: float = Field(default=0.05, ge=0.0, description="warmup: a fraction of all steps (<1) or steps (>=1)")
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps")
    grad_clip: float = Field(default=1.0, ge=0.0, description="max gradient norm (0: off)")
    grad_accum: int = Field(default=1, ge=1, description="gradient accumulation steps")
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=1.0)
    calibrate: bool = Field(default=True, description="fit a softmax temperature on the validation split")
    baseline: bool = Field(default=True, description="also score a bag-of-words (TF-IDF + linear) baseline")
    fuse_baseline: bool = Field(
        default=True, description="add the baseline's scores to the model's, at a weight chosen on the "
        "validation split (0: the model alone)")
    seed: int = Field(default=0, ge=0)

    # output and run control (these may differ when a run is resumed)
    out: str | None = Field(default=None, description="run directory (default runs/<timestamp>)")
    save_every: int | None = Field(default=None, ge=1,
                                   description="checkpoint every N optimizer steps (always: each epoch end, Ctrl-C)")
    keep_checkpoints: int = Field(default=1, ge=0,
                                  description="how many of the newest checkpoints to keep (0: write none)")
    num_processes: int = Field(default=1, ge=1, description="train with N processes (DDP; gloo on CPU)")
    sharding: Literal["none", "fsdp"] = Field(default="none",
                                              description="with several processes: none (DDP) or fsdp")

    from_recipe: list[str] = Field(default_factory=list,
                                   description="settings that came from the recipe table, not from the user")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_recipe(cls, values: Any) -> Any:
        """Unset recipe settings take the value of the (model kind, mode) row."""
        if not isinstance(values, dict):
            return values
        model = str(values.get("model", "scratch"))
        if values.get("baseline") is False and "fuse_baseline" not in values:  # nothing to fuse with
            values = {**values, "fuse_baseline": False,
                      "from_recipe": sorted({*values.get("from_recipe", []), "fuse_baseline"})}
        if values.get("mode", AUTO) == AUTO:  # the mode first: the row depends on it
            values = {**values, "mode": default_mode(model),
                      "from_recipe": sorted({*values.get("from_recipe", []), "mode"})}
        row = recipe(model, str(values["mode"]))
        filled = [name for name in row if name not in values]
        if not filled:
            return values
        earlier = [name for name in values.get("from_recipe", []) if name not in filled]
        return {**values, **{name: row[name] for name in filled}, "from_recipe": sorted(earlier + filled)}

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.context_length is not None and self.context_length < self.max_length:
            raise ValueError(f"context_length ({self.context_length}) is below max_length ({self.max_length})")
        if self.prompt != AUTO and self.prompt.count("{text}") != 1:
            raise ValueError(f"prompt must contain {{text}} exactly once, or be auto (got {self.prompt!r})")
        if self.mode in ("probe", "zeroshot") and not self.head_bias:
            raise ValueError(f"--mode {self.mode} needs the head bias (it holds the feature standardization "
                             "or the calibration)")
        if self.head_init == "labels" and self.mode == "probe":
            raise ValueError("head_init labels does not apply to mode probe (its head reads standardized "
                             "features, not the LM's hidden states)")
        if self.final_norm and self.layer == AUTO:
            raise ValueError("final_norm works with --layer N or middle, not auto (the layer search scores the "
                             "blocks' raw output)")
        if self.fuse_baseline and not self.baseline:
            raise ValueError("fuse_baseline needs the baseline: drop --no-baseline, or add --no-fuse-baseline")
        if self.fuse_baseline and self.mode == "zeroshot" and "fuse_baseline" in self.model_fields_set:
            raise ValueError("mode zeroshot trains nothing, so it cannot fuse a trained bag-of-words model: "
                             "drop --fuse-baseline")
        if self.mode == "zeroshot" and self.layer is not None:
            raise ValueError("mode zeroshot reads the LM's own output after its last block: drop --layer")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError("labels contain duplicates")
        if self.save_every is not None and self.keep_checkpoints == 0:
            raise ValueError("save_every needs keep_checkpoints of at least 1 (0 writes no checkpoints)")
        if self.compile and self.num_processes > 1:
            raise ValueError("compile runs in one process for now (not with num_processes > 1)")
        if self.compile and self.grad_checkpointing:
            raise ValueError("compile and grad_checkpointing do not go together")
        if self.batch_size < self.num_processes:
            raise ValueError(f"batch_size ({self.batch_size}) is the global batch: it must be at least "
                             f"num_processes ({self.num_processes})")
        return self

    def warmup_steps(self, total_steps: int) -> int:
        return int(self.warmup) if self.warmup >= 1 else int(round(self.warmup * total_steps))


def without_recipe(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` less the settings that came from the recipe table (they are resolved again, for what may
    now be another model or mode)."""
    table = set(values.get("from_recipe") or [])
    return {name: value for name, value in values.items() if name not in table and name != "from_recipe"}


def _first_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def make_config(values: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate ``values`` into a RunConfig; errors become one ConfigError line naming the fields."""
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration: {_first_error(exc)}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict (not yet validated)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{p}: a config file must be a mapping of field: value")
    unknown = sorted(set(values) - set(RunConfig.model_fields))
    if unknown:
        raise ConfigError(f"{p}: unknown field(s) {', '.join(unknown)}")
    return values


def resolve_config(config_file: str | None, overrides: dict[str, Any],
                   base: dict[str, Any] | None = None) -> RunConfig:
    """Defaults < ``base`` < YAML file < CLI flags (flags given as None are not set and do not override)."""
    values: dict[str, Any] = without_recipe(base or {})
    values.update(without_recipe(load_yaml(config_file)) if config_file else {})
    values.update({key: value for key, value in overrides.items() if value is not None})
    return make_config(values, source=config_file or "flags")


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]  # uvicorn's


class ServeConfig(BaseModel):
    """The server's settings: ``lastpool serve``'s flags (``max_batch`` is ``--max-batch``; their help is
    built from these fields), the arguments of ``serving.create_app`` and ``serving.serve``."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="address to listen on; 0.0.0.0 exposes the server to the "
                                                       "network")
    port: int = Field(default=8000, ge=0, le=65535,
                      description="TCP port; 0 = any free port (the line printed on start names it)")
    max_batch: int = Field(default=64, ge=1, description="most texts in one request (413 beyond)")
    max_body_bytes: int = Field(default=1_000_000, ge=1, description="largest request body in bytes (413 beyond)")
    api_key: str | None = Field(default=None, description="require 'Authorization: Bearer KEY' on /v1/*")
    batch_wait_ms: float = Field(default=5.0, ge=0.0, allow_inf_nan=False,
                                 description="micro-batching: how long the first request of a batch waits for others")
    max_batch_tokens: int = Field(default=4096, ge=1, description="micro-batching: token budget of one model call")
    max_batch_texts: int = Field(default=256, ge=1, description="micro-batching: most texts in one model call")
    micro_batching: bool = Field(default=True, description="run concurrent requests' texts in one model call")
    log_level: LogLevel = Field(
        default="info", description="critical, error, warning, info (with access log) or debug")
    timeout_graceful_shutdown: int = Field(default=30, ge=0, description="seconds to answer requests in flight "
                                                                         "on SIGTERM before stopping")

    @field_validator("api_key")
    @classmethod
    def _not_blank(cls, key: str | None) -> str | None:
        if key is not None and not key.strip():
            raise ValueError("the API key is empty")
        return key

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, level: Any) -> Any:
        return level.lower() if isinstance(level, str) else level


def serve_config(values: dict[str, Any], flags: bool = False, base: ServeConfig | None = None) -> ServeConfig:
    """Validate server settings (``values`` over the ones ``base`` set); errors become one ConfigError line
    naming the setting (as its ``--flag`` when ``flags``)."""
    try:
        return ServeConfig.model_validate({**(base.model_dump(exclude_unset=True) if base else {}), **values})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "settings"
        where = "--" + name.replace("_", "-") if flags else name
        if flags and name == "api_key":
            where += " (or LASTPOOL_API_KEY)"
        got = "" if name == "api_key" else f" (got {err.get('input')!r})"  # never echo a secret
        raise ConfigError(f"invalid server setting {where}: {err['msg']}{got}") from None
