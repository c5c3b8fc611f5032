"""Defaults that depend on the model kind and the training mode.

A from-scratch decoder and a pretrained LM want different training: the small random model needs a high
learning rate, regularisation and many epochs; a pretrained one is fine-tuned gently for a few epochs, and
its frozen probe wants a middle layer and a prompt. Every setting a user leaves unset resolves from the
row for the run's (kind, mode) in ``RECIPES``; whatever the user set wins. docs/BENCHMARKS.md ("Default
recipes") says what each choice rests on: the prompt and the layer choice were measured across the dev
suite, the fine-tuning optimiser settings come from the earlier Financial PhraseBank runs and Trainer's
defaults, and the suite's results for the rows as they stand.
"""

from __future__ import annotations

import math
from typing import Any

Kind = str  # "scratch" or "pretrained"

SCRATCH: dict[str, Any] = {
    "epochs": 10, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.1, "warmup": 0.05, "label_smoothing": 0.1,
    "token_dropout": 0.1, "max_length": 64, "head_bias": True, "prompt": "{text}", "patience": None,
}
# Shared by every pretrained mode that trains the backbone: gentle fine-tuning, no augmentation, a
# training length that follows the data (see ``auto_epochs``) and a model `export --format hf` accepts:
# a bias-free head and the bare text (a transformers pipeline would not apply a prompt).
_FINE_TUNE: dict[str, Any] = {
    "epochs": "auto", "batch_size": 16, "warmup": 0.1, "weight_decay": 0.01, "label_smoothing": 0.0,
    "token_dropout": 0.0, "max_length": 128, "head_bias": False, "prompt": "{text}", "patience": 2,
}
RECIPES: dict[tuple[Kind, str], dict[str, Any]] = {
    ("scratch", "full"): SCRATCH,
    ("pretrained", "full"): {**_FINE_TUNE, "lr": 5e-5},
    # The default for a pretrained model: its top 4 blocks at half its depth, trained on the cached hidden
    # states of the frozen blocks below (training/upper_blocks.py), and the final norm kept after them so
    # that the model is the family at half its depth, which transformers runs (export --format hf).
    ("pretrained", "top"): {**_FINE_TUNE, "lr": 3e-4, "layer": "middle", "final_norm": True},
    ("pretrained", "lora"): {**_FINE_TUNE, "lr": 1e-3, "lora_r": 16, "lora_alpha": 32, "weight_decay": 0.0},
    # The head alone on cached features: many cheap epochs; probe heads keep their bias (the features'
    # standardization folds into it).
    ("pretrained", "probe"): {"epochs": 40, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.0, "warmup": 0.05,
                              "label_smoothing": 0.0, "token_dropout": 0.0, "max_length": 128, "head_bias": True,
                              "prompt": "auto", "layer": "auto", "patience": 10},
    # No training: the LM's own next-token scores for each label word after the prompt.
    ("pretrained", "zeroshot"): {"max_length": 128, "head_bias": True, "prompt": "auto", "head_init": "labels",
                                 "fuse_baseline": False},
}
RECIPE_FIELDS = sorted({name for row in RECIPES.values() for name in row})


# What rows that are text pairs (``text_pair_col``) change in a (kind, mode) row. A pair task compares two
# texts token by token, which the lower half of the model does not do for it: the trained blocks end at two
# thirds of the depth rather than half.
PAIRS: dict[tuple[Kind, str], dict[str, Any]] = {("pretrained", "top"): {"layer": "2/3"}}

# ``--mode auto`` (the default): what a run trains when no mode is given, by model kind and by whether each
# row is one text or a pair: for pairs twice the trained blocks.
DEFAULT_MODES: dict[tuple[Kind, bool], str] = {("scratch", False): "full", ("scratch", True): "full",
                                               ("pretrained", False): "top-4", ("pretrained", True): "top-8"}


def default_mode(model: str, pairs: bool = False) -> str:
    """The mode ``auto`` stands for: ``pairs`` when the rows are text pairs."""
    return DEFAULT_MODES[(kind_of(model), pairs)]


def kind_of(model: str) -> Kind:
    return "scratch" if model == "scratch" else "pretrained"


def family_of(mode: str) -> str:
    """``top-4`` shares the ``top`` row; every other mode has its own."""
    return "top" if mode.startswith("top-") else mode


def recipe(model: str, mode: str, pairs: bool = False) -> dict[str, Any]:
    """The defaults for a run of ``model`` in ``mode``, on text pairs where ``pairs`` (empty where no row
    fits: the field defaults apply, and the config's own checks say what is wrong, e.g. LoRA on a
    from-scratch model)."""
    key = (kind_of(model), family_of(mode))
    row = dict(RECIPES.get(key, SCRATCH if kind_of(model) == "scratch" else {}))
    return {**row, **PAIRS.get(key, {})} if pairs else row


def auto_epochs(n_train: int, n_labels: int, batch_size: int) -> int:
    """Epochs for ``epochs: auto``: enough passes that every class is seen about 500 times (few texts per
    class need more passes), at least 2 and at most 20, and at least ~200 optimizer steps in all; early
    stopping (``patience``) ends a run sooner when validation stops improving. docs/BENCHMARKS.md
    ("Training length of the pretrained default") has the measurements behind 500."""
    per_class = max(n_train / max(n_labels, 1), 1.0)
    by_class = math.ceil(500 / per_class)
    by_steps = math.ceil(200 / max(math.ceil(n_train / batch_size), 1))
    return int(min(20, max(2, by_class, by_steps)))


def recipe_table() -> str:
    """The table as Markdown, for the README (one column per (kind, mode) row)."""
    keys = list(RECIPES)
    header = "| setting | " + " | ".join(f"{kind} {mode}" for kind, mode in keys) + " |"
    lines = [header, "| --- |" + " --- |" * len(keys)]
    for name in RECIPE_FIELDS:
        cells = [_cell(RECIPES[key].get(name, "")) for key in keys]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value == "":
        return "—"
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return "`" + value.replace("\n", "\\n") + "`"
    return str(value)
