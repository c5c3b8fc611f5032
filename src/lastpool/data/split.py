"""A stratified, seeded train/validation split, with a clear error when the data cannot be split."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from lastpool.errors import ConfigError, DataError


def stratified_split(labels: Sequence[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Sorted (train, val) indices keeping class proportions; the same labels and seed give the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    n = len(labels)
    counts = Counter(labels)
    for label, count in sorted(counts.items(), key=lambda kv: (kv[1], kv[0])):
        if count < 2:
            raise DataError(
                f"class {label!r} has only {count} example; a stratified split needs at least 2 per class "
                "(add examples, drop the class, or pass separate validation data)"
            )
    n_val = math.ceil(val_fraction * n)  # scikit-learn's rounding
    n_train = n - n_val
    k = len(counts)
    if n_val < k or n_train < k:
        part, size = ("validation", n_val) if n_val < k else ("training", n_train)
        raise DataError(
            f"a {part} split of {size} of {n} examples (val_fraction={val_fraction}) cannot hold one "
            f"example of each of the {k} classes; change val_fraction or add data"
        )
    try:
        train, val = train_test_split(
            np.arange(n), test_size=val_fraction, stratify=list(labels), random_state=seed, shuffle=True
        )
    except ValueError as exc:
        raise DataError(f"cannot make a stratified split: {exc}") from exc
    return sorted(int(i) for i in train), sorted(int(i) for i in val)
