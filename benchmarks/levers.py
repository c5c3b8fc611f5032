"""The speed levers that ``train_step.py`` does not time, each measured on its own, in one process:

- where the head runs: pool first, then the 3-way head (lastpool) vs transformers' ``score`` layer on
  every position (which also needs the last block at every position) vs, on top of that, a causal LM's
  vocabulary head left on (what loading the model for causal LM and reading one position costs);
- which AdamW: fused vs foreach vs one tensor at a time, over the 135 M float32 master weights;
- a host sync per step (``loss.item()`` for a log line) vs the losses kept as tensors;
- LoRA's adapter dropout: none vs 0.05 (random masks on the inputs of 210 adapted projections), and
  LoRA with compiled decoder blocks (``--compile``; the warm-up round holds the compile);
- torch threads: 1 vs 2 (this machine has 2 cores);
- tokenizing the training texts once (lastpool) vs once per epoch, as a share of an epoch.

SmolLM2-135M-Instruct (the dequantized GGUF) as a lastpool full fine-tune (bf16 weights, float32
masters, eager attention, clipping folded into fused AdamW) on the first ``--batches`` length-bucketed
batches of Financial PhraseBank (allagree) at batch 16, max length 64. The step rows run ``--rounds``
rounds after a warm-up round, every row once per round, each round starting one row later (a slow phase
of a shared machine hits all rows, and no row always follows the same one); reported: the median over
rounds of seconds per step and each row's speed relative to the first row of its group.

    python benchmarks/levers.py [--batches 8] [--rounds 3] [--no-write]
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F
from _results import command_line, machine_info, publish  # benchmarks/ is on sys.path when run as a script
from train_step import Forward, Variant, bucketed_batches, step_benchmark_args

from lastpool.data.split import stratified_split
from lastpool.data.tables import read_table
from lastpool.models.backbones import load_backbone
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.models.gpt import position_ids_from_mask
from lastpool.models.lora import apply_lora
from lastpool.models.pooling import pooled_index
from lastpool.text.tokenizers import TextEncoder, load_pretrained_tokenizer

MARK_BEGIN, MARK_END = "<!-- levers:begin -->", "<!-- levers:end -->"


def head_on_every_position(model: SequenceClassifier, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """transformers' ``score`` layer: class logits at every position, then the last real token's row."""
    hidden = model.backbone(ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    logits = model.head(model.head_dropout(hidden))
    return logits[torch.arange(ids.shape[0]), pooled_index(mask, "last")]


def with_vocabulary_head(model: SequenceClassifier, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """As ``head_on_every_position``, plus the model's (tied) vocabulary head on every position, whose
    logits nothing reads: the forward of a causal-LM class used as a classifier."""
    hidden = model.backbone(ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    vocabulary = model.backbone.model.get_input_embeddings().weight
    F.linear(hidden, vocabulary)  # computed and dropped, as a causal LM's forward computes it
    logits = model.head(model.head_dropout(hidden))
    return logits[torch.arange(ids.shape[0]), pooled_index(mask, "last")]


class StepRow:
    """One timed row: a variant's training step with a given forward, host sync and thread count."""

    def __init__(self, variant: Variant, forward: Forward | None = None, sync: bool = False,
                 threads: int | None = None) -> None:
        self.variant, self.forward, self.sync, self.threads = variant, forward, sync, threads

    def run(self, batches: list[dict[str, torch.Tensor]]) -> float:
        before = torch.get_num_threads()
        if self.threads is None:
            return sum(self.variant.step(batch, self.forward, self.sync) for batch in batches)
        torch.set_num_threads(self.threads)
        try:
            return sum(self.variant.step(batch, self.forward, self.sync) for batch in batches)
        finally:
            torch.set_num_threads(before)
            self.variant.step(batches[0])  # untimed: the next row should not pay for the thread pool's regrowth


