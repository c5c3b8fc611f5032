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
from typing import Any

import torch
from torch import nn

from lastpool.models.backbones import block_list


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


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor gathered: the same layout as an unsharded
    optimizer's, so a checkpoint does not depend on how the run was sharded. Every process must call it."""
    state_dict = optimizer.state_dict()
    state_dict["state"] = {
        index: {key: value.full_tensor() if hasattr(value, "full_tensor") else value for key, value in entry.items()}
        for index, entry in state_dict["state"].items()
    }
    return state_dict


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """The inverse: cut each full moment tensor into this process's shard of its (sharded) parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded: dict[int, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        param = params[int(index)]
        sharded[index] = {
            key: distribute_tensor(value, param.device_mesh, param.placements)
            if isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.shape == param.shape
            else value
            for key, value in entry.items()
        }
    return {**state_dict, "state": sharded}
