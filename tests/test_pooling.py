"""Last-token pooling from the attention mask: each row's logits do not depend on the batch around it."""

from __future__ import annotations

import pytest
import torch

from lastpool.data.batching import PaddingCollator
from lastpool.models.pooling import first_token_index, last_token_index, pool
from tests.conftest import tiny_classifier

LENGTHS = [3, 17, 9, 1, 12, 5]


def _texts(seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 64, (n,), generator=g).tolist() for n in LENGTHS]


def _alone(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids])
    return model(x, torch.ones_like(x))[0]


def _batch(ids: list[list[int]], side: str, pad: int = 0) -> dict[str, torch.Tensor]:
    return PaddingCollator(pad, side)([(row, 0) for row in ids])


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "first"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_row_logits_equal_alone_in_mixed_batch(pooling: str, side: str) -> None:
    model = tiny_classifier(pooling)
    texts = _texts()
    batch = _batch(texts, side)
    with torch.no_grad():
        batched = model(batch["input_ids"], batch["attention_mask"])
        for row, ids in enumerate(texts):
            torch.testing.assert_close(batched[row], _alone(model, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_ids_under_padding_change_nothing(side: str) -> None:
    model = tiny_classifier()
    texts = _texts()
    a = _batch(texts, side, pad=0)
    b = _batch(texts, side, pad=0)
    noise = torch.randint(2, 64, b["input_ids"].shape)
    b["input_ids"] = torch.where(b["attention_mask"].bool(), b["input_ids"], noise)
    assert not torch.equal(a["input_ids"], b["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(
            model(a["input_ids"], a["attention_mask"]), model(b["input_ids"], b["attention_mask"]), atol=1e-6, rtol=0
        )


def test_pooled_index_is_last_real_token() -> None:
    texts = _texts()
    right = _batch(texts, "right")["attention_mask"]
    left = _batch(texts, "left")["attention_mask"]
    assert last_token_index(right).tolist() == [n - 1 for n in LENGTHS]
    assert last_token_index(left).tolist() == [max(LENGTHS) - 1] * len(LENGTHS)
    assert first_token_index(right).tolist() == [0] * len(LENGTHS)
    assert first_token_index(left).tolist() == [max(LENGTHS) - n for n in LENGTHS]


def test_pool_selects_hidden_state_at_that_index() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    assert torch.equal(pool(hidden, mask, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.equal(pool(hidden, mask, "first"), torch.stack([hidden[0, 0], hidden[1, 1]]))
    assert torch.equal(pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
    assert torch.equal(pool(hidden, mask, "max")[1], hidden[1, 1:].max(0).values)


def test_pad_id_equal_to_a_real_token_does_not_move_the_pooled_token() -> None:
    """pad == EOS: a text ending in the pad id is still pooled at its own last token."""
    model = tiny_classifier()
    eos = 7
    texts = [[5, 9, eos], [4, 4, 4, 4, 4, 6, eos]]
    batch = _batch(texts, "right", pad=eos)
    with torch.no_grad():
        batched = model(batch["input_ids"], batch["attention_mask"])
        for row, ids in enumerate(texts):
            torch.testing.assert_close(batched[row], _alone(model, ids), atol=1e-5, rtol=0)


def seed_tutorial_logits(model: torch.nn.Module, texts: list[list[int]]) -> torch.Tensor:
    """The seed tutorial's pooling: right padding with id 0, no padding mask, hidden state at position -1."""
    longest = max(len(t) for t in texts)
    ids = torch.tensor([t + [0] * (longest - len(t)) for t in texts])
    hidden = model.backbone(ids, torch.ones_like(ids))
    return model.head(hidden[:, -1])


def test_seed_pooling_fails_the_same_check() -> None:
    model = tiny_classifier()
    texts = _texts()
    with torch.no_grad():
        seed = seed_tutorial_logits(model, texts)
        alone = torch.stack([_alone(model, ids) for ids in texts])
    longest = max(LENGTHS)
    mismatched = [not torch.allclose(seed[i], alone[i], atol=1e-5) for i in range(len(texts))]
    # Every row shorter than the batch's longest is classified from a padding position.
    assert mismatched == [n < longest for n in LENGTHS]
    assert sum(mismatched) == len(LENGTHS) - 1
