"""Where a training step's time goes: bf16 autocast vs bf16 weights with float32 masters, SDPA vs eager
attention, the last block's MLP at the pooled token only, gradient clipping folded into the fused AdamW
step, torch.compile'd decoder blocks (``--compile``), on the same model and the same real batches, in one
process, rounds interleaved. Each lastpool lever is added to the previous variant, so each row's gain
over the row above is that lever's.

SmolLM2-135M-Instruct (the dequantized GGUF) as a lastpool full fine-tune; the batches are the first
``--batches`` length-bucketed batches of Financial PhraseBank (allagree) at batch 16, max length 64.
Each variant runs them ``--rounds`` times (the first round is a warm-up, not counted), one variant after
the other within a round, so a slow phase of a shared machine hits all of them. Reported: seconds per
step (median over rounds of the summed step time) and the ratio to the autocast + SDPA reference, which
is how transformers' Trainer with ``bf16=True`` runs the model, and the warm-up round's time per step
(which holds the compile of the compiled variant).

    python benchmarks/train_step.py [--batches 12] [--rounds 4] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _results import command_line, machine_info, publish  # benchmarks/ is on sys.path when run as a script
from pretrained import DEFAULT_DATA, DEFAULT_MODEL

from lastpool.data.batching import EncodedDataset, LengthBucketSampler, PaddingCollator
from lastpool.data.tables import read_table
from lastpool.models.backbones import load_backbone
from lastpool.models.classifier_model import SequenceClassifier
from lastpool.text.tokenizers import TextEncoder, load_pretrained_tokenizer
from lastpool.training.compilation import compile_blocks
from lastpool.training.optimization import clip_in_fused_step, make_optimizer
from lastpool.training.precision import MasterWeights, attention_for_training

Forward = Callable[[SequenceClassifier, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, ids, mask) -> logits
MARK_BEGIN, MARK_END = "<!-- train_step:begin -->", "<!-- train_step:end -->"
VARIANTS = {  # name: (bf16 weights + masters, eager attention, compiled blocks, last MLP pooled only, clip in AdamW)
    "autocast bf16, SDPA (reference: how Trainer bf16=True runs)": (False, False, False, False, False),
    "autocast bf16, eager attention": (False, True, False, False, False),
    "bf16 weights + float32 masters, SDPA": (True, False, False, False, False),
    "bf16 weights + float32 masters, eager attention": (True, True, False, False, False),
    "the same + last block's MLP at the pooled token only": (True, True, False, True, False),
    "the same + clipping folded into fused AdamW (lastpool)": (True, True, False, True, True),
    "the same + compiled decoder blocks (lastpool --compile)": (True, True, True, True, True),
}


class Variant:
    """One model + optimizer set up the way a variant trains."""

    def __init__(self, base: SequenceClassifier, masters: bool, eager: bool, compiled: bool, pooled_mlp: bool,
                 folded_clip: bool) -> None:
        self.model = copy.deepcopy(base)
        if not pooled_mlp:  # the MLP at every position of the last block, as transformers runs it
            self.model.pooled_mlp = None
        if compiled:  # attention stays eager for good: switching it per step would change the compiled code
            self.model.backbone.model.set_attn_implementation("eager")
            compile_blocks(self.model)
        self.master = MasterWeights(self.model) if masters else None
        self.optimizer = make_optimizer(self.master.masters if self.master else self.model, 5e-5, 0.0)
        self.eager = eager
        self.folded_clip = folded_clip
        self.losses: list[float | torch.Tensor] = []  # kept as a training loop keeps them for its log

    def step(self, batch: dict[str, torch.Tensor], forward: Forward | None = None, sync: bool = False) -> float:
        """Seconds for one training step on ``batch``; ``forward`` replaces the model's own forward
        (``benchmarks/levers.py`` times other head placements with it), ``sync`` reads the loss back
        to Python every step, as a loop that logs each step's loss does."""
        start = time.perf_counter()
        context: Any = attention_for_training(self.model, torch.device("cpu")) if self.eager else nullcontext()
        with context, torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.master is None):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            logits = forward(self.model, ids, mask) if forward is not None else self.model(ids, mask)
        loss = F.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        if self.master is not None:
            self.master.collect_grads()
            params = self.master.masters
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
        if self.folded_clip:
            clip_in_fused_step(self.optimizer, params, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.master is not None:
            self.master.push()
        if sync:
            self.losses.append(loss.item())
        else:
            self.losses.append(loss.detach())
        return time.perf_counter() - start


def bucketed_batches(encoder: TextEncoder, texts: list[str], labels: list[int]) -> list[dict[str, torch.Tensor]]:
    """The length-bucketed batches of 16 that lastpool's sampler (seed 0) makes of ``texts``, in its order."""
    dataset = EncodedDataset(encoder.encode(texts), labels)
    collate = PaddingCollator(encoder.pad_token_id)
    sampler = LengthBucketSampler(dataset.lengths, 16, seed=0)
    return [collate([dataset[i] for i in indices]) for indices in sampler.batches()]


def step_benchmark_args(doc: str | None, batches: int, rounds: int) -> argparse.Namespace:
    """The options of the per-step benchmarks (this script and ``levers.py``), parsed from the command line."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--batches", type=int, default=batches)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--no-write", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = step_benchmark_args(__doc__, batches=12, rounds=4)
    command = command_line("train_step.py")
    table = read_table(str(args.data))
    assert table.labels is not None
    names = sorted(set(table.labels))
    encoder = TextEncoder(load_pretrained_tokenizer(str(args.model)), 64)
    batches = bucketed_batches(encoder, table.texts, [names.index(label) for label in table.labels])[: args.batches]
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    backbone, _ = load_backbone(str(args.model))
    base = SequenceClassifier(backbone, backbone.hidden_size, len(names))
    variants = {name: Variant(base, *flags) for name, flags in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    warmup: dict[str, float] = {}
    for round_ in range(args.rounds + 1):
        for name, variant in variants.items():
            seconds = sum(variant.step(batch) for batch in batches)
            if round_ > 0:
                times[name].append(seconds)
            else:
                warmup[name] = seconds
            print(f"round {round_} {name}: {seconds / len(batches):.3f} s/step", flush=True)
    reference = statistics.median(times[next(iter(variants))])
    rows = [f"| {name} | {statistics.median(t) / len(batches):.3f} | {reference / statistics.median(t):.2f}x "
            f"| {warmup[name] / len(batches):.3f} |" for name, t in times.items()]
    block = "\n".join([
        MARK_BEGIN, "## One training step, variant by variant (`benchmarks/train_step.py`)", "",
        f"Command: `{command}`. Machine: {machine_info()}.", "",
        f"SmolLM2-135M-Instruct full fine-tune, the same {len(batches)} length-bucketed Financial PhraseBank "
        f"batches of 16 ({real_tokens / len(batches):.0f} real tokens per batch on average) in every variant; "
        f"forward, backward, gradient clipping and the fused AdamW step; median of {args.rounds} rounds "
        "after a warm-up round. The compiled variant's warm-up round holds its compile (with torch "
        "inductor's on-disk cache as this machine had it).", "",
        "| variant | s / step | speed vs reference | warm-up round, s / step |", "|---|---|---|---|", *rows,
        MARK_END])
    publish(block, MARK_BEGIN, MARK_END, write=not args.no_write)


if __name__ == "__main__":
    main()
