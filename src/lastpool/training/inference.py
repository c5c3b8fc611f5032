"""Batched forward passes for prediction and evaluation: length-sorted, token-budget batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from lastpool.data.batching import PaddingCollator, token_budget_batches


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    ids: Sequence[list[int]],
    pad_token_id: int,
    padding_side: str = "right",
    max_tokens: int = 16384,
    max_batch: int = 256,
    device: torch.device | str | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Logits [N, C] in the input order; texts of similar length are batched together."""
    was_training = model.training
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    collate = PaddingCollator(pad_token_id, padding_side)
    outputs: list[torch.Tensor] = []
    order: list[int] = []
    for batch_indices in token_budget_batches([len(x) for x in ids], max_tokens, max_batch):
        batch = collate([(ids[i], -1) for i in batch_indices])
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        outputs.append(logits.float().cpu())
        order.extend(batch_indices)
    model.train(was_training)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    stacked = torch.cat(outputs).numpy()
    result = np.empty_like(stacked)
    result[np.asarray(order)] = stacked
    return result


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)
