"""Metrics against scikit-learn on known inputs, the expected calibration error, and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, precision_recall_fscore_support

from lastpool import Classifier
from lastpool.evaluation.calibration import expected_calibration_error, fit_temperature, nll, reliability_bins, softmax
from lastpool.evaluation.metrics import classification_metrics
from tests.conftest import demo_sample

Y_TRUE = [0, 0, 1, 1, 2, 2, 2, 0, 1, 2]
Y_PRED = [0, 1, 1, 1, 2, 0, 2, 0, 2, 2]
PROBA = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8],
                  [0.5, 0.2, 0.3], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05], [0.1, 0.3, 0.6], [0.05, 0.05, 0.9]])


def test_metrics_match_scikit_learn() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"], PROBA)
    assert m["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED)) == pytest.approx(0.7)
    assert m["macro_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="weighted"))
    precision, recall, f1, support = precision_recall_fscore_support(Y_TRUE, Y_PRED)
    for i, name in enumerate("abc"):
        row = m["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i]))
    assert m["confusion_matrix"] == confusion_matrix(Y_TRUE, Y_PRED).tolist()
    assert m["log_loss"] == pytest.approx(log_loss(Y_TRUE, PROBA))


def test_ece_by_hand() -> None:
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right): bins [0.8667, 0.9333] and [0.6, 0.6667].
    proba = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y = [0, 0, 0, 1]
    # bin of 0.9: accuracy 0.5, confidence 0.9 -> gap 0.4; bin of 0.6: accuracy 1.0, confidence 0.6 -> gap 0.4
    assert expected_calibration_error(proba, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    bins = reliability_bins(proba, y)
    assert sum(b["count"] for b in bins) == 4 and len(bins) == 15
    assert expected_calibration_error(np.array([[1.0, 0.0], [0.0, 1.0]]), [0, 1]) == 0.0
    assert classification_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"], PROBA)["ece"] == pytest.approx(
        expected_calibration_error(PROBA, Y_TRUE))


def test_temperature_scaling_fixes_an_over_confident_model() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 3, n)
    honest = rng.normal(0, 1, (n, 3))
    honest[np.arange(n), y] += 1.5  # right about 3 times in 4
    over = honest * 4.0  # the same predictions, far too sure of them
    t = fit_temperature(over, y)
    assert t == pytest.approx(4.0 * fit_temperature(honest, y), rel=1e-3)  # scaling the logits scales T
    before, after = expected_calibration_error(softmax(over), y), expected_calibration_error(softmax(over, t), y)
    assert after < before / 3
    assert nll(over, y, t) < nll(over, y, 1.0)
    assert (softmax(over, t).argmax(1) == softmax(over).argmax(1)).all()  # no prediction changes
    assert fit_temperature(np.zeros((0, 3)), []) == 1.0


def test_classifier_saves_and_applies_its_temperature(tmp_path) -> None:  # noqa: ANN001
    texts, labels = demo_sample()
    clf = Classifier(epochs=3, seed=0).fit(texts, labels)
    assert clf.spec is not None and clf.calibration is not None
    t = clf.spec.temperature
    assert t == clf.calibration["temperature"] and t != 1.0
    assert clf.calibration["log_loss_after"] <= clf.calibration["log_loss_before"]
    np.testing.assert_allclose(clf.predict_proba(texts[:5]), softmax(clf.logits(texts[:5]), t), rtol=1e-6)
    loaded = Classifier.load(clf.save(tmp_path / "m"))
    assert loaded.spec is not None and loaded.spec.temperature == t
    off = Classifier(epochs=3, seed=0, calibrate=False).fit(texts, labels)
    assert off.spec is not None and off.spec.temperature == 1.0 and off.calibration is None
