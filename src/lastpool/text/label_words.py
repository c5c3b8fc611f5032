"""Label names as words a language model knows, and the ``--prompt auto`` template.

A pretrained LM has seen "positive" and "play music" but not ``PlayMusic`` or ``2``: label-word heads,
zero-shot scoring and the auto prompt all read labels as plain words. ``--label-names`` gives words for
labels that are codes; otherwise a name is split at camelCase, ``-`` and ``_`` and lowercased.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from lastpool.errors import ConfigError
from lastpool.text.tokenizers import TEXT_SLOT

AUTO_TEMPLATE = TEXT_SLOT + "\nThis text is about"


def plain_words(name: str) -> str:
    """``PlayMusic`` -> ``play music``, ``visual-studio`` -> ``visual studio``, ``positive`` unchanged."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return re.sub(r"[\s_\-]+", " ", spaced).strip().lower() or name


def label_words(labels: Sequence[str], names: Mapping[str, str] | None = None) -> list[str]:
    """One word (or short phrase) per label, in label order: ``names[label]`` where given."""
    names = names or {}
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise ConfigError(f"--label-names names labels the data does not have: {', '.join(unknown)} "
                          f"(labels: {', '.join(labels)})")
    return [names.get(label) or plain_words(label) for label in labels]


def parse_label_names(value: str) -> dict[str, str] | list[str]:
    """``0=negative,1=positive`` or a file of ``label=words`` lines (``#`` starts a comment); or a file of one
    name per line, none with ``=``: the names of the label ids 0, 1, 2, ... in line order (a list)."""
    path = Path(value)
    if "=" not in value or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--label-names: {value!r} is neither label=words pairs nor an existing file")
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--label-names {path}: cannot read it as UTF-8 text ({exc})") from None
        items = [line.split("#", 1)[0] for line in lines]
        where = str(path)
        if not any("=" in item for item in items):
            return _names_by_line(items, where)
    else:
        items, where = value.split(","), "--label-names"
    names: dict[str, str] = {}
    for item in (item.strip() for item in items):
        if not item:
            continue
        label, sep, words = item.partition("=")
        if not sep or not label.strip() or not words.strip():
            raise ConfigError(f"{where}: expected label=words, got {item!r}")
        if label.strip() in names:
            raise ConfigError(f"{where}: label {label.strip()!r} is named twice")
        names[label.strip()] = words.strip()
    if not names:
        raise ConfigError(f"{where}: no label=words pairs found")
    return names


def _names_by_line(lines: list[str], where: str) -> list[str]:
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ConfigError(f"{where}: no label names found (one name per line)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: label name {dupes[0]!r} is on more than one line")
    return names


def auto_prompt(tokenizer: PreTrainedTokenizerBase, max_length: int) -> str:
    """``--prompt auto``: a task-neutral suffix after which the next token names what the text is about, so
    the pooled last token summarises the text instead of being its last word. Of the templates measured on
    the dev suite (docs/BENCHMARKS.md) it probed best on every set, better than ones that list the labels.
    The bare text where the suffix would take more than half of ``max_length``."""
    if len(tokenizer(AUTO_TEMPLATE.replace(TEXT_SLOT, ""))["input_ids"]) <= max_length // 2:
        return AUTO_TEMPLATE
    return TEXT_SLOT
