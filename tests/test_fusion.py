"""The bag-of-words model kept as arrays, and its fusion with the language model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lastpool import Classifier
from lastpool.cli import app
from lastpool.errors import ModelLoadError
from lastpool.models.bag_of_words import (
    ABSENT_CLASS_MARGIN,
    BOW_SPEC_FILE,
    BOW_WEIGHTS_FILE,
    BagOfWords,
    bag_of_words_pipeline,
)
from lastpool.training.fusion import SHARES, choose_weight, fuse
from tests.conftest import TINY_FLAGS, TINY_KW, demo_sample
from tests.test_baseline import separable


def test_stored_arrays_score_as_the_fitted_pipeline() -> None:
    """The margins from the arrays are scikit-learn's decision_function, for many classes and for two."""
    texts, labels = separable(200, seed=0)
    queries = separable(40, seed=1)[0]
    built = bag_of_words_pipeline(texts)
    assert built is not None
    pipeline = built[0].fit(texts, labels)
    bow = BagOfWords.fit(texts, labels, 3)
    assert bow is not None
    np.testing.assert_allclose(bow.scores(queries), pipeline.decision_function(queries), atol=1e-5)

    binary = [min(y, 1) for y in labels]  # two classes: liblinear keeps a single row
    pipeline = built[0].fit(texts, binary)
    bow = BagOfWords.fit(texts, binary, 2)
    assert bow is not None
    margin = pipeline.decision_function(queries)
    np.testing.assert_allclose(bow.scores(queries), np.stack([-margin, margin], axis=1), atol=1e-5)
    assert bow.predict(queries) == pipeline.predict(queries).tolist()


def test_a_class_without_training_texts_is_never_predicted() -> None:
    texts, labels = separable(150, seed=0)
    bow = BagOfWords.fit(texts, labels, 4)  # label 3 has no text
    assert bow is not None
    scores = bow.scores(separable(50, seed=2)[0])
    assert np.all(scores[:, 3] == ABSENT_CLASS_MARGIN)
    assert 3 not in scores.argmax(axis=1)


def test_save_and_load_round_trip_without_pickle(tmp_path: Path) -> None:
    texts, labels = separable(150, seed=0)
    bow = BagOfWords.fit(texts, labels, 3)
    assert bow is not None
    bow.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([BOW_SPEC_FILE, BOW_WEIGHTS_FILE])
    back = BagOfWords.load(tmp_path, 3)
    queries = separable(30, seed=3)[0] + ["", "!!! ??", "word never seen"]
    np.testing.assert_array_equal(back.scores(queries), bow.scores(queries))
    assert back.description == bow.description and back.num_features == bow.num_features


