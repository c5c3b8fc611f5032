"""The model-folder format: ``lastpool.json`` (what the model is) and safetensors weights, and how a
classifier is built, saved and loaded from them (LoRA adapters included).

Every command that takes a model reads a folder through ``load_model``; weights are read only from
safetensors, and a folder with pickled weights is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig

from lastpool.config import PoolingName
from lastpool.errors import ModelLoadError
from lastpool.models.backbones import (
    PICKLE_SUFFIXES,
    HFBackbone,
    backbone_from_config,
    load_backbone,
    truncate_backbone,
    truncated_config,
)
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.models.gpt import GPTBackbone, GPTConfig
from lastpool.tasks import Task, TaskName, task_for_model
from lastpool.text.tokenizers import TEXT_SLOT
from lastpool.version import __version__

SPEC_FILE = "lastpool.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


class ScratchBackboneSpec(BaseModel):
    """The from-scratch decoder: its architecture is enough to rebuild it for the saved weights."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["scratch"] = "scratch"
    config: GPTConfig


class PretrainedBackboneSpec(BaseModel):
    """A transformers base model: where it came from, and its full config to rebuild it offline.

    A full fine-tune stores every weight in the model folder, so loading needs neither the Hub nor
    the original file; ``source`` and ``sha256`` record the provenance.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["pretrained"] = "pretrained"
    source: str
    kind: Literal["hub", "folder", "gguf"]
    model_type: str
    sha256: str | None = None
    config: dict[str, Any]
    layer: int | None = Field(default=None, ge=1)  # pool after this block; later blocks and final norm dropped
    final_norm: bool = False  # with ``layer``: the final norm kept after that block (a model of ``layer`` blocks)


BackboneSpec = Annotated[ScratchBackboneSpec | PretrainedBackboneSpec, Field(discriminator="type")]


class TokenizerSpec(BaseModel):
    """Where the tokenizer came from; its files are saved beside the weights."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["bpe", "pretrained"]
    source: str | None = None
    vocab_size: int
    pad_token_id: int = Field(ge=0)


class LoraSpec(BaseModel):
    """LoRA settings, so the adapter can be rebuilt identically on the base model at load time."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(ge=1)
    alpha: int = Field(ge=1)
    dropout: float = Field(ge=0.0, lt=1.0)
    merged: bool = False


class FusionSpec(BaseModel):
    """The bag-of-words part (bag_of_words.json/.safetensors beside the weights) and the weight its margins
    are added to the LM's logits with, before the temperature (training/fusion.py)."""

    model_config = ConfigDict(extra="forbid")

    share: float = Field(gt=0.0, lt=1.0)  # the bag-of-words model's share (training/fusion.py)
    weight: float = Field(gt=0.0)  # the factor on its margins
    description: str
    features: int = Field(ge=1)
    # The temperature fitted to the LM's validation logits alone: what an export, which carries the LM
    # only, divides by.
    language_model_temperature: float = Field(default=1.0, gt=0.0)


