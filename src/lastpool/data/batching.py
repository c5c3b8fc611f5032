"""Length-bucketed batches with dynamic padding.

Classification texts are short and uneven; padding every batch to the longest text in the data wastes
most of the compute. Training batches group texts of similar length (chosen within large random
chunks, so batches stay random) and the batch order is shuffled; inference batches sort by length and
fill a token budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

Target = int | float | list[float]  # a class id, a value, or (multi-label) one 0/1 per label


def target_tensor(targets: Sequence[Target]) -> torch.Tensor:
    """A batch's targets: class ids as int64; values and multi-hot rows as float32."""
    if all(isinstance(t, int) for t in targets):
        return torch.tensor(targets, dtype=torch.long)
    return torch.tensor(targets, dtype=torch.float32)


class EncodedDataset(Dataset[tuple[list[int], Target]]):
    """Token ids (already truncated) and their targets (class ids, -1 when unlabelled; values; multi-hot
    rows)."""

    def __init__(self, ids: Sequence[list[int]], labels: Sequence[Target] | None = None) -> None:
        self.ids = list(ids)
        self.labels: list[Target] = list(labels) if labels is not None else [-1] * len(self.ids)
        if len(self.labels) != len(self.ids):
            raise ValueError("ids and labels differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[list[int], Target]:
        return self.ids[index], self.labels[index]

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.ids]


class LengthBucketSampler(Sampler[list[int]]):
    """Yields index batches of similar length; reseeded per epoch (``set_epoch``) for reproducibility.

    Each epoch: shuffle all indices, cut them into chunks of ``batch_size * bucket_batches``, sort each
    chunk by length, cut it into batches, then shuffle the order of all batches. ``min_batch``: a chunk's
    last batch smaller than this joins the one before it (with N processes each batch is split N ways,
    so none may have fewer than N rows). Every process computes the same batches from the same seed.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True,
                 bucket_batches: int = 50, drop_last: bool = False, min_batch: int = 1) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.bucket_batches = bucket_batches
        self.drop_last = drop_last
        self.min_batch = min_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(n)
        chunk = self.batch_size * self.bucket_batches
        result: list[list[int]] = []
        for start in range(0, n, chunk):
            part = perm[start : start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            cut = [part[i : i + self.batch_size].tolist() for i in range(0, len(part), self.batch_size)]
            if len(cut[-1]) < self.min_batch and (len(cut) > 1 or result):
                small = cut.pop()
                (cut[-1] if cut else result[-1]).extend(small)
            result.extend(cut)
        if self.drop_last:
            result = [b for b in result if len(b) == self.batch_size]
        rng.shuffle(result)
        return result

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        n = len(self.lengths)
        if self.drop_last:
            # Exact only without bucketing leftovers; good enough for schedule lengths.
            return n // self.batch_size
        if not self.shuffle:
            return -(-n // self.batch_size)
        chunk = self.batch_size * self.bucket_batches
        full, rest = divmod(n, chunk)
        tail = -(-rest // self.batch_size)
        if rest % self.batch_size and rest % self.batch_size < self.min_batch and (tail > 1 or full):
            tail -= 1
        return full * self.bucket_batches + tail


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Inference batches over length-sorted indices, each padded size (rows x longest) within budget."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order.tolist():
        length = max(int(lengths[index]), 1)
        grown = max(longest, length)
        if current and (grown * (len(current) + 1) > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current, grown = [], length
        current.append(index)
        longest = grown
    if current:
        batches.append(current)
    return batches


def rows_in_input_order(lengths: Sequence[int], run: Callable[[list[int]], np.ndarray], max_tokens: int,
                        max_batch: int) -> np.ndarray:
    """``run(indices) -> rows [len(indices), ...]`` over the token-budget batches of ``lengths``, the rows
    put back in the input order: the one batching loop of every inference path (predict, features,
    cached hidden states, ONNX). Empty ``lengths`` give an empty array."""
    batches = token_budget_batches(lengths, max_tokens, max_batch)
    if not batches:
        return np.zeros((0,), dtype=np.float32)
    stacked = np.concatenate([np.asarray(run(batch)) for batch in batches])
    in_order = np.empty_like(stacked)
    in_order[np.concatenate([np.asarray(batch) for batch in batches])] = stacked
    return in_order


class PaddingCollator:
    """Pads a list of (ids, label) to the longest row; the attention mask marks the real tokens."""

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("right", "left"):
            raise ValueError("padding_side must be 'right' or 'left'")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def __call__(self, rows: Sequence[tuple[list[int], Target]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for row, (ids, _) in enumerate(rows):
            n = len(ids)
            span = slice(0, n) if self.padding_side == "right" else slice(longest - n, longest)
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": target_tensor([label for _, label in rows])}


class TokenDropoutCollator(PaddingCollator):
    """Training-time augmentation: each token but the last is deleted with probability ``rate``.

    On a few thousand texts a from-scratch model memorises exact token sequences; deleting a random
    tenth of the tokens each epoch makes it rely on more of the text. The last token (EOS for the
    trained BPE) is kept, so last-token pooling still reads the same symbol. Seeded, so runs repeat.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", rate: float = 0.0, seed: int = 0) -> None:
        super().__init__(pad_token_id, padding_side)
        if not 0.0 <= rate < 1.0:
            raise ValueError("token dropout rate must be in [0, 1)")
        self.rate = rate
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, rows: Sequence[tuple[list[int], Target]]) -> dict[str, torch.Tensor]:
        if self.rate > 0:
            rows = [(self._drop(ids), label) for ids, label in rows]
        return super().__call__(rows)

    def _drop(self, ids: list[int]) -> list[int]:
        if len(ids) < 3:
            return ids
        keep = torch.rand(len(ids) - 1, generator=self.generator) >= self.rate
        kept = [token for token, k in zip(ids[:-1], keep.tolist(), strict=True) if k]
        return (kept or ids[:1]) + ids[-1:]
