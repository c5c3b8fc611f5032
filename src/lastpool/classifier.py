"""``Classifier``: the public, scikit-learn-style API (fit / predict / predict_proba / evaluate / save / load).

The CLI calls only this. A fitted Classifier holds the model, its tokenizer, the label set and the
training record; ``save`` writes a self-contained model folder and ``load`` reads one back (or a run
directory holding ``model/``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from accelerate.utils import set_seed
from pydantic import ValidationError
from transformers import PreTrainedTokenizerBase

from lastpool.artifact import (
    SPEC_FILE,
    FusionSpec,
    LoraSpec,
    ModelSpec,
    PretrainedBackboneSpec,
    ScratchBackboneSpec,
    TokenizerSpec,
    build_model,
    language_model_spec,
    load_model,
    save_model,
)
from lastpool.config import AUTO, RunConfig, depth_share, make_config, without_recipe
from lastpool.data.batching import EncodedDataset, Target
from lastpool.data.split import stratified_split
from lastpool.distributed import under_launcher
from lastpool.errors import ConfigError, DataError, ModelLoadError
from lastpool.evaluation.baseline import fit_baseline, fit_task_baseline
from lastpool.evaluation.calibration import (
    binary_log_loss,
    expected_calibration_error,
    fit_label_temperatures,
    fit_temperature,
    nll,
    softmax,
)
from lastpool.evaluation.model_card import model_card
from lastpool.fileio import staged_dir
from lastpool.models.backbones import HFBackbone, block_at, decoder_blocks, load_backbone, truncate_backbone
from lastpool.models.bag_of_words import BagOfWords
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.models.gpt import GPTConfig
from lastpool.models.label_head import CONTENT_FREE, content_free_bias, label_rows, output_embeddings
from lastpool.models.lora import apply_lora, merge_lora
from lastpool.progress import status
from lastpool.recipes import auto_epochs, default_mode, recipe
from lastpool.tasks import (
    Regression,
    SingleLabel,
    Task,
    TaskName,
    infer_task,
    output_names,
    task_for_model,
    training_task,
)
from lastpool.text.label_words import auto_prompt, label_words
from lastpool.text.tokenizers import TextEncoder, fill, load_pretrained_tokenizer, train_bpe
from lastpool.training.checkpoint import Checkpoint, CheckpointSettings
from lastpool.training.features import (
    FeatureDataset,
    HeadOnly,
    cached_tensor,
    extract_features,
    feature_key,
    fold_standardization,
    freeze_for_mode,
    standardizer,
)
from lastpool.training.fusion import choose_weight, fuse
from lastpool.training.inference import inference_module, predict_logits
from lastpool.training.layer_search import best_layer, pooled_every_layer, score_layers
from lastpool.training.observers import TrainingObserver
from lastpool.training.trainer import Trainer, TrainResult
from lastpool.training.upper_blocks import HiddenStates, UpperBlocks, cache_fits, hidden_after, reproduces


def resolve_model_folder(path: str | Path) -> Path:
    """Accept a model folder (has lastpool.json) or a run directory (has model/lastpool.json)."""
    p = Path(path)
    if (p / SPEC_FILE).is_file():
        return p
    if (p / "model" / SPEC_FILE).is_file():
        return p / "model"
    if not p.exists():
        raise ModelLoadError(f"{p}: no such model folder or run directory")
    raise ModelLoadError(f"{p}: not a lastpool model folder or run directory (no {SPEC_FILE} found)")


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise DataError(f"{what}: item {i + 1} is not a string ({type(text).__name__})")
        if not text.strip():
            raise DataError(f"{what}: item {i + 1} is an empty text")
    return out


def _check_pairs(pairs: Sequence[str] | None, texts: list[str], what: str) -> list[str] | None:
    if pairs is None:
        return None
    checked = _check_texts(pairs, f"{what} (second texts)")
    if len(checked) != len(texts):
        raise DataError(f"{what}: {len(texts)} texts but {len(checked)} second texts")
    return checked


def named_labels(labels: Sequence[Any], names: Sequence[str], source: str) -> list[Any]:
    """Label ids (0, 1, ...; one per text or lists of them) as the names a ``--label-names`` file gives them."""
    def name(value: Any, row: int) -> str:
        text = str(value).strip()
        if not text.lstrip("+-").isdigit() or not 0 <= int(text) < len(names):
            raise DataError(f"{source}: item {row + 1}: label {text!r} is not a label id of --label-names (0 to "
                            f"{len(names) - 1})")
        return names[int(text)]
    return [[name(v, i) for v in label] if isinstance(label, (list, tuple)) else name(label, i)
            for i, label in enumerate(labels)]


def _as_task_labels(task: TaskName, labels: Sequence[Any]) -> list[Any]:
    """Labels in the form a task's targets read: names, lists of names, or (regression) as given."""
    if task == "single":
        return [str(label) for label in labels]
    if task == "multilabel":
        return [[str(v) for v in label] if isinstance(label, (list, tuple)) else [str(label)] for label in labels]
    return list(labels)


def _split_indices(task: Task, targets: np.ndarray, cfg: RunConfig, source: str) -> tuple[list[int], list[int]]:
    """A split stratified by the task's keys; where a multi-label or regression set cannot be stratified
    (too many keys for the validation share), a plain seeded shuffle."""
    try:
        return stratified_split(task.split_keys(targets), cfg.val_fraction, cfg.seed)
    except DataError as exc:
        if task.name == "single":
            raise DataError(f"{source}: {exc}") from None
        try:
            return stratified_split(["all"] * len(targets), cfg.val_fraction, cfg.seed)
        except DataError as plain:
            raise DataError(f"{source}: {plain}") from None


