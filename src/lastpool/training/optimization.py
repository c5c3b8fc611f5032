"""The optimizer: AdamW with weight decay on matrices only, fused where it can be, and gradient clipping
folded into its step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def make_optimizer(params: nn.Module | list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over a model's trainable parameters (or given tensors, e.g. float32 master weights);
    weight decay only on matrices (not biases, norms), as in GPT-2 / nanoGPT."""
    if isinstance(params, nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass (no per-tensor temporaries), on CPU and CUDA.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=fused, foreach=None if fused else True)


def clip_in_fused_step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                       max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` without its pass that multiplies every gradient by the clip factor: the fused
    AdamW divides each gradient by ``grad_scale`` as it reads it (the hook torch's GradScaler uses), so
    clipping reads the gradients once instead of reading them twice and writing them once (its share of
    a step is in docs/BENCHMARKS.md). Returns the total norm before clipping, as ``clip_grad_norm_`` does."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0))) if grads else torch.zeros(())
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)  # type: ignore[attr-defined]
    return norm


def clip_gradients(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], max_norm: float,
                   sharded: bool) -> torch.Tensor:
    """Clip to ``max_norm`` (in the fused step where the optimizer is fused and the model not sharded);
    the total norm before clipping."""
    if optimizer.defaults.get("fused") and not sharded:
        return clip_in_fused_step(optimizer, params, max_norm)
    return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
