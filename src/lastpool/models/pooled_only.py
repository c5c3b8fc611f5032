"""Run the last decoder block's MLP at the pooled token of each row only.

A classifier reads one position per row from the last block's output: the pooled token (the last real
token, or the first for ``first`` pooling). That block's attention needs keys and values at every
position, but its MLP is position-wise, so what it computes at any other position is never read: a
whole MLP pass over every other position, forward and backward, spent on nothing.
transformers computes it everywhere.

``PooledTokenMLP`` hooks the last block's MLP (hooks, not a wrapper module, so parameter names, saved
weights and LoRA targets stay as they are). Inside ``selecting(index)`` the MLP gets only the pooled
token of each row and its output is repeated along the sequence: exact at the pooled positions, and
the other positions' values (wrong from here on) reach nothing the classifier reads. Outside the
context the MLP runs as usual. It stays off under gradient checkpointing (the backward pass re-runs
the block outside the context) and for mean / max pooling (every position is read).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lastpool.models.backbones import block_list

POOLED_METHODS = ("last", "first")  # poolings that read one position per row


class PooledTokenMLP:
    """Hooks on the last decoder block's ``mlp`` that restrict it to one position per row while selecting."""

    def __init__(self, block: nn.Module, mlp: nn.Module) -> None:
        self.block = block
        self.index: torch.Tensor | None = None  # [batch] positions, set only inside ``selecting``
        self.length = 0  # the sequence length the MLP's output must have
        mlp.register_forward_pre_hook(self._gather)
        mlp.register_forward_hook(self._repeat)

    @classmethod
    def attach(cls, backbone: nn.Module, hidden_size: int) -> PooledTokenMLP | None:
        """Hooks on ``backbone``'s last block, or None when it has no ``mlp`` module that is position-wise."""
        try:
            block = block_list(backbone)[-1]
        except (ValueError, IndexError):
            return None
        mlp = getattr(block, "mlp", None)
        if not isinstance(mlp, nn.Module) or not position_wise(mlp, hidden_size):
            return None
        return cls(block, mlp)

    @contextmanager
    def selecting(self, index: torch.Tensor | None, length: int) -> Iterator[None]:
        """Inside: the MLP runs at position ``index[b]`` of each row ``b`` only (sequence length ``length``);
        with no index, everywhere."""
        if index is None or getattr(self.block, "gradient_checkpointing", False):
            yield
            return
        self.index, self.length = index, length
        try:
            yield
        finally:
            self.index, self.length = None, 0

    def _gather(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self.index is None or not args:  # called by keyword: left to run everywhere (see _repeat)
            return None
        hidden = args[0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return (hidden[rows, self.index].unsqueeze(1), *args[1:])

    def _repeat(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        if self.index is None or output.shape[1] != 1:  # not gathered: already full length
            return None
        # A real tensor, not an expanded view: some blocks add into the MLP's output in place.
        return output.expand(-1, self.length, -1).contiguous()


def position_wise(mlp: nn.Module, hidden_size: int) -> bool:
    """Whether ``mlp`` maps [B, T, D] to [B, T, D] one position at a time (checked on random input, in
    evaluation mode): what running it on one position per row relies on. An MLP that returns anything
    else, or mixes positions, is left alone."""
    weight = next(mlp.parameters(), None)
    if weight is None or weight.device.type == "meta" or not weight.dtype.is_floating_point:
        return False
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, 3, hidden_size, generator=generator).to(weight.device, weight.dtype)
    training = mlp.training
    mlp.eval()
    try:
        with torch.no_grad():
            together = mlp(probe)
            alone = [mlp(probe[:, i : i + 1]) for i in range(probe.shape[1])]
    except Exception:  # noqa: BLE001 - an MLP that cannot take this input is simply not restricted
        return False
    finally:
        mlp.train(training)
    if not isinstance(together, torch.Tensor) or together.shape != probe.shape:
        return False
    if not all(isinstance(one, torch.Tensor) and one.shape == (1, 1, hidden_size) for one in alone):
        return False
    tolerance = 1e-2 if weight.dtype in (torch.float16, torch.bfloat16) else 1e-5
    return torch.allclose(together, torch.cat(alone, dim=1), atol=tolerance, rtol=tolerance)