def _given_labels(cfg: RunConfig, task: TaskName, labels: Sequence[Any], source: str) -> list[Any]:
    """Labels as the task reads them, label ids first named by a ``--label-names`` file where there is one."""
    positional = cfg.label_names if isinstance(cfg.label_names, list) else None
    return _as_task_labels(task, named_labels(labels, positional, source) if positional else labels)


def _read_targets(cfg: RunConfig, labels: Sequence[Any], source: str) -> tuple[Task, str | None, np.ndarray]:
    """The task (``cfg.task``, or the one the labels make plain) with the outputs' names, why it was chosen
    (when inferred), and the labels as its targets."""
    task_name, note = infer_task(list(labels)) if cfg.task == AUTO else (cast(TaskName, cfg.task), None)
    given = _given_labels(cfg, task_name, labels, source)
    positional = cfg.label_names if isinstance(cfg.label_names, list) else None
    try:
        names = output_names(task_name, given, cfg.labels or positional, cfg.label_col or "value")
    except DataError as exc:  # name the file: "only one class" alone does not say where
        raise DataError(f"{source}: {exc}") from None
    reader = task_for_model(task_name, names)
    return reader, note, reader.targets(given, source)


def stratification_keys(cfg: RunConfig, labels: Sequence[Any]) -> tuple[TaskName, list[str], list[str]]:
    """The task, one key per row that a stratified split or K-fold keeps in proportion (the class, the
    rarest label, the value's bin), and the outputs' names."""
    reader, _, targets = _read_targets(cfg, labels, "data")
    return reader.name, reader.split_keys(targets), reader.names


