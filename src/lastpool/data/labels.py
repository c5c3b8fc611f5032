"""The ordered set of class names; the order fixes which logit is which class, so it must be stable."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from lastpool.errors import ConfigError, DataError

_INT = re.compile(r"[+-]?\d+")


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


@dataclass(frozen=True)
class LabelSet:
    """Class names in logit order, with encoding to and from integer ids."""

    names: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        dupes = [n for n, c in Counter(self.names).items() if c > 1]
        if dupes:
            raise ConfigError(f"duplicate label names: {_quoted(dupes)}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.names)})

    @classmethod
    def from_labels(cls, labels: Sequence[str], order: Sequence[str] | None = None) -> LabelSet:
        """Build from observed labels: the explicit order if given, else sorted (numerically for ints)."""
        seen = set(labels)
        if order is not None:
            dupes = [n for n, c in Counter(order).items() if c > 1]
            if dupes:
                raise ConfigError(f"--labels lists a label more than once: {_quoted(dupes)}")
            unknown = sorted(seen - set(order), key=_sort_key(seen))
            if unknown:
                raise DataError(
                    f"labels {_quoted(unknown)} found in the data but not in --labels "
                    f"({', '.join(order)})"
                )
        if len(seen) < 2:
            found = f"only one class ({_quoted(seen)})" if seen else "no labels"
            raise DataError(f"{found} found; a classifier needs at least two")
        names = tuple(order) if order is not None else tuple(sorted(seen, key=_sort_key(seen)))
        return cls(names)

    def encode(self, labels: Sequence[str], source: str = "data") -> list[int]:
        """Label names to ids; a label the model was not trained on is the user's data problem."""
        unknown = [n for n in dict.fromkeys(labels) if n not in self._index]
        if unknown:
            what = "label" if len(unknown) == 1 else "labels"
            raise DataError(
                f"{source}: {what} {_quoted(unknown[:10])}{' ...' if len(unknown) > 10 else ''} "
                f"never seen in training data (known: {', '.join(self.names)})"
            )
        return [self._index[n] for n in labels]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids back to names."""
        out = []
        for i in ids:
            if not 0 <= int(i) < len(self.names):
                raise ValueError(f"label id {i} out of range for {len(self.names)} classes")
            out.append(self.names[int(i)])
        return out

    def index(self, name: str) -> int:
        """Id of one label name."""
        if name not in self._index:
            raise DataError(f"unknown label {name!r} (known: {', '.join(self.names)})")
        return self._index[name]

    def __len__(self) -> int:
        return len(self.names)


def _sort_key(labels: Iterable[str]) -> Callable[[str], tuple[int, str]]:
    """Numeric order when every label is an integer ("2" < "10"), else plain string order."""
    if all(_INT.fullmatch(n) for n in labels):
        return lambda n: (int(n), n)
    return lambda n: (0, n)
