"""Heads that start where the language model already points: its output rows for each label word.

A causal LM scores the next token as ``hidden @ output_embeddings.T``. The rows of the label words
(the mean over a word's sub-tokens) make a classification head that, after a prompt such as
``...\\nAnswer:``, already prefers the label the LM would say: ``--head-init labels`` starts training
there, and ``--mode zeroshot`` uses it untrained, with contextual calibration (Zhao et al., 2021): the
LM's bias towards some label words is measured on content-free inputs and divided out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedTokenizerBase

from lastpool.errors import ConfigError
from lastpool.models.backbones import HFBackbone

CONTENT_FREE = ("N/A", "[MASK]", "")  # the content-free inputs of contextual calibration


def output_embeddings(backbone: HFBackbone, source: str) -> torch.Tensor:
    """The LM head's weight [V, D]: the input embeddings when tied, else ``lm_head.weight`` read from the
    model folder's safetensors (the base model that lastpool loads has no LM head of its own)."""
    config = backbone.config
    if getattr(config, "tie_word_embeddings", True):
        embedding = backbone.model.get_input_embeddings()
        assert isinstance(embedding, torch.nn.Embedding)
        return embedding.weight.detach()
    folder = Path(source)
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        with safe_open(str(path), framework="pt") as handle:
            if "lm_head.weight" in handle.keys():  # noqa: SIM118 - safe_open has keys(), not __contains__
                return handle.get_tensor("lm_head.weight").float()
    raise ConfigError(f"label-word heads need the LM's output layer: {source} does not tie it to the input "
                      "embeddings and no lm_head.weight was found in its safetensors files")


def word_token_ids(tokenizer: PreTrainedTokenizerBase, word: str) -> list[int]:
    """The ids of `` word`` as the next token after a prompt would spell it (leading space; pieces that are
    only whitespace dropped)."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    kept = [i for i in ids if str(tokenizer.decode([i])).strip()]
    if not kept:
        raise ConfigError(f"label word {word!r} has no tokens in this model's vocabulary")
    return kept


def label_rows(embeddings: torch.Tensor, tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> torch.Tensor:
    """One row per label word [C, D]: the mean of its sub-tokens' output rows."""
    rows = [embeddings[word_token_ids(tokenizer, word)].mean(dim=0) for word in words]
    if len({tuple(row.tolist()) for row in rows}) != len(rows):
        raise ConfigError("two labels have the same label words; give distinct words with --label-names")
    return torch.stack(rows).float()


def content_free_bias(content_free_logits: torch.Tensor) -> torch.Tensor:
    """Contextual calibration as a head bias: ``-log`` of the mean label distribution on content-free
    inputs, so ``softmax(logits + bias)`` is the LM's distribution divided by its prior, renormalised."""
    prior = torch.softmax(content_free_logits.float(), dim=-1).mean(dim=0)
    return -torch.log(prior.clamp(min=1e-12))