@dataclass
class TrainingSplit:
    """The texts (and second texts of pairs) and targets a fit trains and validates on (token ids set once the
    encoder exists), the task it trains with, and the training data's summary the model card shows."""

    task: Task  # with what it learned from the training rows (class weights, the targets' scale)
    train_texts: list[str]
    train_y: list[Target]
    val_texts: list[str]
    val_y: list[Target]
    summary: dict[str, Any]
    held_out: bool  # the validation texts are a split of the training data, not a file of their own
    train_pairs: list[str] | None = None
    val_pairs: list[str] | None = None
    task_note: str | None = None  # why the task was chosen, when --task was left to auto
    train_ids: list[list[int]] = field(default_factory=list)
    val_ids: list[list[int]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return self.task.names

    @classmethod
    def of(cls, cfg: RunConfig, texts: Sequence[str], labels: Sequence[Any], eval_texts: Sequence[str] | None,
           eval_labels: Sequence[Any] | None, data_name: str, eval_name: str, pairs: Sequence[str] | None = None,
           eval_pairs: Sequence[str] | None = None) -> TrainingSplit:
        """Check the data, choose the task, then validate on ``eval_*`` if given, else on a stratified
        ``val_fraction`` split."""
        checked = _check_texts(texts, data_name)
        checked_pairs = _check_pairs(pairs, checked, data_name)
        if len(labels) != len(checked):
            raise DataError(f"{data_name}: {len(checked)} texts but {len(labels)} labels")
        reader, note, targets = _read_targets(cfg, labels, data_name)
        task_name, names = reader.name, reader.names
        summary = {"source": data_name, "rows": len(checked), **reader.summary(targets)}

        def fitted(train: np.ndarray) -> Task:
            return training_task(task_name, names, train, cfg.class_weight, cfg.label_smoothing, cfg.head_bias)

        if eval_texts is not None or eval_labels is not None:
            if eval_texts is None or eval_labels is None:
                raise DataError("pass both eval_texts and eval_labels, or neither")
            val_texts = _check_texts(eval_texts, eval_name)
            val_pairs = _check_pairs(eval_pairs, val_texts, eval_name)
            if (val_pairs is None) != (checked_pairs is None):
                raise DataError(f"{eval_name}: give second texts for both the training and the validation data, "
                                "or for neither")
            if len(eval_labels) != len(val_texts):
                raise DataError(f"{eval_name}: {len(val_texts)} texts but {len(eval_labels)} labels")
            val_targets = reader.targets(_given_labels(cfg, task_name, eval_labels, eval_name), eval_name)
            return cls(fitted(targets), checked, targets.tolist(), val_texts, val_targets.tolist(), summary,
                       held_out=False, train_pairs=checked_pairs, val_pairs=val_pairs, task_note=note)
        train_idx, val_idx = _split_indices(reader, targets, cfg, data_name)
        def pick(rows: list[str] | None, idx: list[int]) -> list[str] | None:
            return [rows[i] for i in idx] if rows is not None else None

        return cls(fitted(targets[train_idx]), [checked[i] for i in train_idx], targets[train_idx].tolist(),
                   [checked[i] for i in val_idx], targets[val_idx].tolist(), summary, held_out=True,
                   train_pairs=pick(checked_pairs, train_idx), val_pairs=pick(checked_pairs, val_idx), task_note=note)


def _for_task(cfg: RunConfig, task: TaskName, pairs: bool) -> RunConfig:
    """``cfg`` for the run's task: ``task: auto`` replaced by the task the labels chose, the recipe's settings
    resolved again for pairs where ``fit`` was given text pairs that no ``text_pair_col`` announced (or none
    where one was), and a regression's head given a bias where the recipe (not the user) left it out, since
    the bias holds the targets' mean (checked again, as given)."""
    if pairs != (cfg.text_pair_col is not None) and cfg.from_recipe:
        cfg = _recipe_for_pairs(cfg, pairs)
    values = {**cfg.model_dump(exclude_unset=True), "task": task, "from_recipe": cfg.from_recipe}
    if task == "regression" and not cfg.head_bias and "head_bias" in cfg.from_recipe:
        values["head_bias"] = True
    return make_config(values, source="Classifier") if values != cfg.model_dump(exclude_unset=True) else cfg


def _recipe_for_pairs(cfg: RunConfig, pairs: bool) -> RunConfig:
    """``cfg`` with what the recipe chose (the mode among it) chosen again for rows that are pairs or not."""
    values = without_recipe({**cfg.model_dump(exclude_unset=True), "from_recipe": cfg.from_recipe})
    chosen = {"mode": default_mode(cfg.model, pairs)} if "mode" in cfg.from_recipe else {}
    row = recipe(cfg.model, str(values.get("mode", chosen.get("mode"))), pairs=pairs)
    chosen.update({name: value for name, value in row.items() if name not in values})
    return make_config({**values, **chosen, "from_recipe": sorted(chosen)}, source="Classifier")


def _class_ids(targets: list[Target]) -> list[int]:
    """A single-label split's targets, which are class ids."""
    return [int(cast(int, t)) for t in targets]


def _joined(texts: list[str], pairs: list[str] | None) -> list[str]:
    """Texts with their second texts, for the bag-of-words model (which reads a pair as one text)."""
    return texts if pairs is None else [f"{a}\n{b}" for a, b in zip(texts, pairs, strict=True)]


def resolve_precision(requested: str, pretrained: bool) -> Literal["fp32", "bf16"]:
    """``auto``: bf16 weights for pretrained backbones where the hardware runs bf16 matmuls natively
    (CUDA with bf16, CPUs with AVX512-BF16/AMX), fp32 for the small from-scratch decoder, whose tiny
    matmuls gain nothing and whose padding-invariance checks are exact in fp32."""
    if requested == "bf16":
        return "bf16"
    if requested == "fp32" or not pretrained:
        return "fp32"
    return "bf16" if bf16_is_fast() else "fp32"


def bf16_is_fast() -> bool:
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _load_parts(cfg: RunConfig, train_texts: list[str], quiet: bool) -> tuple[
        HFBackbone | None, dict[str, Any], PreTrainedTokenizerBase, Literal["bpe", "pretrained"], str | None]:
    """The pretrained backbone (all its blocks; None for ``scratch``), its description, and the tokenizer."""
    if cfg.model != "scratch":
        if cfg.tokenizer == "bpe":
            raise ConfigError("a pretrained backbone needs its own tokenizer: drop --tokenizer bpe (or use auto)")
        with status(f"loading {cfg.model}", quiet):
            backbone, info = load_backbone(cfg.model, trust_remote_code=cfg.trust_remote_code)
        tok_source = cfg.model if cfg.tokenizer == "auto" else cfg.tokenizer
        tokenizer = load_pretrained_tokenizer(tok_source, trust_remote_code=cfg.trust_remote_code)
        # The source's whole config, before any --layer truncation: provenance, and what rebuilds it offline.
        source_config = json.loads(backbone.config.to_json_string(use_diff=False))
        # (less _name_or_path & co: local paths, not architecture)
        info["config"] = {key: value for key, value in source_config.items() if not key.startswith("_")}
        if cfg.grad_checkpointing:
            backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return backbone, info, tokenizer, "pretrained", tok_source
    if cfg.layer is not None:
        raise ConfigError("--layer applies to pretrained models; a from-scratch model sets --n-layers instead")
    for name, value in (("mode", cfg.mode if cfg.mode == "zeroshot" else None),
                        ("head-init", cfg.head_init if cfg.head_init == "labels" else None)):
        if value is not None:
            raise ConfigError(f"--{name} {value} needs a pretrained --model (it reads the LM's label words)")
    if cfg.tokenizer in ("auto", "bpe"):
        with status(f"training a {cfg.vocab_size}-token BPE tokenizer", quiet):
            tokenizer = train_bpe(train_texts, cfg.vocab_size, lowercase=cfg.lowercase)
        return None, {}, tokenizer, "bpe", None
    return None, {}, load_pretrained_tokenizer(cfg.tokenizer, trust_remote_code=cfg.trust_remote_code), \
        "pretrained", cfg.tokenizer


def _spec(cfg: RunConfig, task: TaskName, label_names: list[str], backbone: HFBackbone | None,
          info: dict[str, Any], encoder: TextEncoder, tok_type: Literal["bpe", "pretrained"], tok_source: str | None,
          layer: int | None) -> ModelSpec:
    """The model folder's description of a new run's model."""
    backbone_spec: ScratchBackboneSpec | PretrainedBackboneSpec
    if backbone is not None:
        backbone_spec = PretrainedBackboneSpec(
            source=cfg.model, kind=info["kind"], model_type=info["model_type"], sha256=info.get("sha256"),
            config=info["config"], layer=layer, final_norm=cfg.final_norm and layer is not None,
        )
    else:
        backbone_spec = ScratchBackboneSpec(
            config=GPTConfig(
                vocab_size=encoder.vocab_size, context_length=cfg.context_length or cfg.max_length,
                d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_ff=cfg.d_ff, dropout=cfg.dropout,
            )
        )
    return ModelSpec(
        backbone=backbone_spec, pooling=cfg.pooling, head_dropout=cfg.head_dropout, head_bias=cfg.head_bias,
        task=task, labels=label_names, max_length=cfg.max_length, padding_side=cfg.padding_side, prompt=encoder.prompt,
        tokenizer=TokenizerSpec(type=tok_type, source=tok_source, vocab_size=encoder.vocab_size,
                                pad_token_id=encoder.pad_token_id),
        precision=resolve_precision(cfg.precision, backbone is not None), mode=cfg.mode,
    )


def _backbone_identity(spec: ModelSpec, seed: int) -> dict[str, Any]:
    """What makes a frozen backbone's features what they are, for the probe feature cache key."""
    identity: dict[str, Any] = {"backbone": spec.backbone.model_dump(mode="json")}
    if isinstance(spec.backbone, ScratchBackboneSpec):
        identity["seed"] = seed  # a from-scratch backbone is its random init
    elif spec.backbone.kind == "folder":
        weights = sorted(Path(spec.backbone.source).glob("*.safetensors"))
        identity["weights"] = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    return identity


def calibrate(val_logits: np.ndarray, val_y: Sequence[int]) -> tuple[float, dict[str, float]]:
    """Temperature scaling on the validation logits: the temperature, and the ECE / log loss before and
    after (measured on the same validation texts the temperature was fitted on)."""
    temperature = fit_temperature(val_logits, val_y)
    before, after = softmax(val_logits), softmax(val_logits, temperature)
    return temperature, {
        "temperature": temperature,
        "ece_before": expected_calibration_error(before, val_y),
        "ece_after": expected_calibration_error(after, val_y),
        "log_loss_before": nll(val_logits, val_y, 1.0),
        "log_loss_after": nll(val_logits, val_y, temperature),
    }


def _set_up_mode(cfg: RunConfig, model: SequenceClassifier, spec: ModelSpec) -> None:
    """What trains: LoRA adapters added, or parameters frozen for full / probe / top-N (zeroshot: nothing)."""
    if cfg.mode == "lora":
        if not isinstance(spec.backbone, PretrainedBackboneSpec):
            raise ConfigError("--mode lora needs a pretrained --model (a hub id, folder or .gguf file)")
        apply_lora(model, spec.backbone.model_type, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
        spec.lora = LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
    elif cfg.mode != "zeroshot":
        freeze_for_mode(model, cfg.mode)


def _zero_shot(model: SequenceClassifier, spec: ModelSpec, encoder: TextEncoder, val_ids: list[list[int]],
               val_y: list[int]) -> TrainResult:
    """``--mode zeroshot``: no training. The head already holds the label words' output rows; its bias
    becomes the contextual calibration, and the validation split is scored as a kept epoch would be."""
    model.eval()
    runner = inference_module(model, spec.precision)
    free = list(CONTENT_FREE)  # a model of pairs reads each content-free text as both halves of a pair
    content_free = [ids for ids in encoder.encode(free, free if encoder.pairs else None) if ids]
    with torch.no_grad():  # the head bias starts at zero: these are the label words' raw scores
        assert model.head.bias is not None and runner.head.bias is not None  # the config requires the bias
        logits = predict_logits(runner, content_free, encoder.pad_token_id, spec.padding_side)
        model.head.bias.copy_(content_free_bias(torch.from_numpy(logits)))
        runner.head.bias.copy_(model.head.bias)
    val_logits = predict_logits(runner, val_ids, encoder.pad_token_id, spec.padding_side)
    return TrainResult(val_metrics=SingleLabel(spec.labels).evaluate(val_logits, np.asarray(val_y)),
                       val_logits=val_logits)


class Classifier:
    """A decoder-only text classifier with last-token (or mean/max/first) pooling.

    >>> clf = Classifier(epochs=3).fit(texts, labels)          # doctest: +SKIP
    >>> clf.predict(["Profit rose 20 %."])                      # doctest: +SKIP
    """

    def __init__(self, config: RunConfig | None = None, **overrides: Any) -> None:
        # What ``config`` was given (not its field defaults), less what its recipe row filled in: overrides
        # of the model or mode then bring their own row.
        base = without_recipe({**config.model_dump(exclude_unset=True), "from_recipe": config.from_recipe}
                              ) if config is not None else {}
        self._params: dict[str, Any] = {**base, **overrides}  # as given: what get_params hands to clone
        self.config: RunConfig = make_config(self._params, source="Classifier")
        self.model: SequenceClassifier | None = None
        self.spec: ModelSpec | None = None
        self.encoder: TextEncoder | None = None
        self.result: TrainResult | None = None
        self.feature_cache_hits: list[bool] = []
        self._bf16_runner: tuple[SequenceClassifier, torch.nn.Module] | None = None
        self.validation: dict[str, Any] | None = None  # texts, labels and kept-epoch logits of the last fit
        self.baseline: dict[str, Any] | None = None  # the bag-of-words baseline on the same split
        self.bag_of_words: BagOfWords | None = None  # its model, where it is fused with the LM
        self.layer_scores: list[float] | None = None  # --layer auto: cross-validated probe score per block
        self.chosen_layer: int | None = None
        self.lower_blocks_cached: int | None = None  # top-N: frozen blocks run once, their output cached
        self.cache_note: str | None = None  # top-N: why the frozen blocks ran in every epoch instead
        self.token_lengths: list[int] | None = None  # per training-data text, before truncation (the report)
        self.task_note: str | None = None  # why the task was chosen, when it was left to auto

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The settings chosen for this classifier, as ``RunConfig`` fields (scikit-learn's protocol, so
        ``sklearn.base.clone`` and its searches work; the recipe fills the rest in again)."""
        return dict(self._params)

    def set_params(self, **params: Any) -> Classifier:
        """Change settings (``RunConfig`` fields); checked at once, like the constructor's. Fitted state stays
        until the next ``fit``."""
        self.config = make_config({**self._params, **params}, source="Classifier")
        self._params = {**self._params, **params}
        return self

    # ----------------------------------------------------------------- training
    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[Any],
        eval_texts: Sequence[str] | None = None,
        eval_labels: Sequence[Any] | None = None,
        quiet: bool = True,
        data_name: str = "training data",
        eval_name: str = "validation data",
        checkpoints: CheckpointSettings | None = None,
        resume: Checkpoint | None = None,
        text_pairs: Sequence[str] | None = None,
        eval_text_pairs: Sequence[str] | None = None,
        observers: Sequence[TrainingObserver] = (),
    ) -> Classifier:
        """Train on ``texts``/``labels``; validate on ``eval_*`` or on a stratified split of the data.

        ``labels``: one label per text, lists of labels (multi-label) or numbers (regression), as ``task``
        says (``auto``: as the labels make plain). ``text_pairs``: each text's second text, for tasks on
        pairs. ``checkpoints``: save training checkpoints there (steps, epoch ends, Ctrl-C; the disk is
        checked for room first); ``resume``: continue from one (the same texts, labels and settings);
        ``observers``: told of the training steps and epochs (experiment tracking, a tuner)."""
        task, self.task_note = (infer_task(list(labels)) if self.config.task == AUTO
                                else (cast(TaskName, self.config.task), None))
        # resolved here, like the epochs: config.yaml records what the run did
        cfg = self.config = _for_task(self.config, task, pairs=text_pairs is not None)
        split = TrainingSplit.of(cfg, texts, labels, eval_texts, eval_labels, data_name, eval_name, text_pairs,
                                 eval_text_pairs)
        if cfg.epochs == AUTO:  # resolved here, where the data size is known; config.yaml records the number
            epochs = auto_epochs(len(split.train_texts), len(split.names), cfg.batch_size)
            cfg = self.config = cfg.model_copy(update={"epochs": epochs})
        fitted = self._baseline(cfg, split)
        words = label_words(split.names, cfg.label_names if isinstance(cfg.label_names, dict) else None)
        set_seed(cfg.seed)
        model, spec, encoder, layer_features = self._build(cfg, split, words, quiet)
        trainer = Trainer(cfg, encoder.pad_token_id, split.task, quiet=quiet, precision=spec.precision,
                          checkpoints=checkpoints, resume=resume, observers=observers)
        self.result = self._train(cfg, trainer, model, spec, encoder, split, layer_features, quiet)
        if spec.lora is not None and cfg.merge:
            merge_lora(model)
            spec.lora.merged = True
        model.eval()
        self._record(cfg, model, spec, split, fitted)
        self.model, self.spec, self.encoder = model, spec, encoder
        return self

    def _baseline(self, cfg: RunConfig, split: TrainingSplit) -> BagOfWords | None:
        """The bag-of-words baseline on the same split (``self.baseline``); its fitted model where the LM may
        be fused with it (single-label)."""
        self.baseline, self.bag_of_words = None, None
        if not cfg.baseline:
            return None
        train, val = _joined(split.train_texts, split.train_pairs), _joined(split.val_texts, split.val_pairs)
        if split.task.name != "single":
            self.baseline = fit_task_baseline(split.task.name, train, np.asarray(split.train_y), val,
                                              np.asarray(split.val_y), split.names)
            return None
        fitted = fit_baseline(train, _class_ids(split.train_y), val, _class_ids(split.val_y), split.names)
        self.baseline = None if fitted is None else fitted[1]
        return None if fitted is None else fitted[0]

    def _build(self, cfg: RunConfig, split: TrainingSplit, words: list[str], quiet: bool) -> tuple[
            SequenceClassifier, ModelSpec, TextEncoder, torch.Tensor | None]:
        """The model to train, its spec and encoder (the split's token ids set), and, for ``--layer auto``,
        every text's pooled vector at the chosen block."""
        backbone, info, tokenizer, tok_type, tok_source = _load_parts(
            cfg, split.train_texts + (split.train_pairs or []), quiet)
        prompt = auto_prompt(tokenizer, cfg.max_length) if cfg.prompt == AUTO else cfg.prompt
        if split.train_pairs is not None:  # the pair template takes the text's place in the prompt
            prompt = fill(prompt, cfg.pair_template)
        encoder = TextEncoder(tokenizer, cfg.max_length, prompt)
        with status(f"tokenizing {len(split.train_texts) + len(split.val_texts)} texts", quiet):
            split.train_ids, train_lengths = encoder.encode_counted(split.train_texts, split.train_pairs)
            split.val_ids, val_lengths = encoder.encode_counted(split.val_texts, split.val_pairs)
        # The training data's rows (the validation split is some of them), for the report's length summary.
        self.token_lengths = train_lengths + (val_lengths if split.held_out else [])
        layer = cfg.layer if isinstance(cfg.layer, int) else None
        if (share := depth_share(cfg.layer)) is not None:
            assert backbone is not None  # _load_parts refuses --layer for scratch models
            layer = block_at(backbone, share)
        layer_features = None
        if cfg.layer == AUTO:
            assert backbone is not None  # _load_parts refuses --layer for scratch models
            layer, layer_features = self._choose_layer(cfg, backbone, info, encoder, split.train_ids, split.val_ids,
                                                       split.train_y, quiet)
        elif layer is not None:
            assert backbone is not None  # _load_parts refuses --layer for scratch models
            truncate_backbone(backbone, layer, keep_norm=cfg.final_norm)
        spec = _spec(cfg, split.task.name, split.names, backbone, info, encoder, tok_type, tok_source, layer)
        set_seed(cfg.seed)
        model = build_model(spec, backbone)
        if cfg.head_init == "labels" or cfg.mode == "zeroshot":
            assert backbone is not None  # _load_parts refuses both for scratch models
            with torch.no_grad():
                model.head.weight.copy_(label_rows(output_embeddings(backbone, cfg.model), tokenizer, words))
        _set_up_mode(cfg, model, spec)
        return model, spec, encoder, layer_features

    def _train(self, cfg: RunConfig, trainer: Trainer, model: SequenceClassifier, spec: ModelSpec,
               encoder: TextEncoder, split: TrainingSplit, layer_features: torch.Tensor | None,
               quiet: bool) -> TrainResult:
        """The mode's training: none (zeroshot), the head on cached pooled features (probe), the top blocks
        on cached hidden states (top-N where they fit), or the model on token ids."""
        train_ids, val_ids, n = split.train_ids, split.val_ids, len(split.train_ids)
        if cfg.mode == "zeroshot":
            if split.task.name != "single":
                raise ConfigError(f"--mode zeroshot picks one label word; it does not do a {split.task.name} task")
            return _zero_shot(model, spec, encoder, val_ids, _class_ids(split.val_y))
        if cfg.mode == "probe":
            feats = (layer_features if layer_features is not None  # the layer search already pooled them
                     else self._probe_features(cfg, model, spec, encoder, train_ids + val_ids, quiet))
            mean, std = standardizer(feats[:n])
            standardized = (feats - mean) / std
            result = trainer.fit(HeadOnly(model), FeatureDataset(standardized[:n], split.train_y),
                                 FeatureDataset(standardized[n:], split.val_y))
            fold_standardization(model.head, mean, std)
            return result
        start = self._cached_blocks(cfg, model, spec, encoder, train_ids + val_ids)
        if start is None:
            return trainer.fit(model, EncodedDataset(train_ids, split.train_y), EncodedDataset(val_ids, split.val_y))
        hidden = hidden_after(model, start, train_ids + val_ids, encoder.pad_token_id, spec.precision, quiet=quiet)
        return trainer.fit(UpperBlocks(model, start), HiddenStates(hidden[:n], split.train_y, train_ids),
                           HiddenStates(hidden[n:], split.val_y, val_ids))

    def _record(self, cfg: RunConfig, model: SequenceClassifier, spec: ModelSpec, split: TrainingSplit,
                bow: BagOfWords | None) -> None:
        """Put the fit's outcome where it is saved: the spec's metrics (validation scores, baseline, fusion,
        training data, calibration), a multi-label model's thresholds, a regression's scale folded into its
        head, and the resolved config; the validation logits for the report."""
        assert self.result is not None
        task, result = split.task, self.result
        if task.name == "multilabel" and cfg.calibrate and result.val_logits is not None:
            calibration = self._calibrate_labels(spec, split)
        spec.metrics = {**{f"val_{name}": result.val_metrics.get(name)
                           for name in dict.fromkeys((*task.headline, task.main_metric))},
                        "best_epoch": result.best_epoch}
        if self.baseline is not None:
            spec.metrics["baseline"] = self.baseline
        if cfg.fuse_baseline and bow is not None and result.val_logits is not None:
            self._fuse(cfg, bow, spec, _joined(split.val_texts, split.val_pairs), _class_ids(split.val_y),
                       split.names)
        if isinstance(task, Regression) and result.val_logits is not None:  # outputs in the targets' units
            task.fold_into(model.head)
            result.val_logits = task.values(result.val_logits).reshape(-1, 1).astype(np.float32)
            spec.metrics["target_scale"] = {"mean": task.mean, "std": task.std}
        if task.name == "multilabel":
            spec.thresholds = [float(t) for t in result.val_metrics["thresholds"]]
            if spec.temperatures is not None:
                spec.metrics["calibration"] = calibration
        self.validation = {"texts": split.val_texts, "pairs": split.val_pairs, "labels": list(split.val_y),
                           "logits": result.val_logits}
        spec.metrics["val_n"] = len(split.val_y)
        spec.metrics["training_data"] = split.summary
        if cfg.calibrate and task.name == "single" and result.val_logits is not None:
            spec.temperature, spec.metrics["calibration"] = calibrate(result.val_logits, _class_ids(split.val_y))
        spec.config = cfg.model_dump(mode="json")

    def _calibrate_labels(self, spec: ModelSpec, split: TrainingSplit) -> dict[str, Any]:
        """Multi-label calibration: a temperature per label fitted on the validation logits (its binary log
        loss), then the thresholds chosen again on the calibrated probabilities; the record of it."""
        assert self.result is not None and self.result.val_logits is not None
        logits, truth = self.result.val_logits, np.asarray(split.val_y)
        spec.temperatures = fit_label_temperatures(logits, truth)
        calibrated = task_for_model("multilabel", split.names, temperatures=spec.temperatures)
        self.result.val_metrics = calibrated.evaluate(logits, truth)
        return {"temperatures": dict(zip(split.names, spec.temperatures, strict=True)),
                "log_loss_before": binary_log_loss(logits, truth),
                "log_loss_after": binary_log_loss(logits, truth, np.asarray(spec.temperatures))}

    def _fuse(self, cfg: RunConfig, bow: BagOfWords, spec: ModelSpec, val_texts: list[str], val_y: list[int],
              names: list[str]) -> None:
        """Choose the bag-of-words weight on the validation split; where it is above 0, the saved model adds
        the margins to its logits, and the validation logits and scores become the fused model's."""
        assert self.result is not None and self.result.val_logits is not None
        alone = self.result.val_metrics
        scores = bow.scores(val_texts)
        choice = choose_weight(self.result.val_logits, scores, val_y)
        spec.metrics["fusion"] = {
            "share": choice.share, "weight": choice.weight,
            "val_log_loss": {str(share): loss for share, loss in choice.log_loss.items()},
            "language_model": {"accuracy": alone.get("accuracy"), "macro_f1": alone.get("macro_f1")}}
        if choice.share == 0:
            return
        alone_temperature = choice.lm_temperature if cfg.calibrate else 1.0
        fused = fuse(self.result.val_logits, scores, choice.weight)
        self.result.val_logits, self.result.val_metrics = fused, SingleLabel(names).evaluate(fused, np.asarray(val_y))
        spec.metrics["val_accuracy"] = self.result.val_metrics.get("accuracy")
        spec.metrics["val_macro_f1"] = self.result.val_metrics.get("macro_f1")
        spec.fusion = FusionSpec(share=choice.share, weight=choice.weight, description=bow.description,
                                 features=bow.num_features, language_model_temperature=alone_temperature)
        self.bag_of_words = bow

    def _choose_layer(self, cfg: RunConfig, backbone: HFBackbone, info: dict[str, Any], encoder: TextEncoder,
                      train_ids: list[list[int]], val_ids: list[list[int]], train_y: list[Target],
                      quiet: bool) -> tuple[int | None, torch.Tensor]:
        """``--layer auto``: score every block on the training split, truncate the backbone after the best
        one; returns the layer (None: all blocks, the final norm kept) and every text's pooled vector there."""
        precision = resolve_precision(cfg.precision, pretrained=True)
        identity = {"source": cfg.model, "config": backbone.config.to_json_string(use_diff=False),
                    "sha256": info.get("sha256"), "every_layer": True}
        every = self._cached_by_canonical_order(
            train_ids + val_ids, identity, cfg.pooling, cfg.padding_side, precision,
            lambda ids: pooled_every_layer(backbone, cfg.pooling, ids, encoder.pad_token_id, cfg.padding_side,
                                           precision, quiet=quiet))
        with status("scoring a linear probe after every layer", quiet):
            self.layer_scores = score_layers(every[: len(train_ids)], train_y, seed=cfg.seed,
                                             classes=cfg.task == "single")
        chosen = best_layer(self.layer_scores)
        self.chosen_layer = chosen
        features = every[:, chosen - 1].contiguous()
        if chosen == every.shape[1]:
            return None, features
        truncate_backbone(backbone, chosen)
        return chosen, features

    def _cached_blocks(self, cfg: RunConfig, model: SequenceClassifier, spec: ModelSpec, encoder: TextEncoder,
                       all_ids: list[list[int]]) -> int | None:
        """``--mode top-N``: the number of frozen blocks whose output is computed once and cached
        (training/upper_blocks.py), or None to train the usual way; ``self.cache_note`` says why not when
        it could have applied."""
        self.lower_blocks_cached, self.cache_note = None, None
        if not cfg.mode.startswith("top-") or not isinstance(model.backbone, HFBackbone):
            return None
        start = len(decoder_blocks(model.backbone.model)) - int(cfg.mode.split("-", 1)[1])
        if start <= 0:
            return None
        if cfg.token_dropout > 0:
            self.cache_note = "token dropout changes the frozen blocks' input every epoch"
        elif under_launcher():
            self.cache_note = "several processes train together"
        elif not cache_fits(all_ids, model.backbone.hidden_size, spec.precision):
            self.cache_note = "the frozen blocks' hidden states would not fit in memory"
        elif not reproduces(model, start, all_ids, encoder.pad_token_id, spec.padding_side):
            self.cache_note = f"cached hidden states do not reproduce this {type(model.backbone.model).__name__}"
        else:
            self.lower_blocks_cached = start
            return start
        return None

    def _probe_features(self, cfg: RunConfig, model: SequenceClassifier, spec: ModelSpec, encoder: TextEncoder,
                        all_ids: list[list[int]], quiet: bool) -> torch.Tensor:
        """Pooled features of every text, in input order, from the cache when it has them."""
        return self._cached_by_canonical_order(
            all_ids, _backbone_identity(spec, cfg.seed), spec.pooling, spec.padding_side, spec.precision,
            lambda ids: extract_features(model, ids, encoder.pad_token_id, spec.padding_side, spec.precision,
                                         quiet=quiet))

    def _cached_by_canonical_order(self, all_ids: list[list[int]], identity: dict[str, Any], pooling: str,
                                   padding_side: str, precision: str,
                                   compute: Callable[[list[list[int]]], torch.Tensor]) -> torch.Tensor:
        """``compute`` over every text, cached as one entry in a canonical (sorted) order, so that every
        seed's split (and every fold) reuses the same entry instead of computing it again; returned in input
        order. Records whether it was a cache hit in ``feature_cache_hits``."""
        order = sorted(range(len(all_ids)), key=lambda i: all_ids[i])
        canonical = [all_ids[i] for i in order]
        key = feature_key(identity, canonical, pooling, padding_side, precision)
        feats, hit = cached_tensor(key, lambda: compute(canonical), len(canonical))
        self.feature_cache_hits.append(hit)
        by_input = torch.empty_like(feats)
        by_input[torch.tensor(order)] = feats
        return by_input

    # ---------------------------------------------------------------- inference
    def _require_fitted(self) -> tuple[SequenceClassifier, ModelSpec, TextEncoder]:
        if self.model is None or self.spec is None or self.encoder is None:
            raise ModelLoadError("this Classifier is not fitted: call fit() or Classifier.load()")
        return self.model, self.spec, self.encoder

    @property
    def calibration(self) -> dict[str, float] | None:
        """The temperature-scaling record (``lastpool.json``'s ``metrics.calibration``), None when not fitted."""
        return self.spec.metrics.get("calibration") if self.spec is not None else None

    @property
    def data_info(self) -> dict[str, Any]:
        """The training data summary (source, rows, class counts) the model card shows; it is saved in
        ``lastpool.json``, so a loaded model re-saves the same card."""
        return dict(self.spec.metrics.get("training_data") or {}) if self.spec is not None else {}

    @property
    def fusion(self) -> dict[str, Any] | None:
        """``metrics.json``'s ``fusion``: the share chosen, and the LM's own validation scores (None where no
        bag-of-words model was fitted)."""
        return self.spec.metrics.get("fusion") if self.spec is not None else None

    @property
    def labels(self) -> list[str]:
        return list(self._require_fitted()[1].labels)

    @property
    def task(self) -> Task:
        """What this model predicts (one label, a set of labels or a number), with its calibration and
        thresholds."""
        return self._require_fitted()[1].task_object()

    def logits(self, texts: Sequence[str], token_ids: list[list[int]] | None = None,
               text_pairs: Sequence[str] | None = None) -> np.ndarray:
        """Logits [N, outputs] before the temperature: the language model's, plus the bag-of-words margins at
        the fusion weight where the model has them (a regression's one output is the value itself).
        ``token_ids``: the texts already encoded by this model's encoder (the server tokenizes each request
        once); ``text_pairs``: the second texts, for a model of text pairs."""
        lm = self.language_model_logits(texts, token_ids, text_pairs)
        fusion = self.spec.fusion if self.spec is not None else None
        if fusion is None or self.bag_of_words is None or not len(lm):
            return lm
        return fuse(lm, self.bag_of_words.scores(_joined(list(texts), None if text_pairs is None
                                                          else list(text_pairs))), fusion.weight)

    def language_model_only(self) -> Classifier:
        """This classifier without its bag-of-words part (what an export computes): the same modules, the
        LM's own temperature."""
        model, spec, encoder = self._require_fitted()
        alone = Classifier(self.config)
        alone.model, alone.spec, alone.encoder = model, language_model_spec(spec), encoder
        return alone

    def language_model_logits(self, texts: Sequence[str], token_ids: list[list[int]] | None = None,
                              text_pairs: Sequence[str] | None = None) -> np.ndarray:
        """The language model's logits alone (what an exported model computes)."""
        model, spec, encoder = self._require_fitted()
        checked = _check_texts(texts, "input")
        pairs = _check_pairs(text_pairs, checked, "input")
        if token_ids is not None and len(token_ids) != len(checked):
            raise ValueError(f"{len(token_ids)} rows of token ids for {len(checked)} texts")
        ids = encoder.encode(checked, pairs) if token_ids is None else token_ids
        if not ids:
            return np.zeros((0, len(spec.labels)), dtype=np.float32)
        return predict_logits(self._runner(), ids, encoder.pad_token_id, spec.padding_side)

    def _runner(self) -> torch.nn.Module:
        """The module predictions run on: in bf16, a bf16 copy of the model made on first use (and remade
        after ``fit``), so weights are not cast again for every batch."""
        model, spec, _ = self._require_fitted()
        if spec.precision != "bf16":
            return model
        if self._bf16_runner is None or self._bf16_runner[0] is not model:
            self._bf16_runner = (model, inference_module(model, spec.precision))
        return self._bf16_runner[1]

    def predict_proba(self, texts: Sequence[str], token_ids: list[list[int]] | None = None,
                      text_pairs: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities [N, outputs], columns in ``self.labels`` order: a softmax over the classes at the
        fitted temperature, or (multi-label) each label's own sigmoid. A regression has none (TypeError).
        ``token_ids``, ``text_pairs``: as in ``logits``."""
        return self.task.probabilities(self.logits(texts, token_ids, text_pairs))

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> list[Any]:
        """Per text: the most probable label name; (multi-label) the list of labels over their thresholds;
        (regression) the value."""
        return self.task.outputs(self.logits(texts, text_pairs=text_pairs))

    def evaluate(self, texts: Sequence[str], labels: Sequence[Any], source: str = "evaluation data",
                 text_pairs: Sequence[str] | None = None) -> dict[str, Any]:
        """The task's scores on labelled texts: accuracy, macro-F1, per-class scores, confusion matrix and log
        loss; (multi-label) micro/macro/weighted F1, subset accuracy, Hamming loss, per-label scores, mean
        average precision; (regression) RMSE, MAE, Pearson, Spearman, R²."""
        task = self.task
        given = _given_labels(self.config, task.name, labels, source)
        if len(given) != len(texts):
            raise DataError(f"{source}: {len(texts)} texts but {len(given)} labels")
        return task.evaluate(self.logits(texts, text_pairs=text_pairs), task.targets(given, source))

    # ------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the model folder atomically (complete or not at all); replaces an older model there."""
        model, spec, encoder = self._require_fitted()
        target = Path(path)
        if target.exists() and any(target.iterdir()) and not (target / SPEC_FILE).is_file():
            raise ModelLoadError(f"{target} exists and is not a lastpool model folder; refusing to overwrite it")
        with staged_dir(target, replace=True) as tmp:
            self.save_to(tmp)
        return target

    def save_to(self, folder: Path) -> None:
        """Write into an existing (staging) folder; callers handle atomicity."""
        model, spec, encoder = self._require_fitted()
        encoder.save(folder)
        save_model(model, spec, folder)
        if spec.fusion is not None and self.bag_of_words is not None:
            self.bag_of_words.save(folder)
        metrics = self.result.val_metrics if self.result is not None else spec.metrics
        card = model_card(spec.model_dump(mode="json"), self.data_info, metrics, self.calibration)
        (folder / "README.md").write_text(card, encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        """Load a model folder or a run directory."""
        folder = resolve_model_folder(path)
        model, spec = load_model(folder)
        encoder = TextEncoder.load(folder, spec.max_length, spec.prompt)
        if encoder.vocab_size > spec.tokenizer.vocab_size:
            raise ModelLoadError(
                f"{folder}: tokenizer has {encoder.vocab_size} tokens but the model was built for "
                f"{spec.tokenizer.vocab_size}"
            )
        clf = cls()
        clf.model, clf.spec, clf.encoder = model, spec, encoder
        if spec.config is not None:  # the settings it was trained with (older folders lack them)
            try:
                clf.config = RunConfig.model_validate(spec.config)
                clf._params = without_recipe(spec.config)
            except ValidationError as exc:  # predicting needs none of them: say so, and keep the defaults
                warnings.warn(f"{folder}: its training settings do not fit this lastpool version "
                              f"({exc.error_count()} problems); Classifier.config holds the defaults", stacklevel=2)
        if spec.fusion is not None:
            clf.bag_of_words = BagOfWords.load(folder, len(spec.labels))
            if clf.bag_of_words.num_features != spec.fusion.features:
                raise ModelLoadError(f"{folder}: the bag-of-words part has {clf.bag_of_words.num_features} "
                                     f"features but {SPEC_FILE} says {spec.fusion.features}")
        return clf
