"""Length-bucketed training batches, token-budget inference batches and the padding collator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lastpool.data.batching import EncodedDataset, LengthBucketSampler, PaddingCollator, token_budget_batches


def skewed_lengths(n: int = 1000, seed: int = 0) -> list[int]:
    """Mostly short texts with a long tail, like real classification data."""
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(mean=3.0, sigma=0.8, size=n), 2, 512)]


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def spread(batches: list[list[int]], lengths: list[int]) -> float:
    """Mean (longest - shortest) within a batch: the padding a batch carries."""
    arr = np.asarray(lengths)
    return float(np.mean([arr[b].max() - arr[b].min() for b in batches]))


@pytest.mark.parametrize(
    ("n", "batch_size", "bucket_batches"), [(1000, 32, 50), (1000, 32, 4), (101, 8, 3), (5, 8, 50)]
)
def test_every_index_once_per_epoch(n: int, batch_size: int, bucket_batches: int) -> None:
    lengths = skewed_lengths(n)
    sampler = LengthBucketSampler(lengths, batch_size, seed=3, bucket_batches=bucket_batches)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(flat(batches)) == list(range(n))
        assert all(1 <= len(b) <= batch_size for b in batches)
        assert len(sampler) == len(batches)


@pytest.mark.parametrize("shuffle", [True, False])
def test_len_with_drop_last_and_no_shuffle(shuffle: bool) -> None:
    lengths = skewed_lengths(1003)
    sampler = LengthBucketSampler(lengths, 16, seed=0, shuffle=shuffle, bucket_batches=5, drop_last=shuffle)
    batches = list(sampler)
    assert len(sampler) == len(batches)
    if shuffle:
        assert all(len(b) == 16 for b in batches) and len(batches) == 1003 // 16
    else:
        assert flat(batches) == np.argsort(lengths, kind="stable").tolist()


def test_same_seed_and_epoch_same_batches_other_epoch_other_order() -> None:
    lengths = skewed_lengths(500)
    a = LengthBucketSampler(lengths, 16, seed=7)
    b = LengthBucketSampler(lengths, 16, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating does not advance any hidden state
    first = list(a)
    a.set_epoch(3)
    assert list(a) != first
    assert sorted(map(sorted, list(a))) != sorted(map(sorted, first))  # different groupings, not just order
    c = LengthBucketSampler(lengths, 16, seed=8)
    c.set_epoch(2)
    assert list(c) != first


def test_buckets_cut_padding_against_random_batches() -> None:
    lengths = skewed_lengths(2000)
    sampler = LengthBucketSampler(lengths, 32, seed=0)
    bucketed = spread(list(sampler), lengths)
    perm = np.random.default_rng(0).permutation(len(lengths)).tolist()
    random_batches = [perm[i : i + 32] for i in range(0, len(perm), 32)]
    assert bucketed < 0.2 * spread(random_batches, lengths)
    # ... while batch order stays random: batch mean lengths are not sorted.
    means = [float(np.mean([lengths[i] for i in b])) for b in sampler]
    assert means != sorted(means) and means != sorted(means, reverse=True)


def test_sampler_rejects_zero_batch() -> None:
    with pytest.raises(ValueError):
        LengthBucketSampler([1, 2, 3], 0)


@pytest.mark.parametrize(("max_tokens", "max_batch"), [(256, 64), (1000, 8), (64, 1000), (10, 4)])
def test_token_budget_batches(max_tokens: int, max_batch: int) -> None:
    lengths = skewed_lengths(300)
    batches = token_budget_batches(lengths, max_tokens, max_batch)
    assert sorted(flat(batches)) == list(range(300))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= max_batch
        assert len(batch) == 1 or len(batch) * longest <= max_tokens  # a single over-long text still runs
    # Sorted by length: batches are contiguous runs of the length order.
    assert flat(batches) == np.argsort(lengths, kind="stable").tolist()


def test_token_budget_edge_cases() -> None:
    assert token_budget_batches([], 100, 10) == []
    assert token_budget_batches([500], 100, 10) == [[0]]
    assert token_budget_batches([3, 3, 3, 3], 6, 10) == [[0, 1], [2, 3]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_collator(side: str) -> None:
    rows = [([5, 6, 7], 1), ([8], 0), ([9, 10], 2)]
    batch = PaddingCollator(pad_token_id=99, padding_side=side)(rows)
    assert batch["labels"].tolist() == [1, 0, 2]
    if side == "right":
        assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 99, 99], [9, 10, 99]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    else:
        assert batch["input_ids"].tolist() == [[5, 6, 7], [99, 99, 8], [99, 9, 10]]
        assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    with pytest.raises(ValueError):
        PaddingCollator(0, "middle")


def test_encoded_dataset() -> None:
    ds = EncodedDataset([[1, 2], [3]], [0, 1])
    assert len(ds) == 2 and ds[1] == ([3], 1) and ds.lengths == [2, 1]
    assert EncodedDataset([[1]]).labels == [-1]
    with pytest.raises(ValueError):
        EncodedDataset([[1], [2]], [0])


def test_token_dropout_keeps_last_token_and_repeats_with_seed() -> None:
    from lastpool.data.batching import TokenDropoutCollator

    rows = [(list(range(10, 40)), 0), ([5, 6, 99], 1)]
    a = TokenDropoutCollator(0, rate=0.3, seed=7)(rows)
    b = TokenDropoutCollator(0, rate=0.3, seed=7)(rows)
    assert torch.equal(a["input_ids"], b["input_ids"])
    lengths = a["attention_mask"].sum(1).tolist()
    assert lengths[0] < 30  # some of 29 droppable tokens went (p of none: 0.7**29)
    assert a["input_ids"][0, lengths[0] - 1].item() == 39
    assert a["input_ids"][1, lengths[1] - 1].item() == 99
    kept = a["input_ids"][0, : lengths[0]].tolist()
    assert kept == sorted(kept)  # order preserved
    plain = TokenDropoutCollator(0, rate=0.0)(rows)
    assert plain["attention_mask"].sum(1).tolist() == [30, 3]
