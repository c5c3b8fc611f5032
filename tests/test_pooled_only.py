"""The last block's MLP runs at the pooled token only: the same logits and gradients, less work."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from transformers import GPT2Config, LlamaConfig, MixtralConfig

from lastpool.models.backbones import backbone_from_config, block_list
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.models.gpt import GPTBackbone, GPTConfig
from lastpool.models.pooled_only import position_wise
from lastpool.training.compilation import compile_blocks

WIDTH = 32


def _backbone(family: str) -> nn.Module:
    torch.manual_seed(0)
    if family == "llama":
        return backbone_from_config(LlamaConfig(vocab_size=100, hidden_size=WIDTH, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    if family == "mixtral":  # a mixture-of-experts MLP: routed per token, so position-wise too
        return backbone_from_config(MixtralConfig(vocab_size=100, hidden_size=WIDTH, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                  num_local_experts=4, num_experts_per_tok=2))
    if family == "gpt2":
        return backbone_from_config(GPT2Config(vocab_size=100, n_embd=WIDTH, n_layer=2, n_head=4, n_positions=32,
                                               bos_token_id=1, eos_token_id=2))
    return GPTBackbone(GPTConfig(vocab_size=100, d_model=WIDTH, n_layers=2, n_heads=4, d_ff=64))


def _batch(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 100, (4, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    return ids, mask if side == "right" else mask.flip(1)


def _mlp_input_lengths(model: nn.Module) -> list[int]:
    """Sequence lengths the last block's MLP computes on (a pre-hook registered after lastpool's, so it
    sees the input lastpool's hook left)."""
    lengths: list[int] = []

    def record(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else next(iter(kwargs.values()))
        lengths.append(hidden.shape[1])

    block_list(model)[-1].mlp.register_forward_pre_hook(record, with_kwargs=True)
    return lengths


@pytest.mark.parametrize("family", ["llama", "mixtral", "gpt2", "scratch"])
@pytest.mark.parametrize("pooling", ["last", "first"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_same_logits_and_gradients_as_the_full_mlp(family: str, pooling: str, side: str) -> None:
    model = SequenceClassifier(_backbone(family), WIDTH, 3, pooling=pooling).eval()  # no dropout draws
    assert model.pooled_mlp is not None
    reference = copy.deepcopy(model)
    reference.pooled_mlp = None  # the plain path: the MLP at every position
    lengths, reference_lengths = _mlp_input_lengths(model), _mlp_input_lengths(reference)
    ids, mask = _batch(side)
    logits, expected = model(ids, mask), reference(ids, mask)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    (logits * torch.arange(1.0, 4.0)).sum().backward()
    (expected * torch.arange(1.0, 4.0)).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert lengths == [1] and reference_lengths == [ids.shape[1]]
    assert model.pooled_mlp.index is None  # nothing left selected after the forward pass


def test_mean_pooling_reads_every_position_so_the_mlp_runs_everywhere() -> None:
    model = SequenceClassifier(_backbone("llama"), WIDTH, 3, pooling="mean")
    assert model.pooled_mlp is None
    lengths = _mlp_input_lengths(model)
    ids, mask = _batch("right")
    model(ids, mask)
    assert lengths == [ids.shape[1]]


def test_gradient_checkpointing_runs_the_full_mlp_and_still_trains() -> None:
    """The backward pass re-runs the checkpointed block outside the forward pass's selection."""
    model = SequenceClassifier(_backbone("llama"), WIDTH, 3)
    model.backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    lengths = _mlp_input_lengths(model)
    ids, mask = _batch("right")
    model(ids, mask).sum().backward()
    assert lengths == [ids.shape[1]] * 2  # forward, then the recomputation in backward
    assert all(p.grad is not None for p in model.parameters())


def test_a_copy_selects_through_its_own_block() -> None:
    """FSDP trains a deep copy: its hooks must act on the copy's MLP, not the original's."""
    model = SequenceClassifier(_backbone("llama"), WIDTH, 3)
    twin = copy.deepcopy(model)
    assert twin.pooled_mlp is not None and model.pooled_mlp is not None
    assert twin.pooled_mlp is not model.pooled_mlp and twin.pooled_mlp.block is block_list(twin)[-1]
    lengths, original_lengths = _mlp_input_lengths(twin), _mlp_input_lengths(model)
    ids, mask = _batch("right")
    torch.testing.assert_close(twin(ids, mask), model(ids, mask))
    assert lengths == [1] and original_lengths == [1]


def test_lora_adapters_in_the_mlp_keep_the_selection() -> None:
    from lastpool.models.lora import apply_lora

    model = SequenceClassifier(_backbone("llama"), WIDTH, 3)
    apply_lora(model, "llama", r=4, alpha=8, dropout=0.05)
    for name, p in model.named_parameters():  # non-zero adapters, so they change the output
        if "lora_B" in name:
            nn.init.normal_(p, std=0.1)
    model.eval()
    reference = copy.deepcopy(model)
    reference.pooled_mlp = None
    lengths = _mlp_input_lengths(model)
    ids, mask = _batch("right")
    torch.testing.assert_close(model(ids, mask), reference(ids, mask), atol=1e-5, rtol=1e-5)
    assert lengths == [1]


def test_an_mlp_that_mixes_positions_is_left_alone() -> None:
    class Mixing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(WIDTH, WIDTH)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x.cumsum(dim=1))

    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(WIDTH, WIDTH)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.proj(x), x.mean()

    assert position_wise(nn.Sequential(nn.Linear(WIDTH, 64), nn.GELU(), nn.Linear(64, WIDTH)), WIDTH)
    assert not position_wise(Mixing(), WIDTH)
    assert not position_wise(TupleOut(), WIDTH)
    backbone = _backbone("scratch")
    for block in block_list(backbone):
        block.mlp = Mixing()
    assert SequenceClassifier(backbone, WIDTH, 3).pooled_mlp is None


def test_compile_leaves_the_hooked_block_eager() -> None:
    """dynamo does not guard on module hooks: the hooked block must not share the others' graph."""
    model = SequenceClassifier(_backbone("llama"), WIDTH, 3)
    compiled = compile_blocks(model)
    try:
        blocks = list(block_list(model))
        assert compiled == blocks[:-1]
        assert [b._compiled_call_impl is not None for b in blocks] == [True, False]
    finally:
        for block in compiled:
            block._compiled_call_impl = None


def test_an_mlp_called_by_keyword_runs_everywhere() -> None:
    """The hooks see positional inputs only; a block that passes the input by keyword gets the full MLP."""
    backbone = _backbone("scratch")
    block = block_list(backbone)[-1]

    def forward(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + block.attn(block.ln_1(x), mask)
        return x + block.mlp(x=block.ln_2(x))

    block.forward = forward
    model = SequenceClassifier(backbone, WIDTH, 3).eval()
    assert model.pooled_mlp is not None
    lengths = _mlp_input_lengths(model)
    ids, mask = _batch("right")
    selected = model(ids, mask)
    model.pooled_mlp = None
    torch.testing.assert_close(selected, model(ids, mask))
    assert lengths == [ids.shape[1]] * 2
