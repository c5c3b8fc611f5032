"""Every setting, typed: ``RunConfig`` (training, read from YAML and overridden by CLI flags) and
``ServeConfig`` (the server), with their defaults, bounds and descriptions, and the vocabularies
settings take (``PoolingName``).

Flat on purpose: every field has exactly one CLI flag of the same name (``max_length`` is
``--max-length``), so "every field a flag can override" holds by construction. Each field also carries
its flag (``flag``: the --help panel, the default in words, the README's longer text), so that
``lastpool train``'s options and the README's option table are built from the field, not written again.
The resolved config is saved with each run. It imports no torch or typer, so the command line builds its
help from it quickly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo

from lastpool.errors import ConfigError
from lastpool.recipes import RECIPE_FIELDS, default_mode, recipe

AUTO = "auto"
DEFAULT_PAIR_TEMPLATE = "{text}\n{text_pair}"
MIDDLE = "middle"  # --layer middle: the block at half the depth (the same as --layer 1/2)
DEPTH_SHARE = r"^[1-9][0-9]*/[1-9][0-9]*$"  # --layer P/Q: the block at P/Q of the depth
DepthShare = Annotated[str, Field(pattern=DEPTH_SHARE)]
PoolingName = Literal["last", "mean", "max", "first"]  # models/pooling.py implements each
# The dtype a model's weights run in: "bf16" is bf16 weights (in training, with float32 master copies).
Precision = Literal["fp32", "bf16"]
POOLING_NAMES: tuple[str, ...] = get_args(PoolingName)
RECORDS = frozenset({"from_recipe"})  # fields that record how a config was resolved: no flag sets them

# The panels of `lastpool train --help`, in the order they are shown; every flag names one (``flag``).
PANELS = ("Data", "Tokenizer", "Model", "Optimisation", "Output", "Checkpoints and processes", "Tracking")
DATA, TOKENIZER, MODEL, OPTIMISATION, OUTPUT, RUN, TRACKING = PANELS
TRACKERS = ("tensorboard", "mlflow")  # the backends --report-to names (lastpool/tracking)
RECIPE = "recipe"  # a default that the recipe table fills in (``lastpool.recipes``)


def flag(panel: str, *, shown: str | None = None, metavar: str | None = None, doc: str | None = None) -> JsonDict:
    """A field's command-line flag, for ``Field(json_schema_extra=...)``: its --help panel; ``shown``: the
    default in words where the field's own default would mislead (it is unset until resolved); ``metavar``:
    the placeholder after the flag; ``doc``: the README's longer explanation where --help's line (the field's
    description) leaves out what a reader of the reference wants."""
    spec: JsonDict = {"panel": panel}
    spec.update({key: value for key, value in (("shown", shown), ("metavar", metavar), ("doc", doc))
                 if value is not None})
    return {"flag": spec}


class RunConfig(BaseModel):
    """Everything that defines a training run.

    Settings left unset come from the recipe for the run's model kind and mode (``lastpool.recipes``);
    ``from_recipe`` lists those, so a saved config says which values the user chose and which the table
    did. The field defaults below apply to the settings no recipe row names.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # Each setting's description is its --help line (the default is added to it: "[0.1]", or "(recipe
    # default)" for the settings the recipe table fills); ``flag`` places it (see ``flag_fields``).

    # data
    data: str | None = Field(default=None, description="labelled data: csv, tsv, jsonl, parquet or sentence@label .txt",
                             json_schema_extra=flag(DATA, shown="the built-in demo set", metavar="FILE"))
    eval_data: str | None = Field(default=None, description="separate validation file (default: split --data)",
                                  json_schema_extra=flag(DATA, metavar="FILE"))
    text_col: str | None = Field(default=None, description="text column (auto-detected: text, sentence, ...)",
                                 json_schema_extra=flag(DATA))
    label_col: str | None = Field(default=None, description="label column (auto-detected: label, ...)",
                                  json_schema_extra=flag(DATA))
    text_pair_col: str | None = Field(
        default=None, description="the second text of a pair (paraphrase, similarity, entailment)",
        json_schema_extra=flag(DATA, doc="the column of each row's second text, for tasks on text pairs (paraphrase, "
                               "similarity, entailment); the two are joined by `--pair-template`"))
    task: Literal["auto", "single", "multilabel", "regression"] = Field(
        default="auto", description="single (one label per text), multilabel (any number) or regression (a number)",
        json_schema_extra=flag(DATA, shown="auto: single, or what the labels make unambiguous",
                               doc="`single` (one label per text), `multilabel` (any number of labels per text: "
                               "a sigmoid per label, per-label thresholds chosen on the validation split) or "
                               "`regression` (a number per text: mean squared error on standardised targets). "
                               "`auto`: multilabel with `--label-sep`/`--label-cols` or list-valued labels, "
                               "regression when every label is a number and some are not whole numbers, else "
                               "single; the CLI says which"))
    label_sep: str | None = Field(
        default=None, description="multi-label: the separator of the labels in one label cell, e.g. ','",
        json_schema_extra=flag(DATA, metavar="SEP"))
    label_cols: list[str] | None = Field(
        default=None, description="multi-label: 0/1 columns, one per label, comma separated",
        json_schema_extra=flag(DATA, metavar="a,b,c"))
    labels: list[str] | None = Field(default=None, description="label order, comma separated (default: sorted)",
                                     json_schema_extra=flag(DATA, metavar="a,b,c"))
    label_names: dict[str, str] | list[str] | None = Field(
        default=None, description="names for labels that are codes: a file of one name per line (label ids 0, 1, "
        "... by line), or words the LM reads: 0=negative,1=positive or a file of label=words lines",
        json_schema_extra=flag(DATA, doc="names for labels that are codes. A file of one name per line names the "
                               "label ids 0, 1, 2, ... (as GoEmotions' `labels.txt`): the model's labels become the "
                               "names, in the file's order, and a label id with no name is an error. "
                               "`0=negative,1=positive` or a file of `label=words` lines gives the words a "
                               "label-word head or zero-shot reads for labels that stay codes; otherwise a label "
                               'is read as words (`PlayMusic` is "play music")'))
    header: bool = Field(
        default=True, description="the file's first row names its columns; --no-header: columns are named by "
        "position (--text-col 1), and rows may differ in length", json_schema_extra=flag(DATA))
    sep: str | None = Field(
        default=None, description="the field separator of a delimited file (tab, ',', ';', '|')",
        json_schema_extra=flag(DATA, shown="by extension: tab for .tsv, else ','", metavar="SEP"))
    quoting: Literal["auto", "csv", "none"] = Field(
        default="auto", description="csv (quoted fields) or none (quotes are literal); auto: csv, except a "
        "tab-separated file whose quotes cannot be CSV quoting", json_schema_extra=flag(DATA))
    val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0, description="stratified validation share",
                                json_schema_extra=flag(DATA))

    # tokenizer
    tokenizer: str = Field(
        default="auto", description="auto (the model's own; a trained BPE for scratch), bpe, or a HF tokenizer "
        "folder, .gguf file or hub id",
        json_schema_extra=flag(TOKENIZER, doc="`auto`: the model's own tokenizer, or for `--model scratch` a "
                               "byte-level BPE trained on the training texts (`bpe`); or a HF tokenizer folder, "
                               "`.gguf` file or hub id"))
    vocab_size: int = Field(default=2000, ge=300, description="BPE vocabulary size", json_schema_extra=flag(TOKENIZER))
    lowercase: bool = Field(default=False, description="BPE: fold case", json_schema_extra=flag(
        TOKENIZER, doc="BPE: fold case before tokenizing (saved with the tokenizer)"))
    max_length: int = Field(default=64, ge=2, description="truncate texts to this many tokens",
                            json_schema_extra=flag(TOKENIZER))
    padding_side: Literal["right", "left"] = Field(default="right", description="right or left", json_schema_extra=flag(
        TOKENIZER, doc="`right` or `left` (predictions are the same either way)"))
    prompt: str = Field(
        default="{text}", description="template around each text, with {text} once, e.g. $'{text}\\nSentiment:' "
        "(kept whole when a text is cut), or auto: a question that names the label set",
        json_schema_extra=flag(TOKENIZER, doc="template around each text, holding `{text}` once, e.g. "
                               "`$'{text}\\nSentiment:'`; saved with the model and applied at prediction; a long text "
                               "is cut, never the prompt. `auto`: `$'{text}\\nThis text is about'` (the bare text "
                               "when that would take over half of `--max-length`)"))
    pair_template: str = Field(
        default=DEFAULT_PAIR_TEMPLATE, description="text pairs: how the two texts are joined, with {text} and "
        "{text_pair} once each (it takes the place of {text} in --prompt)",
        json_schema_extra=flag(TOKENIZER, shown="$'{text}\\n{text_pair}'",
                               doc="with `--text-pair-col`: how the two texts of a pair are joined, holding "
                               "`{text}` and `{text_pair}` once each; it takes the place of `{text}` in `--prompt`. "
                               "The default puts each on its own line, so the decoder reads where one ends. A pair "
                               "too long for `--max-length` is cut in the longer text, never in the template"))

    # model
    model: str = Field(
        default="scratch", description="scratch, or a pretrained decoder: hub id, local folder or .gguf file",
        json_schema_extra=flag(MODEL, doc="`scratch` (a GPT-style decoder trained from scratch) or a pretrained "
                               "decoder: a local transformers folder (safetensors), a `.gguf` file, or a hub id "
                               "(needs network)"))
    trust_remote_code: bool = Field(default=False, description="run a hub model's own code",
                                    json_schema_extra=flag(MODEL))
    grad_checkpointing: bool = Field(default=False, description="recompute activations to save memory",
                                     json_schema_extra=flag(MODEL))
    compile: bool = Field(
        default=False, description="torch.compile each decoder block for training: faster steps on CPU after a "
        "one-off compile (cached on disk); needs a C++ compiler",
        json_schema_extra=flag(OPTIMISATION, doc="`torch.compile` each decoder block for training (one compiled "
                               "graph shared by the blocks, dynamic sequence lengths; the last block, whose MLP runs "
                               "at the pooled token only, stays eager; validation and the saved model stay eager): "
                               "faster steps on CPU, after a one-off compile of ~20 s on 2 cores (~5 s once torch's "
                               "on-disk cache holds it), so it pays from an epoch or so of a 135M model on (about "
                               "1.15x per step for full and LoRA fine-tunes of SmolLM2-135M); needs a C++ compiler; "
                               "one process only, not with `--grad-checkpointing`"))
    layer: Annotated[int, Field(ge=1)] | Literal["auto", "middle"] | DepthShare | None = Field(
        default=None, description="pretrained: pool the hidden states after block N; later blocks and the final norm "
        "are dropped; auto: the block a cross-validated linear probe scores best on the training split; P/Q: the "
        "block at that share of the model's depth (rounded up); middle: 1/2",
        json_schema_extra=flag(MODEL, metavar="N", doc="pretrained models: pool the hidden states after block N (no "
                               "final norm); blocks after N are dropped from the model. `auto`: one pass over the "
                               "texts pools after every block, a cross-validated linear probe (ridge, scikit-learn) "
                               "scores each block on the training split only, and the best block is used; the scores "
                               "go into `metrics.json` (`layer_scores`) and a plot in the report. `P/Q` (e.g. `2/3`): "
                               "the block at that share of the model's depth, rounded up (block 20 of 30); "
                               "`middle`: `1/2`"))
    final_norm: bool = Field(
        default=False, description="with --layer N, P/Q or middle: keep the final norm after that block, so the "
        "model is the family with N blocks (export --format hf accepts it)",
        json_schema_extra=flag(MODEL, doc="with `--layer N`, `P/Q` or `middle`: keep the final norm after block N, so "
                               "the model is the family with N blocks (`export --format hf` accepts it); off: the raw "
                               "hidden states after block N"))
    mode: str = Field(
        default="auto", pattern=r"^(auto|full|lora|probe|zeroshot|top-[1-9][0-9]*)$",
        description="full, lora, probe (frozen backbone: a head on cached pooled features), top-N (train the last N "
        "blocks; the frozen ones run once) or zeroshot (no training: the LM's scores for the label words, calibrated)",
        json_schema_extra=flag(
            OPTIMISATION,
            shown="auto: full for scratch, top-4 for a pretrained model (top-8 to layer 2/3 on text pairs)",
            doc="`full` fine-tune; `zeroshot`: no training, the head holds the LM's output rows for the label words "
            "and a contextual-calibration bias (needs label names that are words, or `--label-names`); `lora`: PEFT "
            "LoRA adapters plus a fully trained head (the model folder stores the adapter, the head and the base "
            "model's source and sha256; loading needs the base and says so when it is missing); `probe`: frozen "
            "backbone, pooled features computed once and cached under `$LASTPOOL_CACHE/features` (keyed by backbone, "
            "token ids, pooling, padding side, precision), only the head trained; `top-N`: train the last N blocks, "
            "the final norm and the head; the frozen blocks below them run once over the training and validation "
            "texts and their hidden states are kept in memory, so each epoch runs only the top N blocks (checked to "
            "reproduce the model on a few texts first; otherwise, and with token dropout or several processes, the "
            "frozen blocks run in every epoch, and the CLI says why)"))
    lora_r: int = Field(default=8, ge=1, description="LoRA rank", json_schema_extra=flag(
        OPTIMISATION, doc="LoRA rank, for `--mode lora` (targets: the attention and MLP projections of the model "
        "family)"))
    lora_alpha: int = Field(default=16, ge=1, description="LoRA alpha", json_schema_extra=flag(OPTIMISATION))
    # 0, as in peft: on a CPU a random mask per adapted projection per step costs a large share of a LoRA
    # step, for no accuracy gain measured on Financial PhraseBank (docs/BENCHMARKS.md).
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="LoRA dropout",
                                json_schema_extra=flag(OPTIMISATION))
    merge: bool = Field(default=False, description="LoRA: save merged weights, not the adapter",
                        json_schema_extra=flag(OPTIMISATION))
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="the dtype the weights run in: fp32, or bf16 weights (with float32 master "
        "copies while training)",
        json_schema_extra=flag(
            OPTIMISATION, shown="auto: bf16 for pretrained models where fast",
            doc="the dtype the weights run in: `fp32`, or `bf16` weights (training keeps float32 master copies, so "
            "updates accumulate in float32; prediction runs on a bf16 copy); `auto`: bf16 for pretrained backbones "
            "on hardware with fast bf16 matmuls, fp32 for `scratch`"))
    d_model: int = Field(default=128, gt=0, description="hidden size",
                         json_schema_extra=flag(MODEL, doc="hidden size of the from-scratch decoder"))
    n_layers: int = Field(default=2, ge=1, description="decoder blocks",
                          json_schema_extra=flag(MODEL, doc="blocks of the from-scratch decoder"))
    n_heads: int = Field(default=4, ge=1, description="attention heads",
                         json_schema_extra=flag(MODEL, doc="attention heads of the from-scratch decoder"))
    d_ff: int = Field(default=512, gt=0, description="MLP width",
                      json_schema_extra=flag(MODEL, doc="MLP width of the from-scratch decoder"))
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0, description="dropout in the decoder",
                           json_schema_extra=flag(MODEL))
    context_length: int | None = Field(default=None, gt=0, description="position table size",
                                       json_schema_extra=flag(MODEL, shown="max length"))
    pooling: PoolingName = Field(default="last", description="last, mean, max or first", json_schema_extra=flag(
        MODEL, doc="`last`, `mean`, `max` or `first` (all from the attention mask)"))
    head_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout before the head",
                                json_schema_extra=flag(MODEL))
    head_bias: bool = Field(default=True, description="a bias in the linear head; off makes a pretrained model "
                            "exportable to transformers", json_schema_extra=flag(MODEL))
    head_init: Literal["random", "labels"] = Field(
        default="random", description="random, or labels: the head's rows start from the LM's output rows for the "
        "label words",
        json_schema_extra=flag(MODEL, shown="random", doc="`labels`: the head's rows start from the LM's output "
                               "embedding rows of the label words (mean over sub-tokens), so training starts where "
                               "the LM already points (not with `--mode probe`)"))
    token_dropout: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="training augmentation: delete this share of tokens",
        json_schema_extra=flag(MODEL, doc="training augmentation: delete this share of tokens (never the last) per "
                               "batch"))

    # optimisation
    epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=10, description="epochs, or auto: from the data size and the number of labels",
        json_schema_extra=flag(OPTIMISATION, doc="epochs (the best epoch by validation macro-F1 is kept); `auto`: "
                               "enough passes that each class is seen about 500 times, at least 2 (and ~200 "
                               "optimizer steps), at most 20"))
    patience: int | None = Field(
        default=None, ge=1, description="stop after N epochs without a better validation macro-F1 (the best epoch is "
        "kept)", json_schema_extra=flag(OPTIMISATION, metavar="N"))
    batch_size: int = Field(default=32, ge=1, description="batch size", json_schema_extra=flag(OPTIMISATION))
    lr: float = Field(default=1e-3, gt=0.0, description="peak learning rate", json_schema_extra=flag(
        OPTIMISATION, doc="peak learning rate (AdamW, linear warmup then cosine decay)"))
    weight_decay: float = Field(default=0.1, ge=0.0, description="AdamW weight decay", json_schema_extra=flag(
        OPTIMISATION, doc="AdamW weight decay (matrices only)"))
    warmup: float = Field(default=0.05, ge=0.0, description="warmup: fraction of steps (<1) or steps (>=1)",
                          json_schema_extra=flag(OPTIMISATION))
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many optimizer steps",
                                  json_schema_extra=flag(OPTIMISATION))
    grad_clip: float = Field(default=1.0, ge=0.0, description="max gradient norm, 0 = off",
                             json_schema_extra=flag(OPTIMISATION))
    grad_accum: int = Field(default=1, ge=1, description="gradient accumulation steps",
                            json_schema_extra=flag(OPTIMISATION))
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=1.0, description="cross-entropy label smoothing",
                                   json_schema_extra=flag(OPTIMISATION, doc="cross-entropy label smoothing "
                                                          "(single-label)"))
    class_weight: Literal["none", "balanced"] = Field(
        default="none", description="balanced: weigh each class (single-label) or each label's positives "
        "(multi-label) against its frequency in the training split",
        json_schema_extra=flag(OPTIMISATION, doc="`balanced`: single-label, each class's loss weighed by n / "
                               "(classes x its count), as scikit-learn's; multi-label, each label's positive "
                               "rows by negatives / positives (BCE's `pos_weight`)"))
    calibrate: bool = Field(
        default=True, description="temperature scaling fitted on the validation split after training",
        json_schema_extra=flag(OPTIMISATION, doc="fit a softmax temperature on the validation split after training "
                               "(saved with the model, used by `predict_proba`; ECE before and after in "
                               "`metrics.json`)"))
    baseline: bool = Field(
        default=True, description="also train a bag-of-words baseline (TF-IDF + linear SVM) on the same split and "
        "report it beside the model", json_schema_extra=flag(OPTIMISATION))
    fuse_baseline: bool = Field(
        default=True, description="add the bag-of-words baseline's scores to the model's, at a weight chosen on the "
        "validation split (0 keeps the model alone)",
        json_schema_extra=flag(OPTIMISATION, shown="on, except zeroshot", doc="add the baseline's scores to the "
                               "model's, with a share chosen on the validation split by log loss (0: the model "
                               "alone); saved as `bag_of_words.json` + `bag_of_words.safetensors` in the model "
                               "folder, never pickled. Exports hold the language model alone"))
    seed: int = Field(default=0, ge=0, description="random seed", json_schema_extra=flag(
        OPTIMISATION, doc="seed for the split, initialisation, batches and dropout"))

    # output and run control (these may differ when a run is resumed)
    out: str | None = Field(default=None, description="run directory", json_schema_extra=flag(
        OUTPUT, shown="runs/<timestamp>", metavar="DIR", doc="run directory (must not exist or be empty)"))
    save_every: int | None = Field(
        default=None, ge=1, description="also checkpoint every N optimizer steps (checkpoints are always saved at "
        "each epoch end and on Ctrl-C/SIGTERM)", json_schema_extra=flag(RUN, shown="off", metavar="N"))
    keep_checkpoints: int = Field(
        default=1, ge=0, description="keep the newest K checkpoints while training; 0 writes none (no resume, "
        "Ctrl-C just stops)",
        json_schema_extra=flag(RUN, metavar="K", doc="keep the newest K checkpoints while training; 0 writes none "
                               "(for runs too big to checkpoint: no resume, Ctrl-C just stops)"))
    num_processes: int = Field(
        default=1, ge=1, description="train with N processes (DDP; gloo on CPU, NCCL on GPUs); --batch-size stays "
        "the global batch", json_schema_extra=flag(RUN, metavar="N"))
    sharding: Literal["none", "fsdp"] = Field(
        default="none", description="with several processes: none (DDP: a full copy per process) or fsdp "
        "(parameters, gradients and optimizer state sharded)",
        json_schema_extra=flag(RUN, doc="with several processes: `none` (DDP: a full copy per process) or `fsdp` "
                               "(parameters, gradients and optimizer state sharded; see `configs/fsdp-*.yaml`)"))

    # experiment tracking (what is logged where; a resumed run may change these too)
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="log the run to tensorboard, mlflow or both (comma separated); none",
        json_schema_extra=flag(TRACKING, shown="none", metavar="BACKENDS", doc=(
            "log the run to `tensorboard` (event files in the run directory's `tensorboard/`), `mlflow` (a run "
            "in `--tracking-uri`) or both, comma separated: the resolved config, the training loss every "
            "`--log-every` steps, every validation score per epoch, the final scores and the run's files (for "
            "MLflow also the model, as a pyfunc model); `none` (the default) logs nowhere. Needs "
            "`pip install lastpool[tracking]`")))
    log_every: int = Field(default=50, ge=1, description="with --report-to: log the training loss every N "
                           "optimizer steps", json_schema_extra=flag(TRACKING, metavar="N"))
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking store: a path, file:, sqlite:/// or http(s) URL",
        json_schema_extra=flag(TRACKING, shown="$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db", metavar="URI"))
    experiment: str = Field(default="lastpool", min_length=1, description="MLflow experiment the run goes in",
                            json_schema_extra=flag(TRACKING, metavar="NAME"))
    run_name: str | None = Field(default=None, min_length=1, description="the tracked run's name",
                                 json_schema_extra=flag(TRACKING, shown="the run directory's name", metavar="NAME"))

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
        pairs = values.get("text_pair_col") is not None
        if values.get("mode", AUTO) == AUTO:  # the mode first: the row depends on it
            values = {**values, "mode": default_mode(model, pairs=pairs),
                      "from_recipe": sorted({*values.get("from_recipe", []), "mode"})}
        row = recipe(model, str(values["mode"]), pairs=pairs)
        filled = [name for name in row if name not in values]
        if not filled:
            return values
        earlier = [name for name in values.get("from_recipe", []) if name not in filled]
        return {**values, **{name: row[name] for name in filled}, "from_recipe": sorted(earlier + filled)}

    @field_validator("report_to", mode="before")
    @classmethod
    def _backends(cls, value: Any) -> Any:
        """``tensorboard,mlflow`` or a list; ``none`` alone is no backend."""
        names = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
        if not isinstance(names, list):
            return value
        names = [n for n in names if n != ""]
        if names == ["none"]:
            return []
        unknown = [n for n in names if n not in TRACKERS]
        if unknown:
            raise ValueError(f"unknown tracking backend {unknown[0]!r}: report_to takes {', '.join(TRACKERS)} "
                             "(comma separated) or none")
        if len(set(names)) != len(names):
            raise ValueError("report_to names a backend twice")
        return names

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.context_length is not None and self.context_length < self.max_length:
            raise ValueError(f"context_length ({self.context_length}) is below max_length ({self.max_length})")
        if self.prompt != AUTO and self.prompt.count("{text}") != 1:
            raise ValueError(f"prompt must contain {{text}} exactly once, or be auto (got {self.prompt!r})")
        if self.pair_template.count("{text}") != 1 or self.pair_template.count("{text_pair}") != 1:
            raise ValueError("pair_template must contain {text} and {text_pair} exactly once each "
                             f"(got {self.pair_template!r})")
        if "{text_pair}" in self.prompt:
            raise ValueError("prompt holds {text} only; the second text's place is in pair_template")
        if self.label_cols is not None and (self.label_sep is not None or self.label_col is not None):
            raise ValueError("label_cols reads 0/1 columns: it does not go with label_col or label_sep")
        if self.task in ("single", "regression") and (self.label_sep is not None or self.label_cols is not None):
            raise ValueError(f"label_sep and label_cols give several labels per text: task {self.task} has one "
                             "(use task multilabel)")
        if self.task == "regression" and self.class_weight != "none":
            raise ValueError("class_weight applies to single- and multi-label tasks, not regression")
        if self.task in ("multilabel", "regression") and self.mode == "zeroshot":
            raise ValueError(f"mode zeroshot picks one label word; it does not do task {self.task}")
        if self.task == "regression" and self.head_init == "labels":
            raise ValueError("head_init labels starts the head from label words; a regression has none")
        if self.mode in ("probe", "zeroshot") and not self.head_bias:
            raise ValueError(f"--mode {self.mode} needs the head bias (it holds the feature standardization "
                             "or the calibration)")
        if self.head_init == "labels" and self.mode == "probe":
            raise ValueError("head_init labels does not apply to mode probe (its head reads standardized "
                             "features, not the LM's hidden states)")
        share = depth_share(self.layer)
        if share is not None and share > 1:
            raise ValueError(f"layer {self.layer} names a block past the last: a share of the depth is at most 1/1")
        if self.final_norm and self.layer == AUTO:
            raise ValueError("final_norm works with --layer N, P/Q or middle, not auto (the layer search scores the "
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


@dataclass(frozen=True)
class Flag:
    """A RunConfig field as its command-line flag, read from the field (``flag``): what ``lastpool train``'s
    options and the README's option table are built from."""

    name: str  # the field: max_length
    field: FieldInfo
    panel: str
    default: str | None  # in words: "0.1", "off", RECIPE; None: unset, nothing to show
    metavar: str | None
    doc: str  # the README's explanation (the description where the field gives no longer one)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def switch(self) -> bool:
        """A bool field: --x / --no-x."""
        return self.field.annotation is bool

    @property
    def help(self) -> str:
        """The --help line: the description and the default, "[0.1]" or "(recipe default)"."""
        marker = "" if self.default is None else " (recipe default)" if self.default == RECIPE else f" [{self.default}]"
        return f"{self.field.description}{marker}"


def default_words(value: Any) -> str | None:
    """A default as --help shows it: on/off for a switch, None for unset."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def flag_fields() -> Iterator[Flag]:
    """Every RunConfig field with a flag (all but RECORDS), in field order."""
    for name, field in RunConfig.model_fields.items():
        extra = field.json_schema_extra
        spec = extra.get("flag") if isinstance(extra, dict) else None
        if not isinstance(spec, dict):
            continue
        shown = spec.get("shown")
        default = str(shown) if shown is not None else RECIPE if name in RECIPE_FIELDS else default_words(field.default)
        metavar = spec.get("metavar")
        yield Flag(name, field, str(spec["panel"]), default, str(metavar) if metavar is not None else None,
                   str(spec.get("doc") or field.description))


def depth_share(layer: int | str | None) -> Fraction | None:
    """The share of the model's depth a ``--layer`` value names (``middle``: 1/2), or None where it names a
    block (a number), asks for the search (``auto``) or is unset."""
    if layer == MIDDLE:
        return Fraction(1, 2)
    if isinstance(layer, str) and re.fullmatch(DEPTH_SHARE, layer):
        return Fraction(layer)
    return None


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
    max_batch: int = Field(default=64, ge=1, description="most texts in one request (422 beyond)")
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
