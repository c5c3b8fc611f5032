"""Export a trained classifier for stacks that already run transformers or ONNX Runtime.

``export_hf`` writes a folder that ``AutoModelForSequenceClassification`` and
``pipeline("text-classification")`` load and run with lastpool's predictions (texts longer than the
max length: call the pipeline with ``truncation=True``; the tokenizer's ``model_max_length`` is set to
lastpool's). It refuses what
transformers cannot express instead of exporting something that predicts differently: the from-scratch
GPT (no transformers architecture), pooling other than the last token, ``--layer`` (transformers always
applies the final norm), a prompt template (pipeline callers send raw texts), and a head bias (the
``score`` layer of every decoder ``*ForSequenceClassification`` has none). The temperature is folded
into the score weights, so the pipeline's probabilities are lastpool's calibrated ones.

``export_onnx`` writes one self-contained ``.onnx`` file (logits from ``input_ids`` and
``attention_mask``, dynamic batch and sequence axes) with the labels, temperature, prompt, max length
and the tokenizer in its metadata, so ``lastpool predict FILE.onnx`` needs nothing else. Both exports
are checked against PyTorch before they are moved into place.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from lastpool.artifact import ModelSpec, PretrainedBackboneSpec, language_model_spec
from lastpool.data.batching import PaddingCollator, rows_in_input_order
from lastpool.errors import ConfigError, ModelLoadError
from lastpool.fileio import staged_dir, staged_file
from lastpool.models.backbones import HFBackbone
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.text.tokenizers import PAIR_SLOT, TEXT_SLOT

if TYPE_CHECKING:
    from lastpool.classifier import Classifier
    from lastpool.tasks import Task

ATOL = 1e-4
CHECK_TEXTS = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 .",
    "The company cut 200 jobs .",
    "Sales were flat.",
    "x",
    "Net sales of the Paper segment decreased to EUR 221.6 mn in the second quarter of 2009 from EUR 241.1 mn "
    "in the second quarter of 2008 , while operating profit excluding non-recurring items rose .",
]
META_KEY = "lastpool"


def _plain_model(clf: Classifier) -> SequenceClassifier:
    """The classifier's model in float32 eval mode, LoRA adapters merged (on a copy)."""
    from lastpool.models.lora import is_lora, merge_lora

    model, _, _ = clf._require_fitted()
    if is_lora(model):
        model = copy.deepcopy(model)
        merge_lora(model)
    return model.float().eval()


def _batch(clf: Classifier, texts: list[str], padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """The check texts as a padded batch (for a model of pairs, each with the next text as its second)."""
    _, _, encoder = clf._require_fitted()
    pairs = texts[1:] + texts[:1] if encoder.pairs else None
    batch = PaddingCollator(encoder.pad_token_id, padding_side)([(ids, -1) for ids in encoder.encode(texts, pairs)])
    return batch["input_ids"], batch["attention_mask"]


ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]
# transformers' names for the tasks: its pipeline applies softmax, sigmoid or nothing by them
PROBLEM_TYPES: dict[str, ProblemType] = {"single": "single_label_classification",
                                         "multilabel": "multi_label_classification", "regression": "regression"}


def hf_refusal(clf: Classifier) -> str | None:
    """Why this classifier has no exact transformers equivalent, or None when it has one."""
    model, spec, _ = clf._require_fitted()
    if not isinstance(spec.backbone, PretrainedBackboneSpec):
        return ("the from-scratch GPT has no transformers architecture; export it with --format onnx, or train "
                "on a pretrained --model")
    if spec.pooling != "last":
        return (f"transformers' *ForSequenceClassification pools the last token; this model pools with "
                f"{spec.pooling!r}: use --format onnx")
    if spec.backbone.layer is not None and not spec.backbone.final_norm:
        return ("this model pools block "
                f"{spec.backbone.layer} without the final norm (--layer); transformers always runs every block "
                "and the final norm: use --format onnx")
    if PAIR_SLOT in spec.prompt:
        return ("this model joins text pairs with its own template, and transformers' pipeline joins them with the "
                "tokenizer's: use --format onnx (which keeps the template)")
    if spec.prompt != TEXT_SLOT:
        return (f"this model wraps every text in the prompt {spec.prompt!r}, which pipeline callers would not "
                "do: use --format onnx (which keeps the prompt), or train without --prompt")
    if model.head.bias is not None and bool(torch.any(model.head.bias != 0)):
        where = " (a regression's holds the targets' mean)" if spec.task == "regression" else ""
        return (f"the head has a bias{where}, but the score layer of transformers' decoder "
                "*ForSequenceClassification models has none: retrain with --no-head-bias, or use --format onnx")
    return None


