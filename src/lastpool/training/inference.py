"""Batched forward passes for prediction and evaluation: length-sorted, token-budget batches."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from lastpool.data.batching import PaddingCollator, rows_in_input_order


@torch.inference_mode()
def batched_forward(
    model: nn.Module,
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ids: Sequence[list[int]],
    pad_token_id: int,
    padding_side: str = "right",
    max_tokens: int = 2048,
    max_batch: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``forward(input_ids, attention_mask)`` over length-sorted token-budget batches, in eval mode;
    float32 rows [N, ...] on the CPU, in the input order. ``on_batch`` gets each batch's size.

    No autocast: the forward runs in the dtype of the module's weights (see ``inference_module``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = PaddingCollator(pad_token_id, padding_side)

    def run(batch_indices: list[int]) -> np.ndarray:
        batch = collate([(ids[i], -1) for i in batch_indices])
        result = forward(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        if on_batch is not None:
            on_batch(len(batch_indices))
        return result.float().cpu().numpy()

    try:
        return torch.from_numpy(rows_in_input_order([len(x) for x in ids], run, max_tokens, max_batch))
    finally:
        model.train(was_training)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def bf16_copy(model: ModuleT) -> ModuleT:
    """A bf16 copy of ``model`` for inference.

    Under autocast every float32 weight is cast to bf16 again in every forward pass (the cast cache only
    keeps weights that require grad, and only within one autocast region); for inference, casting once
    is measurably faster (docs/BENCHMARKS.md). The float32 model stays as it is, for training and
    saving.
    """
    return copy.deepcopy(model).to(torch.bfloat16).eval()


def inference_module(model: ModuleT, precision: str) -> ModuleT:
    """The module an inference pass runs on for ``precision``, the dtype the weights run in: the model
    itself in fp32, a bf16 copy of it in bf16 (the model's float32 weights stay as they are)."""
    return bf16_copy(model) if precision == "bf16" else model


def predict_logits(
    model: nn.Module,
    ids: Sequence[list[int]],
    pad_token_id: int,
    padding_side: str = "right",
) -> np.ndarray:
    """Logits [N, C] in the input order; texts of similar length are batched together."""
    if not ids:
        return np.zeros((0, 0), dtype=np.float32)
    return batched_forward(model, model, ids, pad_token_id, padding_side).numpy()
