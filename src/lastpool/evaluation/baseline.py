"""A bag-of-words baseline, trained and scored on the same splits as the model.

A fine-tuned language model is only worth its cost if it beats what TF-IDF and a linear SVM reach in
seconds; on many topic or sentiment sets the gap is small, and a report should say so. The baseline is
deterministic (liblinear with a fixed seed), so a rerun reports the same number.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from lastpool.evaluation.metrics import classification_metrics

WORDS_AND_CHARS = "TF-IDF word 1-2-grams and character 2-5-grams + linear SVM"
CHARS_ONLY = "TF-IDF character 2-5-grams + linear SVM"
SVM_C = 0.5


def _word_vectorizer() -> TfidfVectorizer:
    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)


def _char_vectorizer() -> TfidfVectorizer:
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=1)


def _has_terms(vectorizer: TfidfVectorizer, texts: Sequence[str]) -> bool:
    """Whether fitting ``vectorizer`` would find any term (with min_df=1 and no max_df, exactly when one
    text yields one): asked up front, because a fit without terms raises "empty vocabulary"."""
    analyze = vectorizer.build_analyzer()
    return any(analyze(text) for text in texts)


def bag_of_words_pipeline(train_texts: Sequence[str]) -> tuple[Pipeline, str] | None:
    """The unfitted baseline and its description, or None when the training texts hold no n-gram at all.

    Word and character n-grams together; character n-grams alone when no text has a word token (texts
    of punctuation and one-character words), since a vectorizer without terms cannot be fitted.
    """
    char = _char_vectorizer()
    if not _has_terms(char, train_texts):
        return None
    word = _word_vectorizer()
    features: list[tuple[str, TfidfVectorizer]] = [("chars", char)]
    description = CHARS_ONLY
    if _has_terms(word, train_texts):
        features.insert(0, ("words", word))
        description = WORDS_AND_CHARS
    svm = LinearSVC(C=SVM_C, dual="auto", random_state=0)
    return Pipeline([("features", FeatureUnion(features)), ("svm", svm)]), description


def bag_of_words_baseline(train_texts: Sequence[str], train_y: Sequence[int], val_texts: Sequence[str],
                          val_y: Sequence[int], label_names: Sequence[str]) -> dict[str, Any] | None:
    """Fit the baseline on the training split and score it on the validation split.

    Returns ``{"model", "accuracy", "macro_f1", "seconds"}`` (macro-F1 over every label in
    ``label_names``, as for the model; ``seconds`` for fitting and predicting), or None when no
    bag-of-words model can be fitted: an empty split, fewer than two labels among the training texts,
    or texts without a single character n-gram. No number is then better than a majority-class guess
    passed off as a bag-of-words score.
    """
    if not train_texts or not val_texts or len(set(train_y)) < 2:
        return None
    start = time.perf_counter()
    built = bag_of_words_pipeline(train_texts)
    if built is None:
        return None
    pipeline, description = built
    pipeline.fit(list(train_texts), list(train_y))
    predicted = pipeline.predict(list(val_texts)).tolist()
    seconds = time.perf_counter() - start
    metrics = classification_metrics(list(val_y), predicted, label_names)
    return {"model": description, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "seconds": seconds}


def beats_baseline_text(model_accuracy: float, baseline: dict[str, Any]) -> str:
    """How the model compares with the baseline, as a clause: "beats a bag-of-words baseline (...) by +2.10
    points of accuracy" or "does not beat ...: -0.50 points of accuracy".

    The verdict follows the difference as printed (points, two decimals), so the two never disagree: a
    model ahead by 0.00004 "does not beat" it by "+0.00 points".
    """
    baseline_accuracy = float(baseline["accuracy"])
    points = round(100.0 * (float(model_accuracy) - baseline_accuracy), 2) + 0.0  # + 0.0: no "-0.00"
    what = f"a bag-of-words baseline ({baseline['model']}, accuracy {baseline_accuracy:.4f})"
    if points > 0:
        return f"beats {what} by {points:+.2f} points of accuracy"
    return f"does not beat {what}: {points:+.2f} points of accuracy"
