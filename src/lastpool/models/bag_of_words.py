"""The bag-of-words model every run fits beside the language model, kept as plain arrays.

TF-IDF word 1-2-grams and character 2-5-grams with a linear SVM: what a practitioner tries first, and on
many-class sets with few texts per class a strong one. It serves twice. It is the baseline a run is
measured against (evaluation/baseline.py), and its per-class margins are a second opinion added to the
LM's logits at a weight chosen on the validation split (training/fusion.py): n-grams catch the rare
identifiers and code tokens that one pooled vector blurs.

It is saved as JSON (vectorizer settings and vocabularies) and safetensors (idf weights, coefficients),
never pickled: a model folder holds nothing that runs code when it is read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from lastpool.errors import ModelLoadError

BOW_SPEC_FILE = "bag_of_words.json"
BOW_WEIGHTS_FILE = "bag_of_words.safetensors"

WORDS_AND_CHARS = "TF-IDF word 1-2-grams and character 2-5-grams + linear SVM"
CHARS_ONLY = "TF-IDF character 2-5-grams + linear SVM"
SVM_C = 0.5
# The margin of a class that no training text carries: far below any fitted margin (those stay within a
# few units of 0 on TF-IDF features), so the model never picks it, as the SVM itself never would.
ABSENT_CLASS_MARGIN = -10.0

SETTINGS: dict[str, dict[str, Any]] = {
    "words": {"analyzer": "word", "ngram_range": (1, 2), "sublinear_tf": True},
    "chars": {"analyzer": "char_wb", "ngram_range": (2, 5), "sublinear_tf": True, "min_df": 1},
}


def _vectorizer(name: str, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(**SETTINGS[name], vocabulary=vocabulary)


def _has_terms(vectorizer: TfidfVectorizer, texts: Sequence[str]) -> bool:
    """Whether fitting ``vectorizer`` would find any term (with min_df=1 and no max_df, exactly when one
    text yields one): asked up front, because a fit without terms raises "empty vocabulary"."""
    analyze = vectorizer.build_analyzer()
    return any(analyze(text) for text in texts)


def bag_of_words_pipeline(train_texts: Sequence[str]) -> tuple[Pipeline, str] | None:
    """The unfitted scikit-learn pipeline and its description, or None when the training texts hold no
    n-gram at all.

    Word and character n-grams together; character n-grams alone when no text has a word token (texts
    of punctuation and one-character words), since a vectorizer without terms cannot be fitted.
    """
    if not _has_terms(_vectorizer("chars"), train_texts):
        return None
    names = ["words", "chars"] if _has_terms(_vectorizer("words"), train_texts) else ["chars"]
    svm = LinearSVC(C=SVM_C, dual="auto", random_state=0)
    union = FeatureUnion([(name, _vectorizer(name)) for name in names])
    return Pipeline([("features", union), ("svm", svm)]), WORDS_AND_CHARS if len(names) == 2 else CHARS_ONLY


@dataclass
class BagOfWords:
    """A fitted bag-of-words model: one score per class and text (the SVM's margins), for every class in
    the run's label order, including classes no training text carries."""

    description: str
    vectorizers: list[tuple[str, TfidfVectorizer]]  # fitted, in feature order
    coef: np.ndarray  # [classes, features] float32
    intercept: np.ndarray  # [classes] float32

    @classmethod
    def fit(cls, texts: Sequence[str], labels: Sequence[int], num_labels: int) -> BagOfWords | None:
        """Fit on the training split (deterministic: liblinear with a fixed seed); None when no bag-of-words
        model can be fitted (fewer than two classes, or no text with a character n-gram)."""
        if len(set(labels)) < 2:
            return None
        built = bag_of_words_pipeline(texts)
        if built is None:
            return None
        pipeline, description = built
        pipeline.fit(list(texts), list(labels))
        svm: LinearSVC = pipeline.named_steps["svm"]
        classes = [int(c) for c in svm.classes_]
        weights, bias = svm.coef_.astype(np.float32), svm.intercept_.astype(np.float32)
        if len(classes) == 2:  # liblinear keeps one row for two classes; the first class is its negation
            weights, bias = np.concatenate([-weights, weights]), np.concatenate([-bias, bias])
        coef = np.zeros((num_labels, weights.shape[1]), dtype=np.float32)
        intercept = np.full(num_labels, ABSENT_CLASS_MARGIN, dtype=np.float32)
        coef[classes], intercept[classes] = weights, bias
        union: FeatureUnion = pipeline.named_steps["features"]
        return cls(description, list(union.transformer_list), coef, intercept)

    @property
    def num_features(self) -> int:
        return int(self.coef.shape[1])

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """The margins [N, classes], float32."""
        if not texts:
            return np.zeros((0, self.coef.shape[0]), dtype=np.float32)
        features = sp.hstack([vectorizer.transform(list(texts)) for _, vectorizer in self.vectorizers]).tocsr()
        return np.asarray(features @ self.coef.T + self.intercept, dtype=np.float32)

    def predict(self, texts: Sequence[str]) -> list[int]:
        return self.scores(texts).argmax(axis=1).tolist()

    # ------------------------------------------------------------- persistence
    def save(self, folder: Path) -> None:
        """Write both files into ``folder`` (a staging folder: the caller makes the whole save atomic)."""
        spec = {"description": self.description, "vectorizers": [
            {"name": name, "vocabulary": sorted(v.vocabulary_, key=v.vocabulary_.__getitem__)}
            for name, v in self.vectorizers]}
        arrays = {f"idf.{name}": np.asarray(v.idf_, dtype=np.float64) for name, v in self.vectorizers}
        arrays.update(coef=np.ascontiguousarray(self.coef), intercept=self.intercept)
        save_file(arrays, str(folder / BOW_WEIGHTS_FILE))
        (folder / BOW_SPEC_FILE).write_text(json.dumps(spec, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, num_labels: int) -> BagOfWords:
        """Read what ``save`` wrote; anything missing, corrupt or inconsistent is a ModelLoadError."""
        spec_path, weights_path = folder / BOW_SPEC_FILE, folder / BOW_WEIGHTS_FILE
        for path in (spec_path, weights_path):
            if not path.is_file():
                raise ModelLoadError(f"{folder}: missing {path.name} (the model's bag-of-words part)")
        try:
            spec = json.loads(spec_path.read_text(encoding="utf-8"))
            arrays = load_file(str(weights_path))
            vectorizers = []
            for entry in spec["vectorizers"]:
                name, words = entry["name"], entry["vocabulary"]
                vectorizer = _vectorizer(name, {word: i for i, word in enumerate(words)})
                vectorizer.idf_ = arrays[f"idf.{name}"]  # checked against the vocabulary's size
                vectorizers.append((name, vectorizer))
            coef, intercept = arrays["coef"], arrays["intercept"]
            total = sum(len(v.vocabulary_) for _, v in vectorizers)
            if coef.shape != (num_labels, total) or intercept.shape != (num_labels,):
                raise ValueError(f"coefficients {coef.shape} do not fit {num_labels} labels and {total} terms")
            return cls(str(spec["description"]), vectorizers, coef, intercept)
        except (OSError, SafetensorError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{folder}: invalid bag-of-words part ({exc})") from None
