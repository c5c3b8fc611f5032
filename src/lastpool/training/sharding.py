"""FSDP: shard parameters, gradients and optimizer state across processes, for models one device
cannot hold (``--sharding fsdp`` with ``--num-processes N``, or under torchrun / accelerate launch).

torch's ``fully_shard`` (FSDP2) is applied to every decoder block and then to the whole classifier, on
CUDA and on CPU (gloo) alike; Accelerate's FSDP plugin only runs on accelerators, so lastpool calls torch
directly and keeps Accelerate for process setup and DDP. Training runs on a sharded copy; at the end its
full weights are gathered back into the original (unsharded) model, which is what gets saved. In bf16
FSDP keeps float32 shards and computes in bf16 (its MixedPrecisionPolicy), the same recipe as the
single-process master weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def block_list(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks: the longest ModuleList anywhere in the model (through LoRA wrappers too)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"cannot find the decoder blocks of {type(model).__name__} to shard")
    return max(lists, key=len)


def shard(model: nn.Module, precision: str) -> nn.Module:
    """A copy of ``model`` with every block and the root wrapped by ``fully_shard``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if precision == "bf16" else MixedPrecisionPolicy())
    sharded = copy.deepcopy(model)
    for block in block_list(sharded):
        fully_shard(block, mp_policy=policy)
    fully_shard(sharded, mp_policy=policy)
    return sharded


def full_trainable_state(sharded: nn.Module) -> dict[str, torch.Tensor]:
    """The full (gathered) float32 values of the trainable parameters; every process must call it."""
    state: dict[str, torch.Tensor] = {}
    for name, p in sharded.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            state[name] = full.detach().clone()
    return state
