"""The Python API end to end: fit, predict, evaluate, save/load, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from lastpool import Classifier, RunConfig
from lastpool.errors import ConfigError, DataError, ModelLoadError
from lastpool.runs import write_run
from tests.conftest import TINY_KW, demo_sample

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def data() -> tuple[list[str], list[str]]:
    return demo_sample()


@pytest.fixture(scope="module")
def held_out() -> tuple[list[str], list[str]]:
    return demo_sample(per_class=10, offset=40)


@pytest.fixture(scope="module")
def fitted(data: tuple[list[str], list[str]]) -> Classifier:
    texts, labels = data
    return Classifier(**TINY_KW).fit(texts, labels)


def _history_without_timing(clf: Classifier) -> list[dict[str, Any]]:
    assert clf.result is not None
    return [{k: v for k, v in record.items() if k != "seconds"} for record in clf.result.history]


def test_fit_predict_shapes_and_probabilities(fitted: Classifier, held_out: tuple[list[str], list[str]]) -> None:
    texts, _ = held_out
    assert fitted.labels == LABELS  # sorted by default
    proba = fitted.predict_proba(texts)
    assert proba.shape == (len(texts), 3)
    assert proba.dtype == np.float32
    assert np.all(proba >= 0) and np.all(proba <= 1)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    predictions = fitted.predict(texts)
    assert len(predictions) == len(texts)
    assert predictions == [LABELS[i] for i in proba.argmax(axis=1)]
    assert fitted.logits(texts).shape == (len(texts), 3)


def test_fit_records_history_and_validation(fitted: Classifier) -> None:
    result = fitted.result
    assert result is not None
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert 1 <= result.best_epoch <= 2
    assert result.val_metrics["n"] == 6  # ceil(0.1 * 60) stratified validation rows
    assert result.val_metrics["labels"] == LABELS
    best = result.history[result.best_epoch - 1]
    assert best["val_macro_f1"] == max(r["val_macro_f1"] for r in result.history)
    assert result.val_metrics["macro_f1"] == best["val_macro_f1"]
    assert result.train_samples == 2 * 54 and result.train_seconds > 0


def test_predict_empty_and_unfitted(fitted: Classifier) -> None:
    assert fitted.predict_proba([]).shape == (0, 3)
    assert fitted.predict([]) == []
    with pytest.raises(ModelLoadError, match="not fitted"):
        Classifier().predict(["hello"])
    with pytest.raises(DataError, match="item 2 is an empty text"):
        fitted.predict(["fine", "   "])


def test_prediction_is_the_same_alone_or_in_a_batch(fitted: Classifier, held_out: tuple[list[str], list[str]]) -> None:
    texts = held_out[0][:12]
    batched = fitted.logits(texts)
    alone = np.concatenate([fitted.logits([t]) for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_save_load_roundtrip_is_exact(fitted: Classifier, held_out: tuple[list[str], list[str]],
                                      tmp_path: Path) -> None:
    texts, _ = held_out
    folder = fitted.save(tmp_path / "model")
    assert {"lastpool.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in folder.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    spec = json.loads((folder / "lastpool.json").read_text())
    assert spec["labels"] == LABELS and spec["pooling"] == "last" and spec["max_length"] == 32

    loaded = Classifier.load(folder)
    assert loaded.labels == fitted.labels
    assert np.array_equal(loaded.predict_proba(texts), fitted.predict_proba(texts))
    assert loaded.predict(texts) == fitted.predict(texts)
    assert loaded.encoder is not None and fitted.encoder is not None
    assert loaded.encoder.encode(texts) == fitted.encoder.encode(texts)

    # Saving again over a model folder replaces it; over another non-empty folder it refuses.
    fitted.save(folder)
    assert np.array_equal(Classifier.load(folder).predict_proba(texts), fitted.predict_proba(texts))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="not a lastpool model folder"):
        fitted.save(other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_a_loaded_model_re_saves_the_same_model_card(fitted: Classifier, tmp_path: Path) -> None:
    """The data summary, the validation size and the calibration live in lastpool.json, so a loaded model
    knows them and its re-saved README.md is the card it was trained with (not "Source: unknown, Rows: 0")."""
    first = fitted.save(tmp_path / "first")
    loaded = Classifier.load(first)
    assert loaded.data_info == fitted.data_info and loaded.data_info["rows"] > 0
    assert loaded.calibration == fitted.calibration
    second = loaded.save(tmp_path / "second")
    card = (second / "README.md").read_text()
    assert card == (first / "README.md").read_text()
    assert "Rows: 0" not in card and "unknown" not in card


def test_load_accepts_run_directory_and_model_folder(fitted: Classifier, held_out: tuple[list[str], list[str]],
                                                     tmp_path: Path) -> None:
    texts, _ = held_out
    run = write_run(fitted, tmp_path / "run", fitted.config)
    expected = fitted.predict_proba(texts)
    for path in (run, run / "model", str(run)):
        assert np.array_equal(Classifier.load(path).predict_proba(texts), expected)
    with pytest.raises(ModelLoadError, match="no such model folder"):
        Classifier.load(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="not a lastpool model folder"):
        Classifier.load(tmp_path)


def test_fit_with_separate_eval_set(data: tuple[list[str], list[str]],
                                    held_out: tuple[list[str], list[str]]) -> None:
    texts, labels = data
    eval_texts, eval_labels = held_out
    clf = Classifier(**TINY_KW).fit(texts, labels, eval_texts=eval_texts, eval_labels=eval_labels)
    assert clf.result is not None
    assert clf.result.val_metrics["n"] == len(eval_texts)
    assert clf.result.train_samples == 2 * len(texts)  # nothing held back for validation
    # The saved validation metrics are those of the kept (best) weights on the eval set.
    again = clf.evaluate(eval_texts, eval_labels)
    assert again["accuracy"] == pytest.approx(clf.result.val_metrics["accuracy"])
    assert again["macro_f1"] == pytest.approx(clf.result.val_metrics["macro_f1"])

    with pytest.raises(DataError, match="never seen in training"):
        Classifier(**TINY_KW).fit(texts, labels, eval_texts=eval_texts[:2], eval_labels=["neutral", "mystery"])
    with pytest.raises(DataError, match="both eval_texts and eval_labels"):
        Classifier(**TINY_KW).fit(texts, labels, eval_texts=eval_texts)


def test_same_seed_is_bitwise_reproducible(data: tuple[list[str], list[str]], fitted: Classifier) -> None:
    texts, labels = data
    again = Classifier(**TINY_KW).fit(texts, labels)
    assert fitted.model is not None and again.model is not None
    a, b = fitted.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _history_without_timing(again) == _history_without_timing(fitted)
    assert again.encoder is not None and fitted.encoder is not None
    assert again.encoder.tokenizer.get_vocab() == fitted.encoder.tokenizer.get_vocab()


def test_different_seed_gives_different_weights(data: tuple[list[str], list[str]], fitted: Classifier) -> None:
    texts, labels = data
    other = Classifier(**{**TINY_KW, "seed": 1}).fit(texts, labels)
    assert fitted.model is not None and other.model is not None
    a, b = fitted.model.state_dict(), other.model.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_matches_sklearn(fitted: Classifier, held_out: tuple[list[str], list[str]]) -> None:
    texts, labels = held_out
    metrics = fitted.evaluate(texts, labels)
    predictions = fitted.predict(texts)
    assert metrics["n"] == len(texts)
    assert metrics["labels"] == LABELS
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(labels, predictions, labels=LABELS, average="macro", zero_division=0))
    assert metrics["weighted_f1"] == pytest.approx(
        f1_score(labels, predictions, labels=LABELS, average="weighted", zero_division=0))
    p, r, f, s = precision_recall_fscore_support(labels, predictions, labels=LABELS, zero_division=0)
    assert list(metrics["per_class"]) == LABELS
    for i, name in enumerate(LABELS):
        row = metrics["per_class"][name]
        assert row == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
        assert row["support"] == 10
    assert metrics["confusion_matrix"] == confusion_matrix(labels, predictions, labels=LABELS).tolist()
    assert metrics["log_loss"] > 0
    with pytest.raises(DataError, match="'mystery' never seen in training"):
        fitted.evaluate(texts[:1], ["mystery"])


def test_label_order_and_config_overrides(data: tuple[list[str], list[str]]) -> None:
    texts, labels = data
    order = ["positive", "negative", "neutral"]
    base = RunConfig(**{**TINY_KW, "epochs": 5})
    clf = Classifier(config=base, labels=order, epochs=1)
    assert clf.config.epochs == 1 and clf.config.d_model == 16 and clf.config.labels == order
    clf.fit(texts, labels)
    assert clf.labels == order
    proba = clf.predict_proba(texts[:5])
    assert clf.predict(texts[:5]) == [order[i] for i in proba.argmax(axis=1)]
    assert clf.result is not None and len(clf.result.history) == 1


def test_integer_labels_sort_numerically(data: tuple[list[str], list[str]]) -> None:
    texts, labels = data
    mapping = {"negative": 10, "neutral": 2, "positive": 1}
    clf = Classifier(**{**TINY_KW, "epochs": 1}).fit(texts, [mapping[x] for x in labels])
    assert clf.labels == ["1", "2", "10"]
    assert set(clf.predict(texts[:5])) <= {"1", "2", "10"}


def test_training_reshuffles_batches_every_epoch(data: tuple[list[str], list[str]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's data loader (wrapped by Accelerate) must still see the sampler's per-epoch reseed."""
    from lastpool.data import batching

    seen: list[tuple[int, list[list[int]]]] = []
    original = batching.LengthBucketSampler.batches

    def spy(self: batching.LengthBucketSampler) -> list[list[int]]:
        result = original(self)
        seen.append((self.epoch, result))
        return result

    monkeypatch.setattr(batching.LengthBucketSampler, "batches", spy)
    texts, labels = data
    Classifier(**{**TINY_KW, "epochs": 3}).fit(texts, labels)
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    orders = [batches for _, batches in seen]
    assert orders[0] != orders[1] != orders[2]
    assert all(sorted(i for b in batches for i in b) == list(range(54)) for batches in orders)