def language_model_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` for the language model alone: no fusion, and the LM's own temperature."""
    if spec.fusion is None:
        return spec
    return spec.model_copy(update={"fusion": None, "temperature": spec.fusion.language_model_temperature})


class ModelSpec(BaseModel):
    """Contents of ``lastpool.json``: everything needed to load and use a saved classifier."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    library_version: str = __version__
    backbone: BackboneSpec
    pooling: PoolingName = "last"
    head_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    head_bias: bool = True
    task: TaskName = "single"
    labels: list[str] = Field(min_length=1)  # the outputs in logit order: classes, labels, or the target's name
    max_length: int = Field(gt=0)
    padding_side: Literal["right", "left"] = "right"
    prompt: str = TEXT_SLOT
    tokenizer: TokenizerSpec
    temperature: float = Field(default=1.0, gt=0.0)
    precision: Literal["fp32", "bf16"] = "fp32"
    mode: str = "full"
    lora: LoraSpec | None = None
    fusion: FusionSpec | None = None  # None: the LM alone
    thresholds: list[float] | None = None  # multi-label: each label's decision threshold on its probability
    temperatures: list[float] | None = None  # multi-label: each label's calibration temperature
    metrics: dict[str, Any] = Field(default_factory=dict)
    # The resolved RunConfig it was trained with (``Classifier.load`` restores it); None in older folders.
    config: dict[str, Any] | None = None

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        return labels

    @model_validator(mode="after")
    def _fits_task(self) -> ModelSpec:
        if self.task == "single" and len(self.labels) < 2:
            raise ValueError("a single-label model needs at least two labels")
        if self.task == "regression" and len(self.labels) != 1:
            raise ValueError("a regression model has one output (one name in labels)")
        for name, values in (("thresholds", self.thresholds), ("temperatures", self.temperatures)):
            if values is not None and len(values) != len(self.labels):
                raise ValueError(f"{len(values)} {name} for {len(self.labels)} labels")
        if self.temperatures is not None and not all(t > 0 for t in self.temperatures):
            raise ValueError("temperatures must be positive")
        return self

    def task_object(self) -> Task:
        """The task this model does, with its calibration and thresholds."""
        return task_for_model(self.task, self.labels, self.temperature, self.thresholds, self.temperatures)


def build_backbone(spec: ScratchBackboneSpec | PretrainedBackboneSpec) -> GPTBackbone | HFBackbone:
    """A randomly initialised backbone of the saved architecture (its weights are loaded after)."""
    if isinstance(spec, ScratchBackboneSpec):
        return GPTBackbone(spec.config)
    values = dict(spec.config)
    model_type = values.pop("model_type", spec.model_type)
    try:
        config = AutoConfig.for_model(model_type, **values)
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"unknown or unsupported model_type {model_type!r} in {SPEC_FILE} ({exc})") from None
    if spec.layer is None:
        return backbone_from_config(config)
    return truncate_backbone(backbone_from_config(truncated_config(config, spec.layer)), spec.layer,
                             keep_norm=spec.final_norm)


def build_model(spec: ModelSpec, backbone: nn.Module | None = None) -> SequenceClassifier:
    """A classifier for ``spec``: a fresh backbone unless a (pretrained) one is passed in."""
    if backbone is None:
        backbone = build_backbone(spec.backbone)
    hidden_size = int(getattr(backbone, "hidden_size"))  # noqa: B009 - both backbone types define it
    return SequenceClassifier(
        backbone,
        hidden_size=hidden_size,
        num_labels=len(spec.labels),
        pooling=spec.pooling,
        head_dropout=spec.head_dropout,
        head_bias=spec.head_bias,
    )


def adapter_only(spec: ModelSpec) -> bool:
    """An unmerged LoRA model folder holds the adapter and head; the base weights stay with their source."""
    return spec.lora is not None and not spec.lora.merged


def save_model(model: SequenceClassifier, spec: ModelSpec, folder: Path) -> None:
    """Write the spec and safetensors weights into ``folder`` (which the caller makes atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    if adapter_only(spec):
        from lastpool.models.lora import trainable_state  # peft loads only for LoRA folders

        state = trainable_state(model)
    else:
        state = model.state_dict()
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "lastpool": __version__})
    (folder / SPEC_FILE).write_text(spec.model_dump_json(indent=2) + "\n", encoding="utf-8")


def read_spec(folder: Path) -> ModelSpec:
    """Parse ``lastpool.json``; any problem is a ModelLoadError naming the file."""
    path = folder / SPEC_FILE
    if not path.is_file():
        raise ModelLoadError(f"{folder}: not a lastpool model folder (no {SPEC_FILE})")
    try:
        return ModelSpec.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise ModelLoadError(f"{path}: invalid model description ({detail})") from None


def refuse_pickles(folder: Path) -> None:
    """Weights are read only from safetensors; a folder carrying pickled weights is refused outright."""
    suspicious = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if suspicious:
        raise ModelLoadError(
            f"{folder}: refusing to load a model folder that contains pickle files ({', '.join(suspicious)}); "
            "lastpool loads weights only from safetensors"
        )


def load_model(folder: Path) -> tuple[SequenceClassifier, ModelSpec]:
    """Rebuild the classifier from ``folder`` and load its safetensors weights strictly."""
    spec = read_spec(folder)
    refuse_pickles(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{folder}: missing weights file {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{weights}: corrupt or truncated safetensors file ({exc})") from None
    if adapter_only(spec):
        return _load_lora(folder, spec, state), spec
    try:
        model = build_model(spec)
    except (ValueError, TypeError) as exc:  # an edited config that describes no buildable model
        raise ModelLoadError(f"{folder / SPEC_FILE}: the model it describes cannot be built ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        summary = str(exc).splitlines()[0] if str(exc) else "shape mismatch"
        raise ModelLoadError(
            f"{weights}: weights do not match {SPEC_FILE} (labels, architecture or vocabulary differ): {summary}"
        ) from None
    model.eval()
    return model, spec


def _load_lora(folder: Path, spec: ModelSpec, state: dict[str, torch.Tensor]) -> SequenceClassifier:
    """Base model from its recorded source (checked by sha256 for files), then the adapter and head."""
    from lastpool.models.lora import apply_lora, load_trainable_state  # peft loads only for LoRA folders

    base = spec.backbone
    assert isinstance(base, PretrainedBackboneSpec) and spec.lora is not None
    try:
        backbone, info = load_backbone(base.source)
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"{folder}: this LoRA model needs its base model {base.source}"
            f"{f' (sha256 {base.sha256})' if base.sha256 else ''}, which could not be loaded: {exc}"
        ) from None
    if base.sha256 and info.get("sha256") != base.sha256:
        raise ModelLoadError(
            f"{folder}: base model {base.source} has sha256 {info.get('sha256')}, "
            f"but the adapter was trained on {base.sha256}"
        )
    if base.layer is not None:
        truncate_backbone(backbone, base.layer, keep_norm=base.final_norm)
    model = build_model(spec, backbone)
    apply_lora(model, base.model_type, r=spec.lora.r, alpha=spec.lora.alpha, dropout=spec.lora.dropout)
    load_trainable_state(model, state)
    model.eval()
    return model
