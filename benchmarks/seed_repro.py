"""Seed tutorial vs lastpool on Financial PhraseBank (allagree), 5 seeds, same split and tokenizer per seed.

(a) a faithful re-implementation of the seed tutorial's loop: right padding with id 0, no padding mask,
    the head applied to every position and ``logits[:, -1]`` taken, plain shuffled batches, AdamW with
    cosine decay over 6 epochs, ``loss.item()`` every step;
(b) ``lastpool train --config configs/seed.yaml`` (run in-process through the CLI entry point);
(c) ``lastpool train`` with the default from-scratch config (what ``--data FILE`` alone uses).

Both (a) and (b) use the same architecture (GPTBackbone, d_model 32, 1 layer, 1 head, d_ff 64), the same
BPE tokenizer (trained on the seed's training split; training is deterministic) and the same stratified
split per seed. Prints a Markdown table and writes it into docs/BENCHMARKS.md.

    python benchmarks/seed_repro.py [--data PATH] [--seeds 5] [--skip-default]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from _results import write_section  # benchmarks/ is on sys.path when run as a script

from lastpool.cli import main as lastpool_main
from lastpool.data.labels import LabelSet
from lastpool.data.split import stratified_split
from lastpool.data.tables import read_table
from lastpool.evaluation.metrics import classification_metrics
from lastpool.models.gpt import GPTBackbone, GPTConfig
from lastpool.text.tokenizers import TextEncoder, train_bpe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "financial_phrasebank" / "sentences_allagree.txt"
SEED_CONFIG = REPO / "configs" / "seed.yaml"
MARK_BEGIN, MARK_END = "<!-- seed_repro:begin -->", "<!-- seed_repro:end -->"


class SeedModel(torch.nn.Module):
    """The seed's classifier: decoder, then a head on every position; the caller takes position -1."""

    def __init__(self, config: GPTConfig, num_labels: int) -> None:
        super().__init__()
        self.backbone = GPTBackbone(config)
        self.head = torch.nn.Linear(config.d_model, num_labels)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids)  # no attention mask: padding is attended to
        return self.head(hidden)  # [B, T, C]