def time_steps(groups: dict[str, dict[str, StepRow]], batches: list[dict[str, torch.Tensor]],
               rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds per step of every row. Round 0 is a warm-up; each round runs every row once, starting
    one row later than the round before, so no row always follows the same one."""
    rows = [(group, name, row) for group, members in groups.items() for name, row in members.items()]
    times: dict[str, dict[str, list[float]]] = {g: {name: [] for name in members} for g, members in groups.items()}
    for round_ in range(rounds + 1):
        for k in range(len(rows)):
            group, name, row = rows[(round_ + k) % len(rows)]
            seconds = row.run(batches) / len(batches)
            print(f"round {round_} [{group}] {name}: {seconds:.3f} s/step", flush=True)
            if round_ > 0:
                times[group][name].append(seconds)
    return {g: {name: statistics.median(t) for name, t in members.items()} for g, members in times.items()}


def lora_variant(base: SequenceClassifier, dropout: float, compiled: bool = False) -> Variant:
    """lastpool's LoRA fine-tune (r 16, alpha 32, the default targets) with the given adapter dropout,
    its decoder blocks compiled or not."""
    model = copy.deepcopy(base)
    apply_lora(model, model.backbone.config.model_type, r=16, alpha=32, dropout=dropout)
    return Variant(model, True, True, compiled, True, True)


def time_optimizers(base: SequenceClassifier, repeats: int) -> dict[str, float]:
    """Seconds per ``AdamW.step`` over float32 copies of every weight of the model (what lastpool's
    optimizer updates in a full fine-tune), for each implementation, steps interleaved across them. The
    gradients are random: AdamW's work does not depend on their values."""
    shapes = [p.shape for p in base.parameters()]
    grads = [torch.randn(shape) * 1e-3 for shape in shapes]
    kinds: dict[str, dict[str, bool]] = {
        "fused (lastpool)": {"fused": True}, "foreach": {"foreach": True}, "one tensor at a time": {"foreach": False},
    }
    optimizers = []
    for kwargs in kinds.values():
        params = [p.detach().float().clone().requires_grad_(True) for p in base.parameters()]
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad  # shared: no optimizer writes its gradients
        optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.0, **kwargs)
        optimizer.step()  # creates the moment buffers, outside the timing
        optimizers.append(optimizer)
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for _ in range(repeats):
        for name, optimizer in zip(kinds, optimizers, strict=True):
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def time_tokenization(encoder: TextEncoder, texts: list[str], repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds to tokenize ``texts`` as lastpool does before training."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.encode(texts)
        best = min(best, time.perf_counter() - start)
    return best


def section(title: str, rows: dict[str, float], reference: str, unit: str = "s / step") -> list[str]:
    """A markdown table of seconds per row and each row's speed relative to the first, then a blank line."""
    first = next(iter(rows.values()))
    return [f"| {title} | {unit} | speed vs {reference} |", "|---|---|---|",
            *[f"| {name} | {seconds:.3f} | {first / seconds:.2f}x |" for name, seconds in rows.items()], ""]


def main() -> None:
    args = step_benchmark_args(__doc__, batches=8, rounds=3)
    command = command_line("levers.py")
    table_ = read_table(str(args.data))
    assert table_.labels is not None
    names = sorted(set(table_.labels))
    labels = [names.index(label) for label in table_.labels]
    train_rows, _ = stratified_split(table_.labels, 0.1, seed=0)
    train_texts = [table_.texts[i] for i in train_rows]
    encoder = TextEncoder(load_pretrained_tokenizer(str(args.model)), 64)
    epoch_batches = bucketed_batches(encoder, train_texts, [labels[i] for i in train_rows])
    steps_per_epoch, batches = len(epoch_batches), epoch_batches[: args.batches]
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    backbone, _ = load_backbone(str(args.model))
    base = SequenceClassifier(backbone, backbone.hidden_size, len(names))
    threads = torch.get_num_threads()

    lastpool = Variant(base, True, True, False, True, True)
    full_mlp = Variant(base, True, True, False, False, True)  # transformers' layout needs every position
    groups = {
        "head": {
            "pool, then the 3-way head; last block's MLP at the pooled token (lastpool)": StepRow(lastpool),
            "pool, then the head; last block's MLP at every position": StepRow(full_mlp),
            "the head on every position, then the last token's row (transformers' score layer)":
                StepRow(full_mlp, head_on_every_position),
            "the same + the 49152-word vocabulary head on every position, unused (a causal-LM forward)":
                StepRow(full_mlp, with_vocabulary_head),
        },
        "sync": {
            "losses kept as tensors (lastpool)": StepRow(lastpool),
            "loss.item() every step": StepRow(lastpool, sync=True),
        },
        "lora": {
            "LoRA r 16, no adapter dropout (lastpool's default, as peft's)": StepRow(lora_variant(base, 0.0)),
            "LoRA r 16, adapter dropout 0.05": StepRow(lora_variant(base, 0.05)),
            "LoRA r 16, no adapter dropout, compiled decoder blocks (--compile)":
                StepRow(lora_variant(base, 0.0, compiled=True)),
        },
        "threads": {
            f"{threads} torch threads (lastpool: torch's default, one per core)": StepRow(lastpool),
            "1 torch thread": StepRow(lastpool, threads=1),
        },
    }
    steps = time_steps(groups, batches, args.rounds)
    del lastpool, full_mlp, groups
    optimizers = time_optimizers(base, repeats=2 * args.rounds + 1)
    tokenize = time_tokenization(encoder, train_texts)
    epoch = next(iter(steps["head"].values())) * steps_per_epoch

    block = "\n".join([
        MARK_BEGIN, "## Levers measured one by one (`benchmarks/levers.py`)", "",
        f"Command: `{command}`. Machine: {machine_info()}.", "",
        f"SmolLM2-135M-Instruct full fine-tune as lastpool runs it (bf16 weights, float32 masters, eager "
        f"attention, clipping folded into fused AdamW); the same {len(batches)} length-bucketed Financial "
        f"PhraseBank batches of 16 ({real_tokens / len(batches):.0f} real tokens per batch on average) in every "
        f"row; median of {args.rounds} rounds after a warm-up round; each round runs every row once, starting one "
        "row later than the round before. "
        "Speed is relative to the first row of each table.", "",
        *section("where the head runs", steps["head"], "lastpool"), *section("host sync", steps["sync"], "lastpool"),
        *section("LoRA fine-tune (r 16)", steps["lora"], "lastpool"),
        *section("threads", steps["threads"], "lastpool"),
        *section(f"AdamW over {sum(p.numel() for p in base.parameters()) / 1e6:.1f} M float32 masters", optimizers,
                 "fused", unit="s / optimizer step"),
        f"Tokenizing the {len(train_texts)} training texts: {tokenize:.2f} s, once per run in lastpool; "
        f"re-tokenizing every epoch would add {100 * tokenize / epoch:.2f}% to an epoch of "
        f"{steps_per_epoch} steps at the first row's speed ({epoch:.0f} s).",
        MARK_END])
    publish(block, MARK_BEGIN, MARK_END, write=not args.no_write)


if __name__ == "__main__":
    main()