def export_hf(clf: Classifier, folder: Path) -> Path:
    """A transformers ``*ForSequenceClassification`` folder with lastpool's predictions (checked)."""
    from transformers import AutoModelForSequenceClassification

    reason = hf_refusal(clf)
    if reason:
        raise ConfigError(f"cannot export to transformers: {reason}")
    _, fused_spec, encoder = clf._require_fitted()
    spec = language_model_spec(fused_spec)  # the export carries the LM alone
    model = _plain_model(clf)
    backbone = model.backbone
    assert isinstance(backbone, HFBackbone)  # a pretrained spec always has one
    base = backbone.model
    config = copy.deepcopy(base.config)
    config.num_labels = len(spec.labels)
    config.id2label = dict(enumerate(spec.labels))
    config.label2id = {label: i for i, label in enumerate(spec.labels)}
    config.pad_token_id = encoder.pad_token_id
    config.problem_type = PROBLEM_TYPES[spec.task]
    if spec.thresholds is not None:  # not read by transformers: the labels lastpool predicts for each score
        config.lastpool_thresholds = dict(zip(spec.labels, spec.thresholds, strict=True))
    try:
        hf = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    except ValueError as exc:
        raise ConfigError(f"cannot export to transformers: no sequence-classification class for "
                          f"{config.model_type!r} ({exc})") from None
    getattr(hf, hf.base_model_prefix).load_state_dict(base.state_dict(), strict=True)
    scale = _temperatures(spec)
    with torch.no_grad():
        hf.score.weight.copy_(model.head.weight / scale[:, None])
    hf.eval()
    with staged_dir(folder, replace=True) as tmp:
        hf.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer = copy.deepcopy(encoder.tokenizer)
        tokenizer.model_max_length = spec.max_length  # pipeline(..., truncation=True) then cuts as lastpool does
        # Right padding: transformers derives no position ids from the mask, so absolute-position models
        # (GPT-2) would see shifted positions under left padding.
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(str(tmp))
        reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp), dtype=torch.float32).eval()
        ids, mask = _batch(clf, CHECK_TEXTS, "right")
        with torch.no_grad():
            expected = model(ids, mask) / scale
            got = reloaded(input_ids=ids, attention_mask=mask).logits
        _check_close(got.numpy(), expected.numpy(), "transformers export (a right-padded batch)")
    return folder


def _temperatures(spec: ModelSpec) -> torch.Tensor:
    """Each output's temperature (one for all classes; a multi-label model's own per label), to fold into the
    score rows, so that transformers' softmax or sigmoid gives lastpool's calibrated probabilities."""
    values = spec.temperatures if spec.temperatures is not None else [spec.temperature] * len(spec.labels)
    return torch.tensor(values, dtype=torch.float32)


