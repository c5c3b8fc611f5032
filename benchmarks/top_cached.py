"""Exploration: fine-tune only the top blocks of a pretrained decoder on cached hidden states.

The question behind it: can a run that trains the last few blocks reach a full fine-tune's accuracy in
a fraction of its time? The frozen lower blocks see every text once: their output (the hidden states
after block K, every token) is cached, and each epoch runs only blocks K+1..L, the head and their
backward pass. L below the model's depth truncates it (as ``--layer L`` does; the final norm is then
dropped). Before training, the script checks that the top blocks fed the cached states reproduce the
model's own pooled output (for Llama-family models the rotary positions are computed inside the
forward, so ``inputs_embeds`` is the same input; a family that adds position embeddings there would
not pass the check).

Data: Financial PhraseBank allagree, lastpool's 10% stratified validation split for ``--seed``; or
``--data`` with ``--sample N`` (suite.py's stratified sample) and ``--dev`` (scored on that file).
Training: float32 (or bf16 autocast with ``--bf16``), AdamW (weight decay 0.01), cosine schedule with
10% warmup, gradient clipping 1.0, batch 16 of length-sorted shuffled buckets, a bias-free head
(normal, std 0.02), last-token pooling. Prints one JSON line per run: validation accuracy after each
epoch and the training seconds (the cache pass is printed once, before the runs).

    python benchmarks/top_cached.py --runs 11:15:3e-4:3 26:30:3e-4:3   # K:L:lr:epochs
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pretrained import DEFAULT_MODEL  # benchmarks/ is on sys.path
from suite import sample_indices
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from lastpool.data.labels import LabelSet
from lastpool.data.split import stratified_split
from lastpool.data.tables import read_table
from lastpool.models.backbones import decoder_blocks, load_backbone
from lastpool.models.gpt import position_ids_from_mask
from lastpool.models.pooling import pool
from lastpool.text.tokenizers import TextEncoder, load_pretrained_tokenizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "financial_phrasebank" / "sentences_allagree.txt"


def length_batches(lengths: Sequence[int], size: int, rng: np.random.Generator | None) -> list[list[int]]:
    """Length-sorted batches; shuffled (as whole batches) when ``rng`` is given."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    if rng is not None:
        rng.shuffle(chunks)
    return chunks


