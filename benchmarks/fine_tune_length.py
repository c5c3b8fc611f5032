"""How long the pretrained default (``--mode top-4``) should train: variants of its flags on the dev suite.

The suite's targets tie the default's accuracy to its wall time (at most half of Trainer's), and an epoch
of the top blocks is most of that time. This runs ``lastpool train --model M --data D`` plus each variant's
flags (for example ``--epochs 3`` or ``--batch-size 32``; ``""`` is the default itself) on the suite's sets
and seeds, with the suite's own data preparation, scoring and timing (benchmarks/suite.py), and reports
per set: fused accuracy, the LM alone, epochs run, best epoch and wall time, each as a mean over seeds.

    python benchmarks/fine_tune_length.py --variants ",--epochs 3,--batch-size 32" [--sets ...] [--seed-list 0,1]
                                         [--json runs.json] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _results import command_line, machine_info, publish
from pretrained import DEFAULT_MODEL
from suite import DEFAULT_DATA_ROOT, SETS, Context, prepare, run_lastpool, split_choice, warm_up

from lastpool.fileio import atomic_write_text

MARK_BEGIN, MARK_END = "<!-- fine-tune-length:begin -->", "<!-- fine-tune-length:end -->"
FIELDS = (("accuracy", "accuracy"), ("lm_accuracy", "LM alone"), ("epochs_run", "epochs run"),
          ("best_epoch", "best epoch"), ("seconds", "wall s"))


def mean(runs: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in runs if r.get("ok") and r.get(field) is not None]
    return statistics.mean(values) if values else None


def table(records: list[dict[str, Any]], variants: list[str], sets: list[str]) -> list[str]:
    """One row per (set, variant): the means over its seeds."""
    lines = ["| set | flags | seeds | " + " | ".join(label for _, label in FIELDS) + " |",
             "|---|---|---|" + "---|" * len(FIELDS)]
    for name in sets:
        for variant in variants:
            runs = [r for r in records if r["set"] == name and r["variant"] == variant]
            seeds = ", ".join(str(r["seed"]) for r in runs if r.get("ok")) or "-"
            cells = []
            for field, _ in FIELDS:
                value = mean(runs, field)
                cells.append("-" if value is None else f"{value:.4f}" if "accuracy" in field else f"{value:.1f}")
            lines.append(f"| {name} | `{variant or '(default)'}` | {seeds} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",--epochs 3", help="comma separated flag strings ('' = default)")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seed-list", default="0")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sets = split_choice(parser, args.sets, tuple(SETS), "set")
    variants = [v.strip() for v in args.variants.split(",")]
    seeds = [int(s) for s in args.seed_list.split(",")]
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lastpool-length-") as tmp:
        work = Path(tmp)
        cache = args.cache or work / "cache"
        ctx = Context(model=args.model, env={**os.environ, "LASTPOOL_CACHE": str(cache)}, cache=cache, keep=None)
        warm_up(ctx, work)
        for name in sets:
            for seed in seeds:
                prep = prepare(SETS[name], seed, args.data_root, None, work)
                for index, variant in enumerate(variants):
                    stem = work / f"{name}-v{index}-s{seed}"
                    record = run_lastpool("default", prep, seed, ctx, stem, shlex.split(variant))
                    records.append({"set": name, "variant": variant, "seed": seed, **record})
                    print(json.dumps(records[-1]), flush=True)
                    if args.json is not None:
                        atomic_write_text(args.json, json.dumps({"results": records}, indent=1) + "\n")
    block = "\n".join([
        MARK_BEGIN, "### Training length of the pretrained default (`benchmarks/fine_tune_length.py`)", "",
        f"Command: `{command_line('fine_tune_length.py')}`.", "", f"Machine: {machine_info()}.", "",
        "Each row: `lastpool train --model SmolLM2-135M-Instruct.Q4_1.gguf --data D` plus the flags shown, scored "
        "as in the suite (fpb: its own validation split; snips, stackoverflow20: dev.tsv); means over the seeds.",
        "", *table(records, variants, sets), "", MARK_END])
    publish(block, MARK_BEGIN, MARK_END, write=not args.no_write)


if __name__ == "__main__":
    main()