def test_a_loaded_model_round_trips_its_config(fitted: Classifier, tmp_path: Path) -> None:
    """The resolved settings (recipe values and auto epochs included) are saved in lastpool.json, so a loaded
    classifier's config is the one it was trained with, not the defaults, and so is a re-saved one's."""
    loaded = Classifier.load(fitted.save(tmp_path / "first"))
    assert loaded.config == fitted.config and loaded.config != Classifier().config
    assert Classifier.load(loaded.save(tmp_path / "second")).config == fitted.config


def test_a_model_folder_whose_settings_this_version_cannot_read_loads_with_a_warning(
        fitted: Classifier, tmp_path: Path) -> None:
    folder = fitted.save(tmp_path / "model")
    spec = json.loads((folder / "lastpool.json").read_text())
    spec["config"]["no_such_setting"] = 1
    (folder / "lastpool.json").write_text(json.dumps(spec))
    with pytest.warns(UserWarning, match="training settings do not fit"):
        loaded = Classifier.load(folder)
    assert loaded.config == Classifier().config
    assert loaded.predict(["Profit rose."]) == fitted.predict(["Profit rose."])


def test_sklearn_clone_and_set_params_carry_the_chosen_settings(fitted: Classifier, tmp_path: Path) -> None:
    """clone gives an unfitted classifier with the same chosen settings (the recipe resolves the rest the
    same way); set_params checks its values as the constructor does; a loaded model clones to its settings."""
    from sklearn.base import clone

    copy = clone(fitted)
    # the same settings, less what the fit resolved from the data (task auto became single)
    assert copy.model is None and copy.get_params() == fitted.get_params()
    assert copy.config.task == "auto" and fitted.config.task == "single"
    assert copy.config.model_dump(exclude={"task"}) == fitted.config.model_dump(exclude={"task"})
    assert copy.set_params(epochs=2).config.epochs == 2 and copy.get_params()["epochs"] == 2
    with pytest.raises(ConfigError, match="lr"):
        copy.set_params(lr=-1.0)
    assert copy.config.epochs == 2  # a refused change leaves the settings as they were
    loaded = Classifier.load(fitted.save(tmp_path / "model"))
    assert clone(loaded).config == fitted.config


def test_the_run_length_summary_counts_every_training_row_once(fitted: Classifier,
                                                               data: tuple[list[str], list[str]],
                                                               tmp_path: Path) -> None:
    """The fit counts the tokens of every row (training and validation split) as it tokenizes them, so the
    run directory's summary equals a fresh count over the whole file, with no second tokenizer pass."""
    from lastpool.evaluation.metrics import length_summary

    texts, _ = data
    assert fitted.encoder is not None and fitted.token_lengths is not None
    assert sorted(fitted.token_lengths) == sorted(fitted.encoder.lengths(texts))
    run = write_run(fitted, tmp_path / "run", fitted.config)
    saved = json.loads((run / "metrics.json").read_text())["data"]
    assert saved == length_summary(fitted.encoder.lengths(texts), fitted.config.max_length)