def _check_close(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    difference = float(np.abs(got - expected).max())
    if not difference <= ATOL:
        raise ModelLoadError(f"{what} does not reproduce lastpool's logits (max difference {difference:.2e} > "
                             f"{ATOL}); nothing was written")


class _LogitsOnly(torch.nn.Module):
    """The classifier with the exact input and output names the ONNX graph exposes."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask)


def onnx_metadata(clf: Classifier) -> dict[str, str]:
    """What ``lastpool predict FILE.onnx`` needs besides the graph: the spec and the tokenizer."""
    _, fused_spec, encoder = clf._require_fitted()
    spec = language_model_spec(fused_spec)  # the graph computes the LM's logits alone
    tokenizer_json = encoder.tokenizer.backend_tokenizer.to_str()
    special = {"pad_token": encoder.tokenizer.pad_token, "eos_token": encoder.tokenizer.eos_token,
               "bos_token": encoder.tokenizer.bos_token, "unk_token": encoder.tokenizer.unk_token}
    return {META_KEY: spec.model_dump_json(), "tokenizer": tokenizer_json,
            "special_tokens": json.dumps({k: v for k, v in special.items() if v is not None})}


def export_onnx(clf: Classifier, path: Path, opset: int = 17, quantize: Literal["none", "int8"] = "none") -> Path:
    """One ``.onnx`` file: logits [batch, labels] from int64 ``input_ids``/``attention_mask`` [batch, sequence].

    ``quantize="int8"``: ONNX Runtime's dynamic quantization (int8 weights, activations quantized per
    batch as it runs) of the checked float32 graph; ``int8_check`` says how far it moved the answers."""
    import onnx
    import onnxruntime as ort

    if path.suffix != ".onnx":
        raise ConfigError(f"--out for --format onnx must be a .onnx file (got {path})")
    # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, and a new module is in
    # training mode, which would switch dropout on in the classifier's own model.
    model = _LogitsOnly(_plain_model(clf)).eval()
    ids, mask = _batch(clf, CHECK_TEXTS[:3])
    with staged_file(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is chatty about traced control flow
            torch.onnx.export(
                model, (ids, mask), str(tmp), dynamo=False, opset_version=opset,
                input_names=["input_ids", "attention_mask"], output_names=["logits"],
                dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                              "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}},
            )
        graph = onnx.load(str(tmp))
        for key, value in onnx_metadata(clf).items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        for side in ("right", "left"):
            check_ids, check_mask = _batch(clf, CHECK_TEXTS, side)
            with torch.no_grad():
                expected = model(check_ids, check_mask).numpy()
            got = session.run(["logits"], {"input_ids": check_ids.numpy(), "attention_mask": check_mask.numpy()})[0]
            _check_close(got, expected, f"ONNX export ({side} padding, other batch and sequence sizes)")
        if quantize == "int8":
            _quantize_int8(tmp)
    return path


def _quantize_int8(path: Path) -> None:
    """Replace the float32 graph at ``path`` by its dynamically quantized int8 twin (metadata kept, and
    ``quantization`` added, so predict and the model card can say what runs)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = path.with_name(path.name + ".fp32")
    prepared = path.with_name(path.name + ".prepared")
    path.rename(source)
    try:
        # ONNX Runtime's advice before quantizing: shape inference and graph optimization, so more of the
        # matmuls are seen as such
        quant_pre_process(str(source), str(prepared))
        # 7-bit weights (reduce_range): without VNNI, x86's u8 x s8 kernels saturate on full-range int8
        # weights (ONNX Runtime's quantization notes); the file may run on either kind of CPU. Only
        # matmuls with weights; the MLP's output projections stay float (kept_float_matmuls).
        quantize_dynamic(str(prepared), str(path), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         nodes_to_exclude=kept_float_matmuls(onnx.load(str(prepared))),
                         extra_options={"MatMulConstBOnly": True})
        graph = onnx.load(str(path))
        have = {prop.key for prop in graph.metadata_props}
        for prop in onnx.load(str(source), load_external_data=False).metadata_props:
            if prop.key not in have:
                graph.metadata_props.add(key=prop.key, value=prop.value)
        graph.metadata_props.add(key="quantization", value="int8")
        onnx.save(graph, str(path))
    finally:
        source.unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)


