"""Frozen-backbone probes: pooled features computed once, cached on disk, and a head trained on them.

With the backbone frozen, every epoch would recompute the same pooled vectors; computing them once
turns minutes of forward passes per epoch into one pass, and the on-disk cache makes a second run (a
new seed, a new learning rate) start in seconds. The cache key covers everything that changes the
features: the backbone (its source, file hash and config), the token ids (so data, tokenizer and max
length), the pooling, the padding side and the precision.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from lastpool.data.batching import Target
from lastpool.fileio import default_cache_dir, staged_file
from lastpool.models.backbones import decoder_blocks
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.training.inference import batched_forward, inference_module

FEATURE_METHOD = 2  # bump when extraction changes numerically (2: bf16 weights instead of autocast)


class FeatureDataset(Dataset[tuple[torch.Tensor, Target]]):
    """Pooled feature vectors [N, D] and their targets; every item has 'length' 1 for the sampler."""

    def __init__(self, features: torch.Tensor, labels: Sequence[Target]) -> None:
        if features.shape[0] != len(labels):
            raise ValueError("features and labels differ in length")
        self.features = features
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        return self.features[index], self.labels[index]

    @property
    def lengths(self) -> list[int]:
        return [1] * len(self.labels)


class HeadOnly(nn.Module):
    """The classifier's own dropout + head (shared modules), applied to precomputed pooled features."""

    def __init__(self, classifier: SequenceClassifier) -> None:
        super().__init__()
        self.head_dropout = classifier.head_dropout
        self.head = classifier.head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(features))


def standardizer(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of the training features (std 1 where a dimension is constant).

    A pretrained decoder's hidden states have a few huge dimensions (hundreds of times the rest); a
    head trained on raw features is dominated by them. Training on standardized features, then folding
    the scaling into the head, gives a plain linear head that reads every dimension.
    """
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


@torch.no_grad()
def fold_standardization(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``head(x)`` equal the trained ``head((x - mean) / std)``, so raw features go in at inference."""
    if head.bias is None:
        raise ValueError("folding a standardization needs a head bias")
    weight = head.weight / std
    head.bias.copy_(head.bias - weight @ mean)
    head.weight.copy_(weight)


def feature_key(backbone_identity: dict[str, Any], ids: Sequence[list[int]], pooling: str, padding_side: str,
                precision: str) -> str:
    """A hash of everything that determines the pooled features."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"backbone": backbone_identity, "pooling": pooling, "padding_side": padding_side,
                              "precision": precision, "method": FEATURE_METHOD}, sort_keys=True, default=str).encode())
    for row in ids:
        digest.update(len(row).to_bytes(4, "little"))
        digest.update(torch.tensor(row, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def extract_features(model: SequenceClassifier, ids: Sequence[list[int]], pad_token_id: int, padding_side: str,
                     precision: str, max_tokens: int = 2048, quiet: bool = True) -> torch.Tensor:
    """Pooled backbone vectors [N, D] in float32, in input order (length-sorted token-budget batches).

    In bf16 the passes run on a bf16 copy of the model (see ``inference_module``), dropped afterwards:
    the saved model keeps its float32 weights.
    """
    runner = inference_module(model, precision)
    with Progress(disable=quiet, transient=True) as progress:
        task = progress.add_task("extracting features", total=len(ids))
        return batched_forward(runner, runner.pooled, ids, pad_token_id, padding_side,
                               max_tokens=max_tokens, on_batch=lambda n: progress.advance(task, n))


def cached_tensor(key: str, compute: Callable[[], torch.Tensor], rows: int | None = None,
                  cache_dir: Path | None = None) -> tuple[torch.Tensor, bool]:
    """``compute()``'s tensor, kept under ``$LASTPOOL_CACHE/features/<key>``: (tensor, whether it was cached)."""
    path = (cache_dir or default_cache_dir()) / "features" / f"{key}.safetensors"
    if path.is_file():
        try:
            features = load_file(str(path))["features"]
            if rows is None or features.shape[0] == rows:
                return features, True
        except Exception:  # noqa: BLE001 - a damaged cache entry is simply recomputed
            pass
    features = compute()
    try:
        with staged_file(path) as tmp:
            save_file({"features": features.contiguous()}, str(tmp))
    except OSError:
        pass  # an unwritable cache only costs time
    return features, False


def freeze_for_mode(model: SequenceClassifier, mode: str) -> None:
    """Set requires_grad for ``full`` (everything), ``probe`` (head only) or ``top-N`` (last N blocks,
    the final norm and the head)."""
    if mode == "full":
        model.requires_grad_(True)
        return
    model.backbone.requires_grad_(False)
    model.head.requires_grad_(True)
    if mode == "probe":
        return
    n = int(mode.split("-", 1)[1])
    base = getattr(model.backbone, "model", model.backbone)
    blocks = decoder_blocks(base)
    for block in blocks[-n:]:
        block.requires_grad_(True)
    for _, child in base.named_children():
        if child is blocks or isinstance(child, nn.Embedding) or not any(True for _ in child.parameters()):
            continue
        child.requires_grad_(True)  # the final norm (ln_f / norm / final_layer_norm)
