"""Multi-label, regression and text pairs: the metrics against scikit-learn and scipy, the losses, the
thresholds, the targets' scale, save/load identity, pairs' truncation and padding invariance, the shared
GoEmotions / STS-B / MRPC files read with flags only, and each task's bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    hamming_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)
from sklearn.utils.class_weight import compute_class_weight

from lastpool import Classifier
from lastpool.cli import main
from lastpool.data.tables import TableLayout, read_table
from lastpool.evaluation.metrics import multilabel_metrics, regression_metrics
from lastpool.tasks import MultiLabel, Regression, SingleLabel, infer_task, training_task
from lastpool.tasks.multilabel import best_thresholds
from lastpool.text.tokenizers import TextEncoder, train_bpe
from tests.conftest import SHARED, TINY_FLAGS, TINY_KW, snapshot

WORDS = ["good", "bad", "great", "awful", "fine", "poor", "nice", "terrible", "calm", "loud"]
POSITIVE = {"good", "great", "fine", "nice"}


def sentences(n: int, seed: int = 0, words: int = 6) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def tags(text: str) -> list[str]:
    """Multi-label targets a model can learn: which word groups a text holds."""
    found = [name for name, group in (("praise", {"good", "great"}), ("blame", {"bad", "awful"}),
                                      ("noise", {"loud"})) if group & set(text.split())]
    return found or ["praise"]


def score(text: str) -> float:
    return sum(word in POSITIVE for word in text.split()) + 0.5


# --- metrics against scikit-learn and scipy -------------------------------------------------------------


def test_multilabel_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    truth = (rng.random((40, 4)) < 0.3).astype(int)
    truth[:, 3] = 0  # a label no row carries: left out of the mean average precision
    probabilities = np.clip(truth * 0.6 + rng.random((40, 4)) * 0.5, 0, 1)
    thresholds = [0.5, 0.4, 0.6, 0.5]
    predicted = (probabilities >= np.asarray(thresholds)).astype(int)
    got = multilabel_metrics(truth, probabilities, thresholds, ["a", "b", "c", "d"])
    for average in ("micro", "macro", "weighted"):
        assert got[f"{average}_f1"] == pytest.approx(f1_score(truth, predicted, average=average, zero_division=0))
    assert got["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    assert got["subset_accuracy"] == pytest.approx(float((truth == predicted).all(axis=1).mean()))
    assert got["mean_average_precision"] == pytest.approx(
        np.mean([average_precision_score(truth[:, k], probabilities[:, k]) for k in range(3)]))
    assert got["per_label"]["b"]["threshold"] == 0.4 and got["per_label"]["d"]["support"] == 0


def test_regression_metrics_match_scipy_and_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    truth = rng.normal(2.5, 1.0, 50)
    predicted = truth + rng.normal(0, 0.7, 50)
    got = regression_metrics(truth, predicted)
    assert got["pearson"] == pytest.approx(pearsonr(truth, predicted).statistic)
    assert got["spearman"] == pytest.approx(spearmanr(truth, predicted).statistic)
    assert got["rmse"] == pytest.approx(np.sqrt(mean_squared_error(truth, predicted)))
    assert got["mae"] == pytest.approx(mean_absolute_error(truth, predicted))
    assert got["r2"] == pytest.approx(r2_score(truth, predicted))
    constant = regression_metrics(truth, np.full(50, 2.0))
    assert np.isnan(constant["pearson"])  # a correlation with a constant is undefined, not 0


# --- losses, weights, thresholds, scale ------------------------------------------------------------------


def test_each_task_loss_is_the_textbook_one() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    ids = torch.tensor([0, 1, 2, 2, 1, 0])
    weights = [0.5, 1.0, 2.0]
    single = SingleLabel(["a", "b", "c"], label_smoothing=0.1, class_weights=weights)
    assert single.loss(logits, ids) == pytest.approx(float(F.cross_entropy(
        logits, ids, weight=torch.tensor(weights), label_smoothing=0.1, reduction="sum")))
    hot = (torch.rand(6, 3) < 0.4).float()
    multi = MultiLabel(["a", "b", "c"], positive_weights=[1.0, 3.0, 0.5])
    assert multi.loss(logits, hot) == pytest.approx(float(F.binary_cross_entropy_with_logits(
        logits, hot, pos_weight=torch.tensor([1.0, 3.0, 0.5]), reduction="sum")))
    values = torch.tensor([1.0, 2.0, 4.0, 5.0, 3.0, 3.0])
    regression = Regression(["score"], mean=3.0, std=2.0)
    expected = float(((logits[:, 0] - (values - 3) / 2) ** 2).sum())
    assert regression.loss(logits[:, :1], values) == pytest.approx(expected)


def test_balanced_weights_follow_the_training_rows() -> None:
    ids = np.array([0, 0, 0, 0, 1, 1, 2])
    single = training_task("single", ["a", "b", "c"], ids, "balanced", 0.0)
    assert isinstance(single, SingleLabel) and single.class_weights == pytest.approx(
        compute_class_weight("balanced", classes=np.arange(3), y=ids))
    hot = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    multi = training_task("multilabel", ["x", "y"], hot, "balanced", 0.0)
    assert isinstance(multi, MultiLabel) and multi.positive_weights == pytest.approx([1 / 3, 3.0])


def test_chosen_thresholds_reach_the_best_f1_of_any_threshold() -> None:
    rng = np.random.default_rng(2)
    truth = (rng.random((60, 3)) < 0.3).astype(np.float32)
    probabilities = np.clip(truth * 0.3 + rng.random((60, 3)) * 0.7, 0, 1)
    chosen = best_thresholds(probabilities, truth)
    for k in range(3):
        def f1_at(t: float, k: int = k) -> float:
            return float(f1_score(truth[:, k], probabilities[:, k] >= t, zero_division=0))
        best = max(f1_at(t) for t in np.unique(probabilities[:, k]))
        assert f1_at(chosen[k]) == pytest.approx(best)
    assert best_thresholds(probabilities, np.zeros_like(truth)) == [0.5, 0.5, 0.5]  # no positives: the default


def test_the_task_is_inferred_only_where_the_labels_say_so() -> None:
    assert infer_task(["pos", "neg"]) == ("single", None)
    assert infer_task(["0", "1", "2"])[0] == "single"  # integer codes are classes
    assert infer_task(["5.000", "3.8", "4"])[0] == "regression"
    assert infer_task([["a"], ["a", "b"]])[0] == "multilabel"
    assert infer_task(["4.5", "many"])[0] == "single"  # not all numbers
    assert infer_task(["1.0", "0.0", "1.0"])[0] == "single"  # whole numbers written with decimals: codes


# --- fit, save, load -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sentences(240)


@pytest.fixture(scope="module")
def fitted(texts: list[str]) -> dict[str, Classifier]:
    """One tiny model per task (and one of pairs), trained once for the tests below."""
    seconds = sentences(len(texts), seed=3, words=3)
    same = ["same" if a.split()[0] == b.split()[0] else "different" for a, b in zip(texts, seconds, strict=True)]
    settings = {**TINY_KW, "epochs": 4, "max_length": 16}
    return {"multilabel": Classifier(**settings).fit(texts, [tags(t) for t in texts]),
            "regression": Classifier(**settings).fit(texts, [score(t) for t in texts]),
            "pairs": Classifier(**settings).fit(texts, same, text_pairs=seconds)}


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_fit_save_load_predict_is_identical(task: str, fitted: dict[str, Classifier], tmp_path: Path) -> None:
    clf = fitted[task]
    assert clf.config.task == task and clf.spec is not None and clf.spec.task == task
    again = Classifier.load(clf.save(tmp_path / "model"))
    sample = sentences(30, seed=5)
    assert again.predict(sample) == clf.predict(sample)
    assert np.array_equal(again.logits(sample), clf.logits(sample))
    if task == "multilabel":
        assert again.spec is not None and again.spec.thresholds == clf.spec.thresholds
        assert all(isinstance(row, list) for row in clf.predict(sample))
        assert clf.predict_proba(sample).shape == (30, 3)
    else:
        with pytest.raises(TypeError, match="values, not probabilities"):
            clf.predict_proba(sample)


def test_regression_predicts_in_the_targets_own_units(texts: list[str]) -> None:
    """Targets far from 0 with a large spread: the standardised training must give predictions on their
    scale (the folded head), and the validation scores must be those of the saved model."""
    labels = [1000 + 50 * score(t) for t in texts]
    clf = Classifier(**{**TINY_KW, "epochs": 6, "max_length": 16, "lr": 3e-3}).fit(texts, labels)
    assert clf.validation is not None
    predicted = np.asarray(clf.predict(clf.validation["texts"]))
    assert 950 < predicted.mean() < 1350
    again = clf.evaluate(clf.validation["texts"], clf.validation["labels"])
    assert again["rmse"] == pytest.approx(clf.result.val_metrics["rmse"], rel=1e-4)  # type: ignore[union-attr]


def test_class_weight_balanced_changes_the_loss_not_the_data(texts: list[str]) -> None:
    labels = ["rare" if i % 10 == 0 else "common" for i in range(len(texts))]
    plain = Classifier(**TINY_KW).fit(texts, labels)
    weighted = Classifier(**TINY_KW, class_weight="balanced").fit(texts, labels)
    assert plain.validation is not None and weighted.validation is not None
    assert plain.validation["texts"] == weighted.validation["texts"]  # the same split
    assert plain.result is not None and weighted.result is not None
    assert plain.result.history[0]["train_loss"] != weighted.result.history[0]["train_loss"]


# --- pairs -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_encoder(texts: list[str]) -> TextEncoder:
    return TextEncoder(train_bpe(texts, 300), 12, "{text} | {text_pair}")


def test_a_long_pair_is_cut_in_its_longer_text_never_the_template(bpe_encoder: TextEncoder) -> None:
    short, long = "good", " ".join(["terrible"] * 30)
    ids = bpe_encoder.encode([long], [short])[0]
    decoded = bpe_encoder.tokenizer.decode(ids, skip_special_tokens=True)
    assert len(ids) == 12 and decoded.rstrip().endswith("| good")  # the template and the short text whole
    both_long = bpe_encoder.encode([long], [long])[0]
    text = bpe_encoder.tokenizer.decode(both_long, skip_special_tokens=True)
    assert len(both_long) <= 12 and "|" in text and text.split("|")[0].count("terrible") >= 1
    assert text.split("|")[1].count("terrible") >= 1  # both cut, neither dropped


def test_an_encoder_of_pairs_refuses_single_texts_and_back(bpe_encoder: TextEncoder) -> None:
    from lastpool.errors import DataError

    with pytest.raises(DataError, match="reads text pairs"):
        bpe_encoder.encode(["good"])
    with pytest.raises(DataError, match="not pairs"):
        TextEncoder(bpe_encoder.tokenizer, 12).encode(["good"], ["bad"])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pair_predictions_do_not_depend_on_padding_or_batch(padding_side: str, texts: list[str]) -> None:
    seconds = sentences(len(texts), seed=3, words=3)
    same = ["same" if a.split()[0] == b.split()[0] else "different" for a, b in zip(texts, seconds, strict=True)]
    clf = Classifier(**TINY_KW, padding_side=padding_side).fit(texts, same, text_pairs=seconds)
    assert clf.spec is not None and "{text_pair}" in clf.spec.prompt
    firsts, pairs = sentences(8, seed=9, words=2) + sentences(8, seed=10, words=9), sentences(16, seed=11)
    together = clf.logits(firsts, text_pairs=pairs)
    alone = np.concatenate([clf.logits([a], text_pairs=[b]) for a, b in zip(firsts, pairs, strict=True)])
    assert np.allclose(together, alone, atol=1e-5)


# --- serving ---------------------------------------------------------------------------------------------


def test_the_server_answers_in_each_task_s_terms(fitted: dict[str, Classifier]) -> None:
    from fastapi.testclient import TestClient

    from lastpool.serving import create_app

    sample = sentences(5, seed=21)
    for task in ("multilabel", "regression"):
        clf = fitted[task]
        with TestClient(create_app(clf, batch_wait_ms=0)) as http:
            answer = http.post("/v1/classify", json={"texts": sample}).json()
            assert answer["task"] == task
            if task == "multilabel":
                assert [r["labels"] for r in answer["results"]] == clf.predict(sample)
                assert set(answer["results"][0]["probabilities"]) == set(clf.labels)
            else:
                assert [r["value"] for r in answer["results"]] == pytest.approx(clf.predict(sample), abs=1e-5)
                assert "probabilities" not in answer["results"][0]
                assert http.post("/v1/classify", json={"texts": sample, "top_k": 1}).status_code == 422
            engine = http.post("/classify", json={"input": sample}).json()["data"]
            if task == "multilabel":  # the engines' label is the most probable one; lastpool's set comes beside
                assert [r["labels"] for r in engine] == clf.predict(sample)
                best = [clf.labels[int(np.argmax(p))] for p in clf.predict_proba(sample)]
                assert [r["label"] for r in engine] == best
            else:
                assert [r["value"] for r in engine] == pytest.approx(clf.predict(sample), abs=1e-5)
                assert all(r["label"] is None and r["num_classes"] == 1 for r in engine)
            schema = http.get("/openapi.json").json()
            assert schema["components"]["schemas"]["ClassifyResponse"]["properties"]["task"]["enum"] == [
                "single", "multilabel", "regression"]
            request = schema["components"]["schemas"]["ClassifyRequest"]["properties"]
            assert ("top_k" in request) == (task != "regression")
            assert http.get("/v1/model").json()["task"] == task


def test_the_server_of_a_pair_model_needs_the_second_texts(fitted: dict[str, Classifier]) -> None:
    from fastapi.testclient import TestClient

    from lastpool.serving import create_app

    clf = fitted["pairs"]
    firsts, seconds = sentences(4, seed=30), sentences(4, seed=31, words=3)
    with TestClient(create_app(clf, batch_wait_ms=0)) as http:
        answer = http.post("/v1/classify", json={"texts": firsts, "text_pairs": seconds}).json()
        assert [r["label"] for r in answer["results"]] == clf.predict(firsts, text_pairs=seconds)
        missing = http.post("/v1/classify", json={"texts": firsts})
        assert missing.status_code == 422 and "text_pairs" in missing.json()["error"]["message"]
        short = http.post("/v1/classify", json={"texts": firsts, "text_pairs": seconds[:2]})
        assert short.status_code == 422 and "4 texts but 2" in short.json()["error"]["message"]
        schema = http.get("/openapi.json").json()
        assert "text_pairs" in schema["components"]["schemas"]["ClassifyRequest"]["required"]
        assert "/classify" not in schema["paths"]  # the engines' /classify has no second text
        assert http.post("/classify", json={"input": firsts}).status_code == 404


# --- the shared files, read with flags only --------------------------------------------------------------


def shared(*parts: str) -> Path:
    path = SHARED.joinpath("data", *parts)
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


def test_goemotions_stsb_and_mrpc_load_with_flags_only() -> None:
    emotions = read_table(shared("goemotions", "dev.tsv"), layout=TableLayout(
        header=False, text_col="1", label_col="2", label_sep=","))
    assert len(emotions) == 5426 and sum(len(labels) > 1 for labels in emotions.labels or []) == 878
    sts = read_table(shared("stsb", "sts-train.csv"), layout=TableLayout(
        header=False, sep="\t", text_col="6", pair_col="7", label_col="5", numeric_labels=True))
    assert len(sts) == 5749 and sts.pairs is not None and sts.labels is not None
    assert all(0.0 <= v <= 5.0 for v in sts.labels)
    mrpc = read_table(shared("mrpc", "train.tsv"), layout=TableLayout(
        text_col="#1 String", pair_col="#2 String", label_col="Quality"))
    assert len(mrpc) == 3668 and mrpc.texts[0].startswith("Amrozi") and '"the witness"' in mrpc.texts[0]


def test_label_names_file_names_the_ids(tmp_path: Path) -> None:
    texts = sentences(80)
    data = tmp_path / "train.tsv"
    data.write_text("".join(f"{t}\t{'0,2' if 'loud' in t else '1'}\n" for t in texts), encoding="utf-8")
    names = tmp_path / "labels.txt"
    names.write_text("alpha\nbeta\ngamma\ndelta\n", encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--no-header", "--text-col", "1", "--label-col", "2",
                 "--label-sep", ",", "--label-names", str(names), "--out", str(run), "-q", *TINY_FLAGS]) == 0
    spec = json.loads((run / "model" / "lastpool.json").read_text())
    assert spec["task"] == "multilabel" and spec["labels"] == ["alpha", "beta", "gamma", "delta"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["val"]["per_label"]) == {"alpha", "beta", "gamma", "delta"}
    assert (run / "report.html").is_file() and (run / "plots" / "per_label_f1.png").is_file()
    assert main(["eval", str(run), "--data", str(data), "--json"]) == 0  # read as the training data was


# --- bad input per task ----------------------------------------------------------------------------------


def expect_error(capsys: pytest.CaptureFixture[str], watch: Path, args: list[str]) -> str:
    before = snapshot(watch)
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2, captured.err[-500:]
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert snapshot(watch) == before
    return lines[0]


@pytest.mark.parametrize(("rows", "flags", "message"), [
    pytest.param(["good day\t0", "bad day\t7"], ["--label-names", "NAMES"], "not a label id of --label-names",
                 id="label-id-without-a-name"),
    pytest.param(["good day\t0", "bad day\t"], ["--label-sep", ","], "line 2: missing label", id="empty-label-list"),
    pytest.param(["good day\t1.5", "bad day\tmany"], ["--task", "regression"],
                 "line 2: the target 'many' is not a number", id="text-target"),
    pytest.param(["good day\t1.5", "bad day\tnan"], ["--task", "regression"], "line 2: the target is 'nan'",
                 id="nan-target"),
    pytest.param(["good day\t1\tfine", "bad day\t0"], ["--text-pair-col", "3"], "line 2: empty second text",
                 id="pair-missing-in-a-row"),
    pytest.param(["good day\t1"], ["--label-cols", "2", "--label-sep", ","], "does not go with",
                 id="label-cols-and-sep"),
])
def test_each_task_bad_input_is_one_clear_error(rows: list[str], flags: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "data.tsv"
    data.write_text("\n".join(rows * 1) + "\n", encoding="utf-8")
    (tmp_path / "names.txt").write_text("alpha\nbeta\n", encoding="utf-8")
    flags = [str(tmp_path / "names.txt") if f == "NAMES" else f for f in flags]
    line = expect_error(capsys, tmp_path, ["train", "--data", str(data), "--no-header", "--text-col", "1",
                                           "--label-col", "2", *flags, "--out", str(tmp_path / "run"), *TINY_FLAGS])
    assert message in line, line


# --- cross-validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_cv_scores_each_task_by_its_own_metrics(task: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    texts = sentences(90, seed=40)
    data = tmp_path / "data.tsv"
    cells = ["|".join(tags(t)) if task == "multilabel" else f"{score(t):.2f}" for t in texts]
    data.write_text("".join(f"{t}\t{c}\n" for t, c in zip(texts, cells, strict=True)), encoding="utf-8")
    flags = ["--label-sep", "|"] if task == "multilabel" else []
    out = tmp_path / "cv"
    assert main(["cv", "--data", str(data), "--no-header", "--text-col", "1", "--label-col", "2", *flags,
                 "--folds", "2", "--out", str(out), "-q", *TINY_FLAGS]) == 0
    result = json.loads((out / "cv.json").read_text())
    assert result["task"] == task and len(result["runs"]) == 2
    expected = {"multilabel": {"micro_f1", "macro_f1", "hamming_loss"}, "regression": {"pearson", "rmse", "r2"}}
    assert expected[task] <= set(result["summary"])
    assert sum(run["n_test"] for run in result["runs"]) == 90  # two folds: every row scored once


# --- exports and LoRA --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_pretrained import _model_folder

    return _model_folder(tmp_path_factory.mktemp("hf"), "llama")


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_hf_export_gives_lastpool_s_outputs_in_transformers_pipeline(task: str, llama: Path, texts: list[str],
                                                                     tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, pipeline

    from lastpool.export import export_hf
    from tests.test_export import assert_serving_engines_can_read
    from tests.test_pretrained import TINY

    labels = [tags(t) for t in texts] if task == "multilabel" else [score(t) for t in texts]
    clf = Classifier(model=str(llama), head_bias=False, **TINY).fit(texts, labels)
    out = export_hf(clf, tmp_path / "hf")
    assert_serving_engines_can_read(out, clf)
    hf = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.problem_type == {"multilabel": "multi_label_classification", "regression": "regression"}[task]
    sample = sentences(12, seed=50)
    results = pipeline("text-classification", model=str(out), device=-1, top_k=None)(sample, truncation=True)
    if task == "regression":
        np.testing.assert_allclose([row[0]["score"] for row in results], clf.predict(sample), atol=1e-4)
    else:
        for row, expected in zip(results, clf.predict_proba(sample), strict=True):
            got = {r["label"]: r["score"] for r in row}
            np.testing.assert_allclose([got[label] for label in clf.labels], expected, atol=1e-4)


def test_regression_with_a_head_bias_and_pairs_are_refused_for_transformers(llama: Path, texts: list[str]) -> None:
    from lastpool.errors import ConfigError
    from lastpool.export import export_hf
    from tests.test_pretrained import TINY

    clf = Classifier(model=str(llama), head_bias=True, **TINY).fit(texts, [score(t) for t in texts])
    with pytest.raises(ConfigError, match="holds the targets' mean"):
        export_hf(clf, Path("/nonexistent/never-written"))
    seconds = sentences(len(texts), seed=3, words=3)
    pairs = Classifier(model=str(llama), **TINY).fit(texts, [score(t) for t in texts], text_pairs=seconds)
    with pytest.raises(ConfigError, match="joins text pairs with its own template"):
        export_hf(pairs, Path("/nonexistent/never-written"))


@pytest.mark.parametrize("task", ["multilabel", "regression", "pairs"])
def test_onnx_export_predicts_what_pytorch_does(task: str, fitted: dict[str, Classifier], tmp_path: Path) -> None:
    from lastpool.export import OnnxClassifier, export_onnx

    clf = fitted[task]
    onnx = OnnxClassifier(export_onnx(clf, tmp_path / "model.onnx"))
    sample = sentences(10, seed=60)
    pairs = sentences(10, seed=61, words=3) if task == "pairs" else None
    np.testing.assert_allclose(onnx.logits(sample, text_pairs=pairs), clf.logits(sample, text_pairs=pairs),
                               atol=1e-4)
    assert onnx.task.name == clf.task.name
    if task == "regression":  # values: equal to the logits' tolerance (onnxruntime's kernels round apart)
        np.testing.assert_allclose(onnx.predict(sample, pairs), clf.predict(sample, pairs), atol=1e-4)
    else:  # labels
        assert onnx.predict(sample, pairs) == clf.predict(sample, pairs)


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_lora_models_reload_with_their_head(task: str, llama: Path, texts: list[str], tmp_path: Path) -> None:
    from tests.test_pretrained import TINY

    labels = [tags(t) for t in texts] if task == "multilabel" else [score(t) for t in texts]
    clf = Classifier(model=str(llama), mode="lora", **{**TINY, "lr": 1e-2}).fit(texts, labels)
    again = Classifier.load(clf.save(tmp_path / "lora"))
    sample = sentences(10, seed=70)
    assert np.array_equal(again.logits(sample), clf.logits(sample)) and again.predict(sample) == clf.predict(sample)


@pytest.mark.parametrize("mode", ["probe", "top-1", "lora", "zeroshot"])
def test_pairs_work_in_every_mode(mode: str, llama: Path, texts: list[str], tmp_path: Path) -> None:
    """Pairs are the template's second slot, so each mode reads them; the saved model predicts the same."""
    from tests.test_pretrained import TINY

    seconds = sentences(len(texts), seed=3, words=3)
    same = ["good" if a.split()[0] == b.split()[0] else "bad" for a, b in zip(texts, seconds, strict=True)]
    clf = Classifier(model=str(llama), mode=mode, **TINY).fit(texts, same, text_pairs=seconds)
    again = Classifier.load(clf.save(tmp_path / mode))
    firsts, pairs = sentences(6, seed=80), sentences(6, seed=81, words=2)
    assert np.array_equal(again.logits(firsts, text_pairs=pairs), clf.logits(firsts, text_pairs=pairs))
    assert set(clf.predict(firsts, text_pairs=pairs)) <= {"good", "bad"}


def test_the_model_card_says_what_each_task_predicts(fitted: dict[str, Classifier], tmp_path: Path) -> None:
    for task, words in (("multilabel", "any of 3 labels"), ("regression", "predicts one number per text")):
        card = (fitted[task].save(tmp_path / task) / "README.md").read_text()
        assert words in card and ("Calibration" in card) == (task == "multilabel")  # per-label temperatures
        assert ("Pearson" in card) == (task == "regression") and ("micro-F1" in card) == (task == "multilabel")


def test_per_label_temperatures_lower_the_validation_log_loss(fitted: dict[str, Classifier]) -> None:
    """Multi-label calibration: a temperature per label, never a worse validation log loss, and the
    calibrated probabilities are what predict_proba and the saved thresholds use."""
    from lastpool.tasks.multilabel import sigmoid

    clf = fitted["multilabel"]
    assert clf.spec is not None and clf.spec.temperatures is not None and clf.calibration is not None
    assert clf.calibration["log_loss_after"] <= clf.calibration["log_loss_before"]
    sample = sentences(8, seed=90)
    raw = clf.logits(sample)
    np.testing.assert_allclose(clf.predict_proba(sample), sigmoid(raw / np.asarray(clf.spec.temperatures)))
