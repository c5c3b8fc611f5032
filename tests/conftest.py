"""Shared fixtures: tiny models and data built on the spot (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
