"""A small GPT-style decoder trained from scratch: the seed tutorial's architecture, generalised.

Token and learned position embeddings, N pre-LN blocks of causal multi-head self-attention and a GELU
MLP, a final LayerNorm. It returns hidden states [B, T, D]; pooling and the head live outside it, so the
same classifier code serves this model and pretrained backbones.

Padding never leaks into real tokens: padded keys are masked in attention, and position ids are
counted from each row's first real token, so a left-padded row sees the same positions as the same text
alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class GPTConfig(BaseModel):
    """Architecture of the from-scratch decoder (saved in ``lastpool.json``)."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(gt=0)
    context_length: int = Field(default=128, gt=0)
    d_model: int = Field(default=128, gt=0)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=4, ge=1)
    d_ff: int = Field(default=512, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    bias: bool = True


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (0, 1, 2, ...); padding gets 0.

    With this, left padding does not shift positions: a row's real tokens get the same position ids
    whatever padding surrounds them.
    """
    positions = attention_mask.long().cumsum(dim=-1) - 1
    return positions.clamp(min=0) * attention_mask.long()


def attention_bias(attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, T, T] mask for SDPA: causal, and padded keys hidden.

    Each query may always see itself, so a padding query (whose earlier keys are all padding under
    left padding) gets a finite output instead of NaN; no real token ever sees a padded key.
    """
    index = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    causal = index[:, None] >= index[None, :]
    diagonal = index[:, None] == index[None, :]  # not torch.eye: ONNX Runtime has no bool EyeLike kernel
    keys = attention_mask.bool()[:, None, None, :]
    return causal & (keys | diagonal)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.d_model % config.n_heads != 0:
            raise ValueError(f"d_model ({config.d_model}) must be divisible by n_heads ({config.n_heads})")
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq_len, d_model = x.shape
        q, k, v = self.qkv(x).split(d_model, dim=2)
        shape = (batch, seq_len, self.n_heads, d_model // self.n_heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None,
        )
        y = y.transpose(1, 2).contiguous().view(batch, seq_len, d_model)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class GPTBackbone(nn.Module):
    """Decoder that maps token ids to hidden states; no LM head (a classifier never needs vocab logits)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.context_length, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, bias=config.bias)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layers) so the residual stream's
        # variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def hidden_size(self) -> int:
        return self.config.d_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.config.context_length:
            raise ValueError(
                f"sequence of {seq_len} tokens exceeds context_length {self.config.context_length}"
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        # Without padding the plain causal kernel is exact and faster than an explicit mask.
        mask = None if bool(attention_mask.all()) else attention_bias(attention_mask)
        x = self.dropout(self.token_embedding(input_ids) + self.position_embedding(position_ids))
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)
