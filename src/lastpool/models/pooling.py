"""Pool a padded batch of hidden states into one vector per row, using only the attention mask.

Under causal attention only the last real token has attended to the whole text, so ``last`` is the
natural summary for a decoder. The index of that token comes from the attention mask, never from the
pad token id: that is what makes pooling right under left padding, right padding, pad == EOS, texts
that end in EOS and ``inputs_embeds``.
"""

from __future__ import annotations

import torch

from lastpool.config import POOLING_NAMES


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token: the highest position whose mask is 1.

    Works for right padding, left padding and any mixture, because it only asks where the mask is set.
    A row with no real token falls back to position 0.
    """
    seq_len = attention_mask.shape[-1]
    positions = torch.arange(seq_len, device=attention_mask.device).expand_as(attention_mask)
    masked = torch.where(attention_mask.bool(), positions, torch.full_like(positions, -1))
    return masked.max(dim=-1).values.clamp(min=0)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token (not position 0 under left padding)."""
    seq_len = attention_mask.shape[-1]
    positions = torch.arange(seq_len, device=attention_mask.device).expand_as(attention_mask)
    masked = torch.where(attention_mask.bool(), positions, torch.full_like(positions, seq_len))
    return masked.min(dim=-1).values.clamp(max=seq_len - 1)


def pooled_index(attention_mask: torch.Tensor, method: str) -> torch.Tensor | None:
    """The one position per row that ``method`` reads (``last``, ``first``), or None when it reads them all."""
    if method == "last":
        return last_token_index(attention_mask)
    if method == "first":
        return first_token_index(attention_mask)
    return None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str = "last",
         index: torch.Tensor | None = None) -> torch.Tensor:
    """Reduce ``hidden`` [B, T, D] to [B, D] with ``method``, looking only at real tokens (``index``:
    ``pooled_index``'s answer when the caller already has it)."""
    if index is None:
        index = pooled_index(attention_mask, method)
    if index is not None:
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if method == "mean":
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    if method == "max":
        fill = torch.finfo(hidden.dtype).min
        return hidden.masked_fill(mask == 0, fill).max(dim=1).values
    raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLING_NAMES)}")


class Pooler(torch.nn.Module):
    """Module wrapper so the pooling method is part of the model and its saved description."""

    def __init__(self, method: str = "last") -> None:
        super().__init__()
        if method not in POOLING_NAMES:
            raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLING_NAMES)}")
        self.method = method

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                index: torch.Tensor | None = None) -> torch.Tensor:
        return pool(hidden, attention_mask, self.method, index)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"
