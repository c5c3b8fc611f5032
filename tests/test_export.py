"""Exports: transformers folders and ONNX files that predict what lastpool predicts, or a clear refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lastpool import Classifier
from lastpool.errors import ConfigError
from lastpool.export import OnnxClassifier, export_hf, export_onnx
from tests.conftest import TINY_KW, demo_sample
from tests.test_pretrained import TINY, _model_folder


@pytest.fixture(scope="module")
def llama_no_bias(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    texts, labels = demo_sample()
    folder = _model_folder(tmp_path_factory.mktemp("hf"), "llama")
    return Classifier(model=str(folder), head_bias=False, **TINY).fit(texts, labels)


PROBLEM_TYPES = {"single": "single_label_classification", "multilabel": "multi_label_classification",
                 "regression": "regression"}


def assert_serving_engines_can_read(folder: Path, clf: Classifier) -> None:
    """What vLLM's (and SGLang's) classify task reads from a folder: a *ForSequenceClassification
    architecture, the labels (num_labels from id2label), the pad token that ends a text, the activation
    (problem_type: softmax, sigmoid or none), safetensors weights and the tokenizer."""
    import json

    from transformers import AutoTokenizer

    assert clf.spec is not None
    config = json.loads((folder / "config.json").read_text())
    assert len(config["architectures"]) == 1 and config["architectures"][0].endswith("ForSequenceClassification")
    assert {int(k): v for k, v in config["id2label"].items()} == dict(enumerate(clf.labels))
    assert config["label2id"] == {label: i for i, label in enumerate(clf.labels)}
    assert config["problem_type"] == PROBLEM_TYPES[clf.spec.task]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert config["pad_token_id"] is not None and config["pad_token_id"] == tokenizer.pad_token_id
    assert config.get("max_position_embeddings", clf.spec.max_length) >= clf.spec.max_length
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    assert (folder / "tokenizer.json").is_file()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hf_export_matches_in_transformers_and_pipeline(tmp_path: Path, family: str) -> None:
    from transformers import AutoModelForSequenceClassification, pipeline

    texts, labels = demo_sample()
    clf = Classifier(model=str(_model_folder(tmp_path, family)), head_bias=False, **TINY).fit(texts, labels)
    assert clf.spec is not None and clf.spec.temperature != 1.0  # the calibration must survive the export
    # The default mode's model: the first half of the blocks and the final norm, a family model of 1 block.
    assert clf.spec.backbone.layer == 1 and clf.spec.backbone.final_norm  # type: ignore[union-attr]
    out = export_hf(clf, tmp_path / "hf")
    assert_serving_engines_can_read(out, clf)
    hf = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.id2label == dict(enumerate(clf.labels))
    sample = texts[:24]
    pipe = pipeline("text-classification", model=str(out), device=-1, top_k=None)
    results = pipe(sample, batch_size=8, truncation=True)  # the tiny BPE makes some texts longer than 32
    proba = clf.predict_proba(sample)
    for row, expected in zip(results, proba, strict=True):
        got = {r["label"]: r["score"] for r in row}
        np.testing.assert_allclose([got[label] for label in clf.labels], expected, atol=1e-4)
    assert [max(r, key=lambda x: x["score"])["label"] for r in results] == clf.predict(sample)


def test_hf_export_of_merged_lora(tmp_path: Path) -> None:
    texts, labels = demo_sample()
    folder = _model_folder(tmp_path, "llama")
    clf = Classifier(model=str(folder), mode="lora", head_bias=False, **{**TINY, "lr": 1e-2}).fit(texts, labels)
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(str(export_hf(clf, tmp_path / "hf"))).eval()
    assert clf.encoder is not None
    ids = torch.tensor([clf.encoder.encode([texts[0]])[0]])
    with torch.no_grad():
        got = torch.softmax(hf(input_ids=ids).logits, -1).numpy()
    np.testing.assert_allclose(got[0], clf.predict_proba([texts[0]])[0], atol=1e-4)
    assert clf.model is not None and any("lora_" in n for n, _ in clf.model.named_parameters())  # unchanged


def test_hf_export_refuses_what_transformers_cannot_express(tmp_path: Path) -> None:
    texts, labels = demo_sample()
    scratch = Classifier(**TINY_KW, seed=0).fit(texts, labels)
    with pytest.raises(ConfigError, match="from-scratch GPT has no transformers architecture"):
        export_hf(scratch, tmp_path / "a")
    folder = _model_folder(tmp_path, "llama")
    cases = {
        "head has a bias": {"head_bias": True},
        "pools with 'mean'": {"pooling": "mean", "head_bias": False},
        "without the final norm": {"layer": 1, "final_norm": False, "head_bias": False},
        "prompt": {"prompt": "{text} Verdict:", "head_bias": False},
    }
    for message, overrides in cases.items():
        clf = Classifier(model=str(folder), **{**TINY, "epochs": 1, **overrides}).fit(texts, labels)
        with pytest.raises(ConfigError, match=message):
            export_hf(clf, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["scratch", "llama"])
def test_onnx_export_matches_pytorch_and_predicts(tmp_path: Path, kind: str,
                                                  llama_no_bias: Classifier) -> None:
    texts, labels = demo_sample()
    if kind == "scratch":
        clf = Classifier(**TINY_KW, seed=0, prompt="News: {text}").fit(texts, labels)
    else:
        clf = llama_no_bias
    sample = texts[:40]
    before = clf.predict_proba(sample)
    path = export_onnx(clf, tmp_path / "model.onnx")
    assert clf.model is not None and not clf.model.training  # exporting leaves the model as it was
    np.testing.assert_array_equal(clf.predict_proba(sample), before)
    onnx_clf = OnnxClassifier(path)
    # The graph is the language model; a bag-of-words part the model was fused with stays behind.
    assert onnx_clf.spec.fusion is None
    alone = clf.language_model_only()
    np.testing.assert_allclose(onnx_clf.logits(sample), alone.logits(sample), atol=1e-4)
    np.testing.assert_allclose(onnx_clf.predict_proba(sample), alone.predict_proba(sample), atol=1e-4)
    assert onnx_clf.predict(sample) == alone.predict(sample)
    assert onnx_clf.encoder.encode(sample[:3]) == clf.encoder.encode(sample[:3])  # type: ignore[union-attr]


def test_onnx_export_needs_an_onnx_path_and_loading_checks_the_file(tmp_path: Path) -> None:
    texts, labels = demo_sample()
    clf = Classifier(**TINY_KW, seed=0).fit(texts, labels)
    with pytest.raises(ConfigError, match=".onnx"):
        export_onnx(clf, tmp_path / "model.bin")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    from lastpool.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        OnnxClassifier(bad)


def test_cli_export_onnx_then_predict_with_it(tmp_path: Path, trained_run: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from lastpool.cli import main

    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(onnx_path)]) == 0
    texts = ["Operating profit rose .", "The company cut 200 jobs .", "Sales were flat ."]
    capsys.readouterr()
    assert main(["predict", str(trained_run), *texts, "--json"]) == 0
    from_folder = capsys.readouterr().out
    assert main(["predict", str(onnx_path), *texts, "--json"]) == 0
    from_onnx = capsys.readouterr().out
    import json

    folder_rows = [json.loads(line) for line in from_folder.splitlines()]
    onnx_rows = [json.loads(line) for line in from_onnx.splitlines()]
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in folder_rows]
    for a, b in zip(onnx_rows, folder_rows, strict=True):
        assert all(abs(a[k] - b[k]) < 1e-4 for k in a if k.startswith("prob_"))
    # refusals: existing output, unknown format, a from-scratch model to transformers
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(onnx_path)]) == 2
    assert main(["export", str(trained_run), "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", str(trained_run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "hf or onnx" in err and "from-scratch GPT" in err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "x").exists()


def test_int8_onnx_stays_close_and_runs_in_predict_and_serve(tmp_path: Path, llama_no_bias: Classifier,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Dynamic int8 moves probabilities a little; the file says it is int8, its matmuls are integer ones,
    and predict and the server run it like any exported file."""
    import onnx
    from fastapi.testclient import TestClient

    from lastpool.cli import main
    from lastpool.serving import create_app

    texts = demo_sample()[0][:40]
    fp32 = export_onnx(llama_no_bias, tmp_path / "fp32.onnx")
    int8 = export_onnx(llama_no_bias, tmp_path / "int8.onnx", quantize="int8")
    graph = onnx.load(str(int8)).graph
    weights = {init.name for init in graph.initializer}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {node.op_type for node in graph.node}
    # every matmul by a weight is an integer one but the MLP's output projections (their input, act(gate) *
    # up, holds the outlier activations), one per block; the float ones left multiply activations
    float_weight_matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)]
    down = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "MatMul" and "down_proj" in n.name]
    assert down and sorted(float_weight_matmuls) == sorted(down)
    quantized = OnnxClassifier(int8)
    assert quantized.session.get_modelmeta().custom_metadata_map["quantization"] == "int8"
    np.testing.assert_allclose(quantized.predict_proba(texts), OnnxClassifier(fp32).predict_proba(texts), atol=0.02)
    with TestClient(create_app(quantized, batch_wait_ms=0)) as http:  # type: ignore[arg-type]
        answer = http.post("/classify", json={"input": texts[:5]}).json()["data"]
    np.testing.assert_allclose([r["probs"] for r in answer], quantized.predict_proba(texts[:5]), atol=1e-6)
    capsys.readouterr()
    assert main(["predict", str(int8), *texts[:3], "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_cli_quantize_flags(tmp_path: Path, trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lastpool.cli import main

    assert main(["export", str(trained_run), "--format", "hf", "--out", str(tmp_path / "hf"), "--quantize",
                 "int8"]) == 2
    assert "--quantize int8 is for --format onnx" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--quantize",
                 "int4"]) == 2
    assert "--quantize must be none or int8" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--quantize",
                 "int8"]) == 0
    assert "int8 check: predictions agree on" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
