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
from typing import Any, Literal

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
from lastpool.config import AUTO, MIDDLE, RunConfig, make_config, without_recipe
from lastpool.data.batching import EncodedDataset
from lastpool.data.labels import LabelSet, data_summary
from lastpool.data.split import stratified_split
from lastpool.distributed import under_launcher
from lastpool.errors import ConfigError, DataError, ModelLoadError
from lastpool.evaluation.baseline import fit_baseline
from lastpool.evaluation.calibration import expected_calibration_error, fit_temperature, nll
from lastpool.evaluation.metrics import classification_metrics
from lastpool.evaluation.model_card import model_card
from lastpool.fileio import staged_dir
from lastpool.models.backbones import HFBackbone, decoder_blocks, load_backbone, middle_block, truncate_backbone
from lastpool.models.bag_of_words import BagOfWords
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.models.gpt import GPTConfig
from lastpool.models.label_head import CONTENT_FREE, content_free_bias, label_rows, output_embeddings
from lastpool.models.lora import apply_lora, merge_lora
from lastpool.progress import status
from lastpool.recipes import auto_epochs
from lastpool.text.label_words import auto_prompt, label_words
from lastpool.text.tokenizers import TextEncoder, load_pretrained_tokenizer, train_bpe
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
from lastpool.training.inference import inference_module, predict_logits, softmax
from lastpool.training.layer_search import best_layer, pooled_every_layer, score_layers
from lastpool.training.trainer import Trainer, TrainResult, evaluate_logits
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


@dataclass
class TrainingSplit:
    """The texts and label ids a fit trains and validates on (token ids set once the encoder exists), the
    label names, and the training data's summary (source, rows, class counts) the model card shows."""

    names: list[str]
    train_texts: list[str]
    train_y: list[int]
    val_texts: list[str]
    val_y: list[int]
    summary: dict[str, Any]
    held_out: bool  # the validation texts are a split of the training data, not a file of their own
    train_ids: list[list[int]] = field(default_factory=list)
    val_ids: list[list[int]] = field(default_factory=list)

    @classmethod
    def of(cls, cfg: RunConfig, texts: Sequence[str], labels: Sequence[Any], eval_texts: Sequence[str] | None,
           eval_labels: Sequence[Any] | None, data_name: str, eval_name: str) -> TrainingSplit:
        """Check the data, then validate on ``eval_*`` if given, else on a stratified ``val_fraction`` split."""
        checked = _check_texts(texts, data_name)
        str_labels = [str(label) for label in labels]
        if len(str_labels) != len(checked):
            raise DataError(f"{data_name}: {len(checked)} texts but {len(str_labels)} labels")
        try:
            label_set = LabelSet.from_labels(str_labels, order=cfg.labels)
        except DataError as exc:  # name the file: "only one class" alone does not say where
            raise DataError(f"{data_name}: {exc}") from None
        encoded = label_set.encode(str_labels, source=data_name)
        summary = data_summary(str_labels, data_name)
        names = list(label_set.names)
        if eval_texts is not None or eval_labels is not None:
            if eval_texts is None or eval_labels is None:
                raise DataError("pass both eval_texts and eval_labels, or neither")
            val_texts = _check_texts(eval_texts, eval_name)
            val_str = [str(label) for label in eval_labels]
            if len(val_str) != len(val_texts):
                raise DataError(f"{eval_name}: {len(val_texts)} texts but {len(val_str)} labels")
            return cls(names, checked, encoded, val_texts, label_set.encode(val_str, source=eval_name), summary,
                       held_out=False)
        try:
            train_idx, val_idx = stratified_split(str_labels, cfg.val_fraction, cfg.seed)
        except DataError as exc:
            raise DataError(f"{data_name}: {exc}") from None
        return cls(names, [checked[i] for i in train_idx], [encoded[i] for i in train_idx],
                   [checked[i] for i in val_idx], [encoded[i] for i in val_idx], summary, held_out=True)


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


