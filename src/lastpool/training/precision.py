"""How a model runs while it trains: bf16 weights with float32 master copies, and the attention kernel.

bf16 autocast keeps float32 weights and casts each one to bf16 again in every forward and backward
pass, and keeps the residual stream in float32. Training the bf16 weights themselves and keeping a
float32 master copy for the optimizer (the usual "bf16 + master weights" recipe) skips those casts:
the matmuls see the same bf16-rounded weights, and the updates still accumulate in float32, so small
learning rates are not rounded away. It saves time in every step (docs/BENCHMARKS.md).

transformers' SDPA path on CPU runs a flash-attention kernel whose backward pass is slow for the short
sequences of classification data; its plain "eager" attention
is faster for training at every length measured up to 256 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PreTrainedModel


class MasterWeights:
    """Turns a model's float32 parameters into bf16 and keeps the float32 values as master weights.

    The optimizer steps the masters (``self.masters``); after each backward pass ``collect_grads``
    moves the bf16 gradients into float32 master gradients (accumulating across micro-batches), and
    after each optimizer step ``push`` rounds the masters into the model. ``restore`` puts the float32
    tensors back into the model: the trained values for trainable parameters, the untouched originals
    for frozen ones (a LoRA base model is not rounded to bf16 by training).
    """

    def __init__(self, model: nn.Module) -> None:
        self._params: list[tuple[str, nn.Parameter, torch.Tensor]] = []
        for name, p in model.named_parameters(remove_duplicate=True):
            if p.dtype != torch.float32:
                continue
            original = p.data
            p.data = original.to(torch.bfloat16)
            self._params.append((name, p, original))
        self._trainable = [(p, original) for _, p, original in self._params if p.requires_grad]
        self.trainable_names = [name for name, p, _ in self._params if p.requires_grad]
        # float32 gradient buffers, allocated once: a fresh half-gigabyte of gradients every step (135M
        # parameters) costs page faults, a few percent of a step (docs/BENCHMARKS.md).
        self._grad_buffers: list[torch.Tensor] | None = None

    @property
    def masters(self) -> list[torch.Tensor]:
        """The float32 tensors the optimizer updates, one per trainable parameter."""
        return [original for _, original in self._trainable]

    @torch.no_grad()
    def collect_grads(self) -> None:
        """Add the bf16 gradients of the last backward pass into the float32 master gradients."""
        if self._grad_buffers is None:
            self._grad_buffers = [torch.empty_like(master) for _, master in self._trainable]
        first: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        more: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for (p, master), buffer in zip(self._trainable, self._grad_buffers, strict=True):
            if p.grad is None:
                continue
            if master.grad is None:  # the first micro-batch of a step (the optimizer set it to None)
                master.grad = buffer
                first[0].append(buffer)
                first[1].append(p.grad)
            else:
                more[0].append(master.grad)
                more[1].append(p.grad)
            p.grad = None
        if first[0]:
            torch._foreach_copy_(*first)
        if more[0]:
            torch._foreach_add_(*more)

    @torch.no_grad()
    def push(self) -> None:
        if self._trainable:
            torch._foreach_copy_([p.data for p, _ in self._trainable], self.masters)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The float32 values of the trainable parameters, by parameter name (cloned)."""
        return {name: master.detach().clone()
                for name, master in zip(self.trainable_names, self.masters, strict=True)}

    @torch.no_grad()
    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Set the masters (and the bf16 working weights) from ``trainable_state`` output."""
        for name, master in zip(self.trainable_names, self.masters, strict=True):
            master.copy_(state[name])
        self.push()

    def restore(self) -> None:
        for _, p, original in self._params:
            p.data = original
            p.grad = None
        for _, master in self._trainable:
            master.grad = None
        self._grad_buffers = None


def _pretrained_models(model: nn.Module) -> list[PreTrainedModel]:
    return [m for m in model.modules() if isinstance(m, PreTrainedModel)]


@contextmanager
def attention_for_training(model: nn.Module, device: torch.device) -> Iterator[None]:
    """On CPU, train transformers backbones with eager attention instead of SDPA; restored afterwards."""
    changed: list[tuple[PreTrainedModel, str]] = []
    if device.type == "cpu":
        for module in _pretrained_models(model):
            current = getattr(module.config, "_attn_implementation", None)
            if current == "sdpa":
                module.set_attn_implementation("eager")
                changed.append((module, current))
    try:
        yield
    finally:
        for module, previous in reversed(changed):
            module.set_attn_implementation(previous)
