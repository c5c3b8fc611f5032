"""Shared fixtures: tiny models and data built on the spot (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from lastpool.data import load_demo
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.models.gpt import GPTBackbone, GPTConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FPB_ALLAGREE = SHARED / "data" / "financial_phrasebank" / "sentences_allagree.txt"


def tiny_classifier(pooling: str = "last", vocab: int = 64, seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    backbone = GPTBackbone(GPTConfig(vocab_size=vocab, context_length=32, d_model=32, n_layers=2, n_heads=4, d_ff=64))
    model = SequenceClassifier(backbone, backbone.hidden_size, num_labels=3, pooling=pooling)
    # Non-trivial head weights so differences between pooled vectors show in the logits.
    torch.nn.init.normal_(model.head.weight, std=1.0)
    return model.eval()


@pytest.fixture
def fpb_path() -> Path:
    if not FPB_ALLAGREE.is_file():
        pytest.skip("../shared/data/financial_phrasebank is not available")
    return FPB_ALLAGREE


# --- shared helpers for the end-to-end tests ------------------------------------------------------------

# Tiny models train in a fraction of a second on one thread; several OpenMP threads only add barrier
# overhead (and on a busy 2-core machine make each step ~50x slower).
torch.set_num_threads(1)

# A tiny from-scratch configuration for every test that trains, as CLI flags and as Classifier kwargs.
TINY_FLAGS = [
    "--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--d-ff", "32",
    "--epochs", "2", "--vocab-size", "300", "--max-length", "32", "--batch-size", "16", "--no-fuse-baseline",
]
TINY_KW: dict[str, Any] = {
    "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "epochs": 2, "vocab_size": 300,
    "max_length": 32, "batch_size": 16, "fuse_baseline": False,
}
# The tiny runs test the language model's own behaviour (history, exports, resume): they keep it alone.
# tests/test_fusion.py turns fusion back on.


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes several seconds (loads a real pretrained tokenizer)")


def demo_sample(per_class: int = 20, offset: int = 0) -> tuple[list[str], list[str]]:
    """A small, balanced, deterministic sample of the built-in demo set (``per_class`` rows per label)."""
    table = load_demo()
    assert table.labels is not None
    texts: list[str] = []
    labels: list[str] = []
    for name in sorted(set(table.labels)):
        rows = [i for i, label in enumerate(table.labels) if label == name][offset : offset + per_class]
        assert len(rows) == per_class, f"demo set has too few {name!r} rows"
        texts.extend(table.texts[i] for i in rows)
        labels.extend(name for _ in rows)
    # Interleave the classes so that file order is not sorted by label.
    order = sorted(range(len(texts)), key=lambda i: (i % per_class, i))
    return [texts[i] for i in order], [labels[i] for i in order]


def write_csv(path: Path, texts: list[str], labels: list[Any] | None = None, text_col: str = "text",
              label_col: str = "label") -> Path:
    frame = pd.DataFrame({text_col: texts} if labels is None else {text_col: texts, label_col: labels})
    frame.to_csv(path, index=False)
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def snapshot(folder: Path) -> list[str]:
    """Every path under ``folder`` (hidden ones too), to prove a failed command wrote nothing."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    """60 labelled demo rows (20 per class) as text,label CSV."""
    texts, labels = demo_sample()
    return write_csv(tmp_path / "train.csv", texts, labels)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained once by the CLI on 60 demo rows; tests must not modify it."""
    from lastpool.cli import main

    base = tmp_path_factory.mktemp("trained")
    texts, labels = demo_sample()
    data = write_csv(base / "train.csv", texts, labels)
    run = base / "run"
    code = main(["train", "--data", str(data), "--out", str(run), "--quiet", *TINY_FLAGS])
    assert code == 0
    return run