def test_a_damaged_bag_of_words_part_is_refused(tmp_path: Path) -> None:
    texts, labels = separable(150, seed=0)
    bow = BagOfWords.fit(texts, labels, 3)
    assert bow is not None
    bow.save(tmp_path)
    with pytest.raises(ModelLoadError, match="do not fit 4 labels"):
        BagOfWords.load(tmp_path, 4)
    spec = json.loads((tmp_path / BOW_SPEC_FILE).read_text())
    spec["vectorizers"][0]["vocabulary"].pop()
    (tmp_path / BOW_SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(ModelLoadError, match="invalid bag-of-words part"):
        BagOfWords.load(tmp_path, 3)
    (tmp_path / BOW_WEIGHTS_FILE).unlink()
    with pytest.raises(ModelLoadError, match=f"missing {BOW_WEIGHTS_FILE}"):
        BagOfWords.load(tmp_path, 3)


def _onehot_scores(y: np.ndarray, classes: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    return 3.0 * np.eye(classes)[y] + rng.normal(0.0, noise, size=(len(y), classes))


def test_the_share_follows_which_side_carries_the_signal() -> None:
    """Uninformative margins get share 0 (the LM alone); an uninformative LM leaves the most to them."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=400)
    informative, noise = _onehot_scores(y, 4, 1.5, rng), rng.normal(0.0, 1.5, size=(400, 4))
    ignored = choose_weight(informative, noise, y.tolist())
    # Pure noise gets a temperature so high that whatever share it is given hardly moves a logit.
    assert ignored.log_loss[ignored.share] > ignored.log_loss[0.0] - 5e-3
    fused = fuse(informative, noise, ignored.weight)
    assert (fused.argmax(axis=1) == informative.argmax(axis=1)).mean() > 0.97  # a few texts near a tie
    lm_useless = choose_weight(noise, informative, y.tolist())
    assert lm_useless.share > 0
    following = fuse(noise, informative, lm_useless.weight).argmax(axis=1) == informative.argmax(axis=1)
    assert following.mean() > 0.97  # the fused model follows the margins
    both = choose_weight(_onehot_scores(y, 4, 2.0, rng), _onehot_scores(y, 4, 2.0, rng), y.tolist())
    assert 0.0 < both.share < max(SHARES)  # two independent, equally good opinions: each has a say
    assert set(both.log_loss) == set(SHARES)


def test_the_share_does_not_depend_on_the_logits_scale() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=300)
    lm, bow = _onehot_scores(y, 3, 2.0, rng), _onehot_scores(y, 3, 2.5, rng)
    assert choose_weight(lm, bow, y.tolist()).share == choose_weight(10.0 * lm, bow, y.tolist()).share
    np.testing.assert_array_equal(fuse(lm, bow, 0.0), lm.astype(np.float32))


def _fused_classifier() -> tuple[Classifier, list[str], list[str]]:
    texts, labels = demo_sample()
    clf = Classifier(**{**TINY_KW, "fuse_baseline": True}, seed=0).fit(texts, labels)
    assert clf.spec is not None and clf.spec.fusion is not None, "the tiny model should leave a share to n-grams"
    return clf, texts, labels


def test_a_fused_model_saves_loads_and_predicts_the_same(tmp_path: Path) -> None:
    clf, texts, _ = _fused_classifier()
    assert clf.bag_of_words is not None and clf.fusion is not None and clf.spec is not None
    sample = texts[:30]
    alone = clf.language_model_logits(sample)
    np.testing.assert_allclose(clf.logits(sample), alone + clf.spec.fusion.weight * clf.bag_of_words.scores(sample),
                               rtol=1e-5, atol=1e-5)
    # The validation scores are the fused model's; the LM's own stay beside them.
    assert clf.spec.metrics["val_accuracy"] == clf.result.val_metrics["accuracy"]  # type: ignore[union-attr]
    assert set(clf.fusion["language_model"]) == {"accuracy", "macro_f1"}
    folder = clf.save(tmp_path / "model")
    assert (folder / BOW_SPEC_FILE).is_file() and (folder / BOW_WEIGHTS_FILE).is_file()
    back = Classifier.load(folder)
    np.testing.assert_array_equal(back.predict_proba(sample), clf.predict_proba(sample))
    lm_only = back.language_model_only()
    assert lm_only.spec is not None and lm_only.spec.fusion is None
    assert lm_only.spec.temperature == clf.spec.fusion.language_model_temperature
    np.testing.assert_array_equal(lm_only.logits(sample), back.language_model_logits(sample))
    (folder / BOW_SPEC_FILE).unlink()
    with pytest.raises(ModelLoadError, match=f"missing {BOW_SPEC_FILE}"):
        Classifier.load(folder)


def test_fusion_off_keeps_the_language_model_alone(tmp_path: Path) -> None:
    texts, labels = demo_sample()
    for overrides in ({"fuse_baseline": False}, {"baseline": False}):
        tiny = {k: v for k, v in TINY_KW.items() if k != "fuse_baseline"}
        clf = Classifier(**tiny, **overrides, seed=0).fit(texts, labels)
        assert clf.spec is not None and clf.spec.fusion is None and clf.bag_of_words is None
        folder = clf.save(tmp_path / next(iter(overrides)))
        assert not (folder / BOW_SPEC_FILE).exists()
        np.testing.assert_array_equal(clf.logits(texts[:5]), clf.language_model_logits(texts[:5]))


def test_cli_reports_the_fusion_and_eval_scores_the_lm_alone(tmp_path: Path) -> None:
    texts, labels = demo_sample()
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)))
    run = tmp_path / "run"
    flags = [flag for flag in TINY_FLAGS if flag != "--no-fuse-baseline"]
    result = CliRunner().invoke(app, ["train", "--data", str(data), *flags, "--out", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert "fused with the bag-of-words model at share" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fusion"]["share"] > 0 and metrics["fusion"]["language_model"]["accuracy"] is not None
    assert "language model alone" in (run / "report.md").read_text()
    both = []
    for flags in ([], ["--language-model-only"]):
        scored = CliRunner().invoke(app, ["eval", str(run), "--data", str(data), "--json", *flags])
        assert scored.exit_code == 0, scored.output
        both.append(json.loads(scored.stdout))
    clf = Classifier.load(run)
    assert both[0]["accuracy"] == clf.evaluate(texts, labels)["accuracy"]
    assert both[1]["accuracy"] == clf.language_model_only().evaluate(texts, labels)["accuracy"]
    assert both[0]["log_loss"] != both[1]["log_loss"]
    exported = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert exported.exit_code == 0, exported.output
    assert "the export holds the language model alone" in exported.output
