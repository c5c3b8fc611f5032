"""What a run trains on, behind one protocol: token ids (the whole model), pooled features (a probe's
head) or hidden states after the frozen blocks (top-N's upper blocks).

The training loop sees only ``TrainInputs``: a batch is a dict that the model takes as keywords
(``model(**batch)``, labels popped first), validation logits come from ``predict``, and what makes the
data itself (for a checkpoint's fingerprint) from ``identity``. ``train_inputs`` is the one place that
tells the three kinds apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from lastpool.config import RunConfig
from lastpool.data.batching import EncodedDataset, Target, TokenDropoutCollator, target_tensor
from lastpool.training.checkpoint import data_fingerprint
from lastpool.training.features import FeatureDataset
from lastpool.training.inference import predict_logits
from lastpool.training.upper_blocks import HiddenCollator, HiddenStates, predict_hidden

TrainData = EncodedDataset | FeatureDataset | HiddenStates


class TrainInputs(Protocol):
    """One split of a run's data, as the training loop uses it."""

    labels: list[Target]
    # Whether the model's decoder blocks run on these inputs (tokens, hidden states): then bf16 master
    # weights, FSDP and compiled blocks apply; a probe's head on pooled features has none.
    runs_blocks: bool
    # The random generator batches draw from (token dropout), saved in checkpoints; None when deterministic.
    generator: torch.Generator | None

    def __len__(self) -> int: ...

    @property
    def lengths(self) -> list[int]: ...

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The rows at ``indices`` collated: the model's keyword inputs plus ``labels``."""
        ...

    def predict(self, model: nn.Module, indices: Sequence[int]) -> np.ndarray:
        """Logits [len(indices), C] in eval mode, in ``indices`` order."""
        ...

    def identity(self) -> bytes:
        """What makes this data what it is (for checkpoint fingerprints)."""
        ...


DataT = TypeVar("DataT", EncodedDataset, FeatureDataset, HiddenStates)


class _DatasetInputs(Generic[DataT]):
    """What every inputs class reads off its dataset: the row count and the rows' lengths."""

    data: DataT

    def __len__(self) -> int:
        return len(self.data)

    @property
    def lengths(self) -> list[int]:
        return self.data.lengths


class TokenInputs(_DatasetInputs[EncodedDataset]):
    """Token ids for the whole model; training batches may drop tokens (``token_dropout``)."""

    runs_blocks = True

    def __init__(self, data: EncodedDataset, pad_token_id: int, padding_side: str, token_dropout: float = 0.0,
                 seed: int = 0) -> None:
        self.data, self.labels = data, list(data.labels)
        self.pad_token_id, self.padding_side = pad_token_id, padding_side
        self.collate = TokenDropoutCollator(pad_token_id, padding_side, rate=token_dropout, seed=seed)
        self.generator: torch.Generator | None = self.collate.generator

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.collate([self.data[i] for i in indices])

    def predict(self, model: nn.Module, indices: Sequence[int]) -> np.ndarray:
        return predict_logits(model, [self.data.ids[i] for i in indices], self.pad_token_id, self.padding_side)

    def identity(self) -> bytes:
        return data_fingerprint(self.data.ids, self.data.labels, [], []).encode()


class FeatureInputs(_DatasetInputs[FeatureDataset]):
    """Pooled feature vectors for a probe's head (``HeadOnly``)."""

    runs_blocks = False
    generator: torch.Generator | None = None

    def __init__(self, data: FeatureDataset) -> None:
        self.data, self.labels = data, data.labels

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return {"features": self.data.features[list(indices)],
                "labels": target_tensor([self.labels[i] for i in indices])}

    @torch.inference_mode()
    def predict(self, model: nn.Module, indices: Sequence[int]) -> np.ndarray:
        model.eval()
        features = self.data.features[list(indices)].to(next(model.parameters()).device)
        return model(features=features).float().cpu().numpy()  # a head is cheap: all rows in one pass

    def identity(self) -> bytes:
        return self.data.features.numpy().tobytes() + repr(self.labels).encode()


class HiddenInputs(_DatasetInputs[HiddenStates]):
    """Hidden states after the frozen blocks, for the upper blocks (``UpperBlocks``)."""

    runs_blocks = True
    generator: torch.Generator | None = None

    def __init__(self, data: HiddenStates, padding_side: str) -> None:
        self.data, self.labels, self.padding_side = data, data.labels, padding_side
        self.collate = HiddenCollator(padding_side)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.collate([self.data[i] for i in indices])

    def predict(self, model: nn.Module, indices: Sequence[int]) -> np.ndarray:
        return predict_hidden(model, self.data, indices, self.padding_side)

    def identity(self) -> bytes:  # the token ids the states were computed from
        return data_fingerprint(self.data.ids, self.data.labels, [], []).encode()


def train_inputs(data: TrainData, config: RunConfig, pad_token_id: int, training: bool) -> TrainInputs:
    """The inputs protocol for a dataset; ``training`` turns on the augmentation (token dropout)."""
    if isinstance(data, FeatureDataset):
        return FeatureInputs(data)
    if isinstance(data, HiddenStates):
        return HiddenInputs(data, config.padding_side)
    return TokenInputs(data, pad_token_id, config.padding_side, config.token_dropout if training else 0.0,
                       config.seed)


def data_identity(train: TrainInputs, val: TrainInputs) -> str:
    """A hash of the exact training and validation data a run sees."""
    return hashlib.sha256(train.identity() + b"\0" + val.identity()).hexdigest()