def pad_rows(rows: Sequence[torch.Tensor], value: float = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad [T_i, ...] rows (token ids or hidden states) into [B, T, ...] plus the attention mask."""
    lengths = torch.tensor([r.shape[0] for r in rows])
    mask = (torch.arange(int(lengths.max())) < lengths[:, None]).long()
    return pad_sequence(list(rows), batch_first=True, padding_value=value), mask


def blocks_between(base: PreTrainedModel, first: int, last: int) -> PreTrainedModel:
    """A copy of ``base`` that runs blocks ``first+1..last`` only (no final norm unless ``last`` is the top)."""
    part = copy.deepcopy(base)
    depth = len(decoder_blocks(base))
    kept = nn.ModuleList(list(decoder_blocks(part))[first:last])
    part.layers = kept
    part.config = copy.deepcopy(part.config)
    part.config.num_hidden_layers = len(kept)
    if last < depth:
        part.norm = nn.Identity()
    return part


def cache_hidden(base: PreTrainedModel, ids: Sequence[list[int]], pad: int, at: Sequence[int],
                 bf16: bool) -> dict[int, list[torch.Tensor]]:
    """The hidden states after each block in ``at`` for every text (its real tokens only)."""
    lower = blocks_between(base, 0, max(at))
    lower.norm = nn.Identity()  # the last entry of hidden_states would otherwise be normed
    lower.eval()
    cache: dict[int, list[torch.Tensor]] = {k: [torch.empty(0)] * len(ids) for k in at}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        for batch in length_batches([len(x) for x in ids], 64, None):
            input_ids, mask = pad_rows([torch.tensor(ids[i]) for i in batch], pad)
            out = lower(input_ids=input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                        output_hidden_states=True, use_cache=False)
            for k in at:
                for j, i in enumerate(batch):
                    cache[k][i] = out.hidden_states[k][j, : len(ids[i])].float().clone()
    return cache


def check_reproduces(base: PreTrainedModel, top: PreTrainedModel, hidden: list[torch.Tensor],
                     ids: Sequence[list[int]], pad: int, last: int) -> float:
    """Max abs difference, over 8 texts, between the top blocks on cached states and the model itself
    (its hidden states after block ``last``: raw below the top, normed at the top, as ``top`` returns)."""
    input_ids, mask = pad_rows([torch.tensor(x) for x in ids[:8]], pad)
    positions = position_ids_from_mask(mask)
    with torch.no_grad():
        states = base(input_ids=input_ids, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                      use_cache=False).hidden_states
        ref = pool(states[last], mask, "last")
        x, _ = pad_rows(hidden[:8])
        got = pool(top(inputs_embeds=x, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state,
                   mask, "last")
    return float((got - ref).abs().max())


def train_top(top: PreTrainedModel, hidden: list[torch.Tensor], n_train: int, y: Sequence[int], n_labels: int,
              first: int, last: int, lr: float, epochs: int, bf16: bool, seed: int) -> dict[str, object]:
    """Train ``top`` (blocks ``first+1..last``, from ``blocks_between``) and a head on the cached states;
    accuracy on rows ``n_train:`` per epoch."""
    top.config._attn_implementation = "eager"
    torch.manual_seed(seed)
    head = nn.Linear(top.config.hidden_size, n_labels, bias=False)
    nn.init.normal_(head.weight, std=0.02)
    params = list(top.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(n_train / 16)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    rng = np.random.default_rng(seed)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def logits(rows: list[int]) -> torch.Tensor:
        x, mask = pad_rows([hidden[i] for i in rows])
        with autocast():
            out = top(inputs_embeds=x, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
            return head(pool(out.last_hidden_state, mask, "last")).float()

    started, accuracy = time.perf_counter(), []
    val_rows = list(range(n_train, len(hidden)))
    for _ in range(epochs):
        top.train()
        for rows in length_batches([hidden[i].shape[0] for i in range(n_train)], 16, rng):
            loss = F.cross_entropy(logits(rows), torch.tensor([y[i] for i in rows]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        top.eval()
        with torch.no_grad():
            preds = torch.cat([logits(val_rows[i : i + 64]).argmax(-1) for i in range(0, len(val_rows), 64)])
        accuracy.append(round(float((preds.numpy() == np.asarray(y[n_train:])).mean()), 4))
    return {"K": first, "L": last, "lr": lr, "epochs": epochs, "acc_per_epoch": accuracy,
            "train_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--dev", default=None, help="score on this file instead of the 10%% validation split")
    parser.add_argument("--sample", type=int, default=None, help="train on a stratified sample of this many rows "
                        "(suite.py's sample for the seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (only where the CPU runs bf16 natively)")
    parser.add_argument("--runs", nargs="+", required=True, help="K:L:lr:epochs, e.g. 26:30:3e-4:3")
    args = parser.parse_args()
    if args.sample is not None and args.dev is None:
        parser.error("--sample needs --dev (the sample has no validation split of its own)")
    runs = [(int(k), int(last), float(lr), int(ep)) for k, last, lr, ep in (r.split(":") for r in args.runs)]
    table = read_table(args.data)
    assert table.labels is not None
    labels = LabelSet.from_labels(table.labels)
    encoded = labels.encode(table.labels)
    texts = list(table.texts)
    if args.sample is not None:
        train_idx = sample_indices(table.labels, args.sample, args.seed)
    else:
        train_idx, val_idx = stratified_split(table.labels, 0.1, args.seed)
    if args.dev is not None:
        dev = read_table(args.dev)
        assert dev.labels is not None
        val_idx = list(range(len(texts), len(texts) + len(dev.texts)))
        texts += dev.texts
        encoded = encoded + labels.encode(dev.labels)
    backbone, _ = load_backbone(args.model)
    encoder = TextEncoder(load_pretrained_tokenizer(args.model), 128, "{text}")
    order = train_idx + val_idx
    ids = encoder.encode([texts[i] for i in order])
    y = [encoded[i] for i in order]
    started = time.perf_counter()
    cache = cache_hidden(backbone.model, ids, encoder.pad_token_id, sorted({k for k, *_ in runs}), args.bf16)
    print(json.dumps({"cache_pass_s": round(time.perf_counter() - started, 1), "texts": len(ids)}), flush=True)
    for first, last, lr, epochs in runs:
        top = blocks_between(backbone.model, first, last)
        diff = check_reproduces(backbone.model, top, cache[first], ids, encoder.pad_token_id, last)
        print(json.dumps({"K": first, "L": last, "check_max_abs_diff": diff}), flush=True)
        print(json.dumps(train_top(top, cache[first], len(train_idx), y, len(labels.names), first, last,
                                   lr, epochs, args.bf16, args.seed)), flush=True)


if __name__ == "__main__":
    main()
