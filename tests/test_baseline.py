"""The bag-of-words baseline that every run reports beside the model, and the sentence comparing the two."""

from __future__ import annotations

import numpy as np
import pytest

from lastpool.evaluation.baseline import bag_of_words_baseline, beats_baseline_text
from lastpool.models.bag_of_words import CHARS_ONLY, WORDS_AND_CHARS

LABELS = ["sport", "finance", "weather"]
CUES = [["goal", "match", "striker", "referee"], ["shares", "profit", "dividend", "market"],
        ["rain", "storm", "sunny", "forecast"]]
NOISE = ["the", "a", "today", "report", "said", "new", "local", "people", "week", "after"]
BASELINE = {"model": "TF-IDF + linear SVM", "accuracy": 0.902, "macro_f1": 0.89, "seconds": 1.0}


def separable(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Texts of shared noise words plus two cue words of their class: linearly separable on words."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, len(LABELS)))
        words = [*rng.choice(NOISE, size=6), *rng.choice(CUES[label], size=2)]
        texts.append(" ".join(rng.permutation(words)))
        labels.append(label)
    return texts, labels


def test_baseline_beats_chance_on_separable_texts() -> None:
    train, val = separable(300, seed=0), separable(120, seed=1)
    result = bag_of_words_baseline(*train, *val, LABELS)
    assert result is not None
    assert set(result) == {"model", "accuracy", "macro_f1", "seconds"}
    assert result["model"] == WORDS_AND_CHARS
    assert result["accuracy"] > 0.9 and result["macro_f1"] > 0.9  # chance is 1/3
    assert isinstance(result["accuracy"], float) and isinstance(result["macro_f1"], float)
    assert 0.0 < result["seconds"] < 30.0


def test_baseline_is_exactly_reproducible() -> None:
    """Same inputs, same scores to the last bit (only the timing may differ)."""
    train, val = separable(300, seed=2), separable(120, seed=3)
    first = bag_of_words_baseline(*train, *val, LABELS)
    second = bag_of_words_baseline(*train, *val, LABELS)
    assert first is not None and second is not None
    assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in second.items() if k != "seconds"}


def test_label_with_one_training_example_or_none_is_fine() -> None:
    """A label seen once in training, and one never seen, still give scores; macro-F1 averages over every
    label, so the unseen one (F1 0) caps it at 3/4."""
    texts, labels = separable(200, seed=4)
    texts, labels = texts + ["rain storm forecast"], [0 if y == 2 else y for y in labels] + [2]
    val_texts, val_labels = ["rain storm today", "goal match", "shares profit", "no words in common"], [2, 0, 1, 3]
    result = bag_of_words_baseline(texts, labels, val_texts, val_labels, [*LABELS, "unseen"])
    assert result is not None and result["accuracy"] <= 0.75  # "unseen" is never predicted
    assert 0.0 <= result["macro_f1"] <= 0.75


def test_texts_without_word_tokens_fall_back_to_character_ngrams() -> None:
    """One-letter words and punctuation give the word vectorizer an empty vocabulary; the baseline
    uses character n-grams alone instead of failing."""
    train_texts, train_y = ["a a !", "b b ?", "a !", "b ?"] * 10, [0, 1, 0, 1] * 10
    result = bag_of_words_baseline(train_texts, train_y, ["a !!", "b ??"], [0, 1], ["x", "y"])
    assert result is not None and result["model"] == CHARS_ONLY and result["accuracy"] == 1.0


@pytest.mark.parametrize(("train_texts", "train_y", "val_texts"), [
    (["", " ", "\n"] * 4, [0, 1, 0] * 4, ["a text"]),  # no n-gram at all
    (["one class only", "still one class"], [0, 0], ["a text"]),  # an SVM needs two classes
    ([], [], ["a text"]),
    (["some text", "other text"], [0, 1], []),
], ids=["empty-texts", "one-class", "no-train", "no-val"])
def test_degenerate_inputs_give_none(train_texts: list[str], train_y: list[int], val_texts: list[str]) -> None:
    """Where no bag-of-words model can be fitted or scored there is no baseline (None), never an exception."""
    assert bag_of_words_baseline(train_texts, train_y, val_texts, [0] * len(val_texts), ["x", "y"]) is None


def test_sentence_says_beats_with_a_plus_sign() -> None:
    assert beats_baseline_text(0.923, BASELINE) == (
        "beats a bag-of-words baseline (TF-IDF + linear SVM, accuracy 0.9020) by +2.10 points of accuracy")


def test_sentence_says_does_not_beat_with_a_minus_sign() -> None:
    assert beats_baseline_text(0.897, BASELINE) == (
        "does not beat a bag-of-words baseline (TF-IDF + linear SVM, accuracy 0.9020): -0.50 points of accuracy")


@pytest.mark.parametrize("accuracy", [0.902, 0.90204, 0.90196])
def test_sentence_verdict_follows_the_printed_difference(accuracy: float) -> None:
    """A tie, or a gap that rounds to 0.00 points, "does not beat" the baseline, and never shows "-0.00"."""
    text = beats_baseline_text(accuracy, BASELINE)
    assert text.startswith("does not beat") and text.endswith(": +0.00 points of accuracy")