def kept_float_matmuls(model: Any) -> list[str]:
    """The weight matmuls whose input is the product of two activations: a gated MLP's down projection
    (``act(gate) * up``), GELU's ``x * (1 + erf(x))`` in a GPT MLP. Their inputs carry the few huge
    activation values LLMs are known for, which one int8 scale per tensor cannot hold alongside the rest
    (quantizing them costs SmolLM2 most of its label agreement: docs/BENCHMARKS.md, batch prediction)."""
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    producer = {out: node for node in graph.node for out in node.output}
    kept = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in constants:
            continue
        source = producer.get(node.input[0])
        if source is not None and source.op_type == "Mul" and not any(i in constants for i in source.input):
            kept.append(node.name)
    return kept


def int8_check(clf: Classifier, int8: Path, texts: list[str], pairs: list[str] | None = None) -> dict[str, float]:
    """The int8 file's answers against the float32 model's on ``texts``: the share of equal predictions
    (classifiers) and the largest difference of a probability (a regression: of the value); what
    ``export --quantize int8`` reports."""
    quantized = OnnxClassifier(int8)
    task = quantized.task
    reference = clf.language_model_only().logits(texts, text_pairs=pairs)
    got = quantized.logits(texts, text_pairs=pairs)
    if task.name == "regression":
        values = np.asarray(task.outputs(reference), dtype=float), np.asarray(task.outputs(got), dtype=float)
        return {"max_difference": float(np.abs(values[0] - values[1]).max())}
    same = [a == b for a, b in zip(task.outputs(reference), task.outputs(got), strict=True)]
    difference = float(np.abs(task.probabilities(reference) - task.probabilities(got)).max())
    return {"agreement": float(np.mean(same)), "max_difference": difference}


class OnnxClassifier:
    """``predict`` / ``predict_proba`` / ``logits`` for an exported ``.onnx`` file, through ONNX Runtime, in the
    saved model's task (a label, labels over their thresholds, or a value)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        from lastpool.text.tokenizers import TextEncoder

        if not path.is_file():
            raise ModelLoadError(f"ONNX file {path} does not exist")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad files
            raise ModelLoadError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        meta: dict[str, Any] = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in meta or "tokenizer" not in meta:
            raise ModelLoadError(f"{path}: not exported by lastpool (no labels or tokenizer in its metadata)")
        self.spec = ModelSpec.model_validate_json(meta[META_KEY])
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(meta["tokenizer"]),
                                            **json.loads(meta.get("special_tokens", "{}")))
        self.encoder = TextEncoder(tokenizer, self.spec.max_length, self.spec.prompt)
        self.pad_token_id = self.spec.tokenizer.pad_token_id

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def task(self) -> Task:
        return self.spec.task_object()

    def logits(self, texts: list[str], token_ids: list[list[int]] | None = None,
               text_pairs: list[str] | None = None) -> np.ndarray:
        ids = self.encoder.encode(texts, text_pairs) if token_ids is None else token_ids
        if not ids:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        collate = PaddingCollator(self.pad_token_id, self.spec.padding_side)

        def run(batch_indices: list[int]) -> np.ndarray:
            batch = collate([(ids[i], -1) for i in batch_indices])
            feeds = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
            return np.asarray(self.session.run(["logits"], feeds)[0], dtype=np.float32)

        return rows_in_input_order([len(x) for x in ids], run, 2048, 256)

    def predict_proba(self, texts: list[str], text_pairs: list[str] | None = None) -> np.ndarray:
        return self.task.probabilities(self.logits(texts, text_pairs=text_pairs))

    def predict(self, texts: list[str], text_pairs: list[str] | None = None) -> list[Any]:
        return self.task.outputs(self.logits(texts, text_pairs=text_pairs))


def load_predictor(model: str | Path) -> Any:
    """What ``predict`` and ``serve`` run: a model folder or run directory as a ``Classifier``, an exported
    ``.onnx`` file (float32 or int8) as an ``OnnxClassifier``; both answer ``logits``, ``task``, ``labels``."""
    from lastpool.classifier import Classifier

    if str(model).lower().endswith(".onnx"):
        return OnnxClassifier(Path(model))
    return Classifier.load(model)