def _spec(cfg: RunConfig, label_names: list[str], backbone: HFBackbone | None, info: dict[str, Any],
          encoder: TextEncoder, tok_type: Literal["bpe", "pretrained"], tok_source: str | None,
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
        labels=label_names, max_length=cfg.max_length, padding_side=cfg.padding_side, prompt=encoder.prompt,
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
    content_free = [ids for ids in encoder.encode(list(CONTENT_FREE)) if ids]
    with torch.no_grad():  # the head bias starts at zero: these are the label words' raw scores
        assert model.head.bias is not None and runner.head.bias is not None  # the config requires the bias
        logits = predict_logits(runner, content_free, encoder.pad_token_id, spec.padding_side)
        model.head.bias.copy_(content_free_bias(torch.from_numpy(logits)))
        runner.head.bias.copy_(model.head.bias)
    val_logits = predict_logits(runner, val_ids, encoder.pad_token_id, spec.padding_side)
    return TrainResult(val_metrics=evaluate_logits(val_logits, val_y, spec.labels), val_logits=val_logits)


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
    ) -> Classifier:
        """Train on ``texts``/``labels``; validate on ``eval_*`` or on a stratified split of the data.

        ``checkpoints``: save training checkpoints there (steps, epoch ends, Ctrl-C; the disk is checked for
        room first); ``resume``: continue from one (the same texts, labels and settings)."""
        split = TrainingSplit.of(self.config, texts, labels, eval_texts, eval_labels, data_name, eval_name)
        cfg = self.config
        if cfg.epochs == AUTO:  # resolved here, where the data size is known; config.yaml records the number
            epochs = auto_epochs(len(split.train_texts), len(split.names), cfg.batch_size)
            cfg = self.config = cfg.model_copy(update={"epochs": epochs})
        fitted = (fit_baseline(split.train_texts, split.train_y, split.val_texts, split.val_y, split.names)
                  if cfg.baseline else None)
        self.baseline, self.bag_of_words = (None if fitted is None else fitted[1]), None
        words = label_words(split.names, cfg.label_names)  # checked before a model loads
        set_seed(cfg.seed)
        model, spec, encoder, layer_features = self._build(cfg, split, words, quiet)
        trainer = Trainer(cfg, encoder.pad_token_id, split.names, quiet=quiet, precision=spec.precision,
                          checkpoints=checkpoints, resume=resume)
        self.result = self._train(cfg, trainer, model, spec, encoder, split, layer_features, quiet)
        if spec.lora is not None and cfg.merge:
            merge_lora(model)
            spec.lora.merged = True
        model.eval()
        self._record(cfg, spec, split, None if fitted is None else fitted[0])
        self.model, self.spec, self.encoder = model, spec, encoder
        return self

    def _build(self, cfg: RunConfig, split: TrainingSplit, words: list[str], quiet: bool) -> tuple[
            SequenceClassifier, ModelSpec, TextEncoder, torch.Tensor | None]:
        """The model to train, its spec and encoder (the split's token ids set), and, for ``--layer auto``,
        every text's pooled vector at the chosen block."""
        backbone, info, tokenizer, tok_type, tok_source = _load_parts(cfg, split.train_texts, quiet)
        prompt = auto_prompt(tokenizer, cfg.max_length) if cfg.prompt == AUTO else cfg.prompt
        encoder = TextEncoder(tokenizer, cfg.max_length, prompt)
        with status(f"tokenizing {len(split.train_texts) + len(split.val_texts)} texts", quiet):
            split.train_ids, train_lengths = encoder.encode_counted(split.train_texts)
            split.val_ids, val_lengths = encoder.encode_counted(split.val_texts)
        # The training data's rows (the validation split is some of them), for the report's length summary.
        self.token_lengths = train_lengths + (val_lengths if split.held_out else [])
        layer = cfg.layer if isinstance(cfg.layer, int) else None
        layer_features = None
        if cfg.layer == AUTO:
            assert backbone is not None  # _load_parts refuses --layer for scratch models
            layer, layer_features = self._choose_layer(cfg, backbone, info, encoder, split.train_ids, split.val_ids,
                                                       split.train_y, quiet)
        elif layer is not None or cfg.layer == MIDDLE:
            assert backbone is not None  # _load_parts refuses --layer for scratch models
            layer = middle_block(backbone) if layer is None else layer
            truncate_backbone(backbone, layer, keep_norm=cfg.final_norm)
        spec = _spec(cfg, split.names, backbone, info, encoder, tok_type, tok_source, layer)
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
            return _zero_shot(model, spec, encoder, val_ids, split.val_y)
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

    def _record(self, cfg: RunConfig, spec: ModelSpec, split: TrainingSplit, bow: BagOfWords | None) -> None:
        """Put the fit's outcome where it is saved: the spec's metrics (validation scores, baseline, fusion,
        training data, calibration) and the resolved config; the validation logits for the report."""
        assert self.result is not None
        spec.metrics = {"val_accuracy": self.result.val_metrics.get("accuracy"),
                        "val_macro_f1": self.result.val_metrics.get("macro_f1"),
                        "best_epoch": self.result.best_epoch}
        if self.baseline is not None:
            spec.metrics["baseline"] = self.baseline
        if cfg.fuse_baseline and bow is not None and self.result.val_logits is not None:
            self._fuse(cfg, bow, spec, split.val_texts, split.val_y, split.names)
        self.validation = {"texts": split.val_texts, "labels": list(split.val_y), "logits": self.result.val_logits}
        spec.metrics["val_n"] = len(split.val_y)
        spec.metrics["training_data"] = split.summary
        if cfg.calibrate and self.result.val_logits is not None:
            spec.temperature, spec.metrics["calibration"] = calibrate(self.result.val_logits, split.val_y)
        spec.config = cfg.model_dump(mode="json")

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
        self.result.val_logits, self.result.val_metrics = fused, evaluate_logits(fused, val_y, names)
        spec.metrics["val_accuracy"] = self.result.val_metrics.get("accuracy")
        spec.metrics["val_macro_f1"] = self.result.val_metrics.get("macro_f1")
        spec.fusion = FusionSpec(share=choice.share, weight=choice.weight, description=bow.description,
                                 features=bow.num_features, language_model_temperature=alone_temperature)
        self.bag_of_words = bow

    def _choose_layer(self, cfg: RunConfig, backbone: HFBackbone, info: dict[str, Any], encoder: TextEncoder,
                      train_ids: list[list[int]], val_ids: list[list[int]], train_y: list[int],
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
            self.layer_scores = score_layers(every[: len(train_ids)], train_y, seed=cfg.seed)
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

    def logits(self, texts: Sequence[str], token_ids: list[list[int]] | None = None) -> np.ndarray:
        """Logits [N, C] before the temperature: the language model's, plus the bag-of-words margins at the
        fusion weight where the model has them. ``token_ids``: the texts already encoded by this model's
        encoder (the server tokenizes each request once)."""
        lm = self.language_model_logits(texts, token_ids)
        fusion = self.spec.fusion if self.spec is not None else None
        if fusion is None or self.bag_of_words is None or not len(lm):
            return lm
        return fuse(lm, self.bag_of_words.scores(texts), fusion.weight)

    def language_model_only(self) -> Classifier:
        """This classifier without its bag-of-words part (what an export computes): the same modules, the
        LM's own temperature."""
        model, spec, encoder = self._require_fitted()
        alone = Classifier(self.config)
        alone.model, alone.spec, alone.encoder = model, language_model_spec(spec), encoder
        return alone

    def language_model_logits(self, texts: Sequence[str], token_ids: list[list[int]] | None = None) -> np.ndarray:
        """The language model's logits alone (what an exported model computes)."""
        model, spec, encoder = self._require_fitted()
        checked = _check_texts(texts, "input")
        if token_ids is not None and len(token_ids) != len(checked):
            raise ValueError(f"{len(token_ids)} rows of token ids for {len(checked)} texts")
        ids = encoder.encode(checked) if token_ids is None else token_ids
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

    def predict_proba(self, texts: Sequence[str], token_ids: list[list[int]] | None = None) -> np.ndarray:
        """Class probabilities [N, C], columns in ``self.labels`` order (``token_ids``: as in ``logits``)."""
        _, spec, _ = self._require_fitted()
        return softmax(self.logits(texts, token_ids), spec.temperature)

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The most probable label name per text."""
        probabilities = self.predict_proba(texts)
        return [self.labels[i] for i in probabilities.argmax(axis=-1).tolist()]

    def evaluate(self, texts: Sequence[str], labels: Sequence[Any], source: str = "evaluation data") -> dict[str, Any]:
        """Accuracy, macro-F1, per-class scores, confusion matrix and log loss on labelled texts."""
        _, spec, _ = self._require_fitted()
        label_set = LabelSet(tuple(spec.labels))
        y_true = label_set.encode([str(label) for label in labels], source=source)
        probabilities = self.predict_proba(texts)
        y_pred = probabilities.argmax(axis=-1).tolist()
        return classification_metrics(y_true, y_pred, spec.labels, probabilities)

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
