"""``--mode top-N`` on cached hidden states: the frozen lower blocks run once, not once per epoch.

In top-N only the last N blocks, the final norm and the head train; what the blocks below compute for a
text is the same in every epoch. So they run once over every training and validation text, each text's
hidden states after the last frozen block are kept (its real tokens only), and the top blocks train on
those, fed as ``inputs_embeds``: an epoch then costs N blocks' forward and backward passes instead of a
forward pass through the whole model as well. Validation reads the same cache.

That is exact only where a family's forward pass adds nothing between ``inputs_embeds`` and its first
block. Llama and its kin compute the rotary positions inside attention, from the position ids; GPT-2
adds position embeddings there and Gemma scales the embeddings. ``reproduces`` checks it on a few texts
before any training, and the caller trains the usual way where the check fails.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from rich.progress import Progress
from torch import nn
from torch.utils.data import Dataset

from lastpool.data.batching import PaddingCollator, Target, rows_in_input_order, target_tensor, token_budget_batches
from lastpool.models.backbones import HFBackbone, decoder_blocks, running_blocks
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.models.gpt import position_ids_from_mask
from lastpool.training.inference import inference_module

CHECK_TEXTS = 8  # texts the reproduction check runs (the longest of the first 64, where padding matters most)
CHECK_TOLERANCE = 1e-3  # of the pooled vector's largest value, in float32


class HiddenStates(Dataset[tuple[torch.Tensor, Target]]):
    """Each text's hidden states [T_i, D] after the last frozen block, its label and its token ids (which
    identify the data for checkpoints)."""

    def __init__(self, hidden: Sequence[torch.Tensor], labels: Sequence[Target], ids: Sequence[list[int]]) -> None:
        if not len(hidden) == len(labels) == len(ids):
            raise ValueError("hidden states, labels and ids differ in length")
        self.hidden = list(hidden)
        self.labels = list(labels)
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        return self.hidden[index], self.labels[index]

    @property
    def lengths(self) -> list[int]:
        return [h.shape[0] for h in self.hidden]


class HiddenCollator:
    """Pads rows of hidden states (zeros) on ``padding_side``; the attention mask marks the real tokens."""

    def __init__(self, padding_side: str = "right") -> None:
        if padding_side not in ("right", "left"):
            raise ValueError("padding_side must be 'right' or 'left'")
        self.padding_side = padding_side

    def __call__(self, rows: Sequence[tuple[torch.Tensor, Target]]) -> dict[str, torch.Tensor]:
        longest = max(hidden.shape[0] for hidden, _ in rows)
        first = rows[0][0]
        embeds = torch.zeros((len(rows), longest, first.shape[1]), dtype=first.dtype)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for row, (hidden, _) in enumerate(rows):
            n = hidden.shape[0]
            span = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            embeds[row, span] = hidden
            mask[row, span] = 1
        return {"inputs_embeds": embeds, "attention_mask": mask, "labels": target_tensor([label for _, label in rows])}


class UpperBlocks(nn.Module):
    """The classifier from block ``start + 1`` on: hidden states after block ``start`` in, logits out.

    It holds the classifier itself (its parameters, under ``classifier.``), so training it trains the
    classifier's own top blocks and head."""

    def __init__(self, classifier: SequenceClassifier, start: int) -> None:
        super().__init__()
        if not isinstance(classifier.backbone, HFBackbone):
            raise ValueError("cached hidden states need a transformers backbone")
        self.classifier = classifier
        self.start = start
        self.stop = len(decoder_blocks(classifier.backbone.model))

    @property
    def pooled_mlp(self) -> object:  # what compile_blocks looks for: that block stays eager
        return self.classifier.pooled_mlp

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        backbone = self.classifier.backbone
        assert isinstance(backbone, HFBackbone)
        with running_blocks(backbone, self.start, self.stop):
            pooled = self.classifier.pooled(None, attention_mask, inputs_embeds=inputs_embeds)
        return self.classifier.head(self.classifier.head_dropout(pooled))


