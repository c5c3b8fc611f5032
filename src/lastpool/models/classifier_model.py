"""Backbone + pooler + linear head: the classifier as an ``nn.Module`` (lastpool/artifact.py saves and
loads it as a model folder).

Pool first, then apply the head: the head runs on B vectors, not B x T (transformers applies its
``score`` layer to every position and throws all but one away).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from lastpool.models.gpt import position_ids_from_mask
from lastpool.models.pooled_only import POOLED_METHODS, PooledTokenMLP
from lastpool.models.pooling import Pooler, pooled_index


class SequenceClassifier(nn.Module):
    """Text classifier: hidden states from the backbone, pooled by the attention mask, then a head."""

    def __init__(self, backbone: nn.Module, hidden_size: int, num_labels: int, pooling: str = "last",
                 head_dropout: float = 0.0, head_bias: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooler = Pooler(pooling)
        # The last block's MLP at the pooled token only (a plain attribute: hooks, no parameters).
        self.pooled_mlp = PooledTokenMLP.attach(backbone, hidden_size) if pooling in POOLED_METHODS else None
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden_size, num_labels, bias=head_bias)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        if self.head.bias is not None:
            nn.init.zeros_(self.head.bias)

    def pooled(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
               inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """One vector per row: the backbone's hidden states reduced by the pooler. ``inputs_embeds``
        instead of ids: what the backbone's first block reads (training/upper_blocks.py feeds it cached
        hidden states)."""
        position_ids = position_ids_from_mask(attention_mask)
        index = pooled_index(attention_mask, self.pooler.method)  # once, for the MLP hooks and the pooler
        selecting: AbstractContextManager[None] = nullcontext()
        if self.pooled_mlp is not None:
            selecting = self.pooled_mlp.selecting(index, attention_mask.shape[1])
        embeds = {} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}  # (HF backbones only)
        with selecting:
            hidden = self.backbone(input_ids, attention_mask=attention_mask, position_ids=position_ids, **embeds)
        return self.pooler(hidden, attention_mask, index)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_dropout(self.pooled(input_ids, attention_mask)))