def seed_collate(rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([ids + [0] * (longest - len(ids)) for ids, _ in rows])
    return ids, torch.tensor([label for _, label in rows])


def run_seed_loop(train_ids, train_y, val_ids, val_y, labels, cfg: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    gpt = GPTConfig(vocab_size=cfg["vocab_size"], context_length=cfg["max_length"], d_model=cfg["d_model"],
                    n_layers=cfg["n_layers"], n_heads=cfg["n_heads"], d_ff=cfg["d_ff"], dropout=cfg["dropout"])
    model = SeedModel(gpt, len(labels))
    data = list(zip(train_ids, train_y, strict=True))
    loader = torch.utils.data.DataLoader(data, batch_size=cfg["batch_size"], shuffle=True, collate_fn=seed_collate,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    total = cfg["epochs"] * len(loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    history = []
    for _ in range(cfg["epochs"]):
        model.train()
        start = time.perf_counter()
        for ids, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(ids)[:, -1, :], y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            _ = loss.item()
        seconds = time.perf_counter() - start
        model.eval()
        preds: list[int] = []
        with torch.no_grad():
            for i in range(0, len(val_ids), cfg["batch_size"]):
                ids, _ = seed_collate([(x, 0) for x in val_ids[i : i + cfg["batch_size"]]])
                preds.extend(model(ids)[:, -1, :].argmax(-1).tolist())
        m = classification_metrics(val_y, preds, labels)
        history.append({"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "seconds": seconds})
    best = max(history, key=lambda h: h["macro_f1"])
    return {"final": history[-1], "best": best, "sec_per_epoch": statistics.mean(h["seconds"] for h in history)}


def run_lastpool(data: Path, seed: int, config: Path | None, work: Path) -> dict:
    out = work / f"run-{config.stem if config else 'default'}-{seed}"
    argv = ["train", "--data", str(data), "--seed", str(seed), "--out", str(out), "--quiet"]
    if config is not None:
        argv += ["--config", str(config)]
    code = lastpool_main(argv)
    if code != 0:
        raise SystemExit(f"lastpool train failed with exit code {code}")
    metrics = json.loads((out / "metrics.json").read_text())
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return {
        "final": {"accuracy": history[-1]["val_accuracy"], "macro_f1": history[-1]["val_macro_f1"]},
        "best": {"accuracy": metrics["val"]["accuracy"], "macro_f1": metrics["val"]["macro_f1"]},
        "sec_per_epoch": statistics.mean(h["seconds"] for h in history),
        "epochs": len(history),
    }


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def summarise(name: str, runs: list[dict]) -> list[str]:
    return [
        name,
        mean_std([r["final"]["accuracy"] for r in runs]),
        mean_std([r["final"]["macro_f1"] for r in runs]),
        mean_std([r["best"]["accuracy"] for r in runs]),
        mean_std([r["best"]["macro_f1"] for r in runs]),
        f"{statistics.mean(r['sec_per_epoch'] for r in runs):.3f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--skip-default", action="store_true", help="do not run the default config (c)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    cfg = yaml.safe_load(SEED_CONFIG.read_text())
    table = read_table(args.data)
    assert table.labels is not None
    label_set = LabelSet.from_labels(table.labels)
    labels = list(label_set.names)
    seeds = list(range(args.seeds))
    seed_runs, lastpool_runs, default_runs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for seed in seeds:
            train_idx, val_idx = stratified_split(table.labels, cfg["val_fraction"], seed)
            encoded = label_set.encode(table.labels, source=str(args.data))
            train_texts = [table.texts[i] for i in train_idx]
            encoder = TextEncoder(train_bpe(train_texts, cfg["vocab_size"]), cfg["max_length"])
            cfg["vocab_size_actual"] = encoder.vocab_size
            a = run_seed_loop(encoder.encode(train_texts), [encoded[i] for i in train_idx],
                              encoder.encode([table.texts[i] for i in val_idx]), [encoded[i] for i in val_idx],
                              labels, {**cfg, "vocab_size": encoder.vocab_size}, seed)
            b = run_lastpool(args.data, seed, SEED_CONFIG, work)
            line = (f"seed {seed}: (a) seed loop acc {a['final']['accuracy']:.4f} {a['sec_per_epoch']:.3f}s/epoch | "
                    f"(b) lastpool seed.yaml acc {b['final']['accuracy']:.4f} (best {b['best']['accuracy']:.4f}) "
                    f"{b['sec_per_epoch']:.3f}s/epoch")
            seed_runs.append(a)
            lastpool_runs.append(b)
            if not args.skip_default:
                c = run_lastpool(args.data, seed, None, work)
                default_runs.append(c)
                line += f" | (c) default acc {c['best']['accuracy']:.4f} {c['sec_per_epoch']:.3f}s/epoch"
            print(line, flush=True)

    header = ["run", "final-epoch accuracy", "final-epoch macro-F1", "kept-model accuracy", "kept-model macro-F1",
              "s / epoch"]
    rows = [summarise("(a) seed tutorial loop", seed_runs), summarise("(b) lastpool, configs/seed.yaml", lastpool_runs)]
    if default_runs:
        rows.append(summarise("(c) lastpool, default config", default_runs))
    ratio = statistics.mean(r["sec_per_epoch"] for r in lastpool_runs) / statistics.mean(
        r["sec_per_epoch"] for r in seed_runs)
    acc_a = statistics.mean(r["final"]["accuracy"] for r in seed_runs)
    acc_b = statistics.mean(r["final"]["accuracy"] for r in lastpool_runs)
    lines = [
        MARK_BEGIN,
        "## Seed tutorial reproduction (`benchmarks/seed_repro.py`)",
        "",
        f"Command: `python benchmarks/seed_repro.py --seeds {args.seeds}` on `{args.data.name}` "
        f"({len(table)} sentences), 10% stratified validation per seed, seeds {seeds[0]}..{seeds[-1]}, "
        f"mean ± std over seeds. Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}.",
        "'Final-epoch' is the model after the last epoch; 'kept-model' is the epoch with the best validation "
        "macro-F1 (what lastpool saves; for (a) the same selection is applied after the fact).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        f"- (b) / (a) seconds per epoch: **{ratio:.2f}x** (target <= 1.2x).",
        f"- Final-epoch mean accuracy: (b) {acc_b:.4f} vs (a) {acc_a:.4f} (target: (b) >= (a)).",
    ]
    if default_runs:
        acc_c = statistics.mean(r["best"]["accuracy"] for r in default_runs)
        lines.append(f"- Default config kept-model mean accuracy: {acc_c:.4f} (target >= 0.90); "
                     f"{default_runs[0]['epochs']} epochs.")
    lines.append(MARK_END)
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        write_block(block)


def write_block(block: str) -> None:
    write_section(block, MARK_BEGIN, MARK_END)


if __name__ == "__main__":
    main()