def cache_fits(ids: Sequence[list[int]], hidden_size: int, precision: str, share: float = 0.25) -> bool:
    """Whether every text's hidden states fit in ``share`` of the machine's memory."""
    size = sum(len(x) for x in ids) * hidden_size * (2 if precision == "bf16" else 4)
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf: assume a small machine
        memory = 8 << 30
    return size <= share * memory


@torch.no_grad()  # not inference_mode: the states are inputs to layers that train on them
def hidden_after(model: SequenceClassifier, start: int, ids: Sequence[list[int]], pad_token_id: int,
                 precision: str, max_tokens: int = 4096, quiet: bool = True) -> list[torch.Tensor]:
    """Every text's hidden states after block ``start`` [T_i, D], its real tokens only, in input order
    (bf16 in bf16 runs: what the top blocks' bf16 weights read, and half the memory)."""
    backbone = model.backbone
    assert isinstance(backbone, HFBackbone)
    runner = inference_module(backbone, precision)
    was_training = runner.training
    runner.eval()
    collate = PaddingCollator(pad_token_id, "right")
    out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    with running_blocks(runner, 0, start), Progress(disable=quiet, transient=True) as progress:
        task = progress.add_task(f"running blocks 1-{start} once", total=len(ids))
        for batch in token_budget_batches([len(x) for x in ids], max_tokens, 256):
            padded = collate([(ids[i], -1) for i in batch])
            mask = padded["attention_mask"]
            hidden = runner(padded["input_ids"], attention_mask=mask, position_ids=position_ids_from_mask(mask))
            for row, i in enumerate(batch):
                out[i] = hidden[row, : len(ids[i])].clone()
            progress.advance(task, len(batch))
    runner.train(was_training)
    return out


@torch.no_grad()
def reproduces(model: SequenceClassifier, start: int, ids: Sequence[list[int]], pad_token_id: int,
               padding_side: str) -> bool:
    """Whether the top blocks fed cached states pool what the whole model pools, in float32, on a few
    of the longest texts (padded together on ``padding_side``)."""
    pool = sorted(range(min(len(ids), 64)), key=lambda i: -len(ids[i]))[:CHECK_TEXTS]
    sample = [ids[i] for i in pool]
    was_training = model.training
    model.eval()
    try:
        padded = PaddingCollator(pad_token_id, padding_side)([(x, -1) for x in sample])
        reference = model.pooled(padded["input_ids"], padded["attention_mask"])
        hidden = hidden_after(model, start, sample, pad_token_id, "fp32")
        batch = HiddenCollator(padding_side)([(h, -1) for h in hidden])
        backbone = model.backbone
        assert isinstance(backbone, HFBackbone)
        with running_blocks(backbone, start, len(decoder_blocks(backbone.model))):
            got = model.pooled(None, batch["attention_mask"], inputs_embeds=batch["inputs_embeds"])
    finally:
        model.train(was_training)
    if got.shape != reference.shape or not bool(torch.isfinite(got).all()):
        return False
    scale = float(reference.abs().max()) or 1.0
    return float((got - reference).abs().max()) <= CHECK_TOLERANCE * scale


@torch.inference_mode()
def predict_hidden(model: nn.Module, data: HiddenStates, indices: Sequence[int], padding_side: str,
                   max_tokens: int = 4096) -> np.ndarray:
    """Logits [len(indices), C] of ``model`` (an ``UpperBlocks``) on cached rows, in ``indices`` order."""
    model.eval()
    collate = HiddenCollator(padding_side)
    device = next(model.parameters()).device

    def run(batch: list[int]) -> np.ndarray:
        padded = collate([data[indices[j]] for j in batch])
        return model(padded["inputs_embeds"].to(device), padded["attention_mask"].to(device)).float().cpu().numpy()

    if not indices:
        return np.zeros((0, 0), dtype=np.float32)
    return rows_in_input_order([data.hidden[i].shape[0] for i in indices], run, max_tokens, 256)
