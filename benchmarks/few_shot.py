"""Few-shot: the default run with the label-word head (``--head-init labels``) against the default head.

For each set of the dev suite and each K in ``--shots`` (examples per class), a stratified K-per-class
sample is drawn for each seed (classes with fewer texts give all they have), and two runs train on it:
``lastpool train --model M --data SAMPLE --seed S`` with and without ``--head-init labels`` (nothing
else; lastpool holds out its own 10% of the sample for early stopping and calibration). Both are scored
on the same texts: ``dev.tsv`` for SNIPS and StackOverflow-20; for Financial PhraseBank, which has no dev
file, the 10% stratified validation split of seed 0, with the samples drawn from the other 90%. The
zero-shot row (no examples) is scored on the same texts for reference.

    python benchmarks/few_shot.py [--sets fpb,snips,stackoverflow20] [--shots 8,32,128] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _results import command_line, machine_info, publish  # benchmarks/ is on sys.path
from pretrained import DEFAULT_MODEL, lastpool_exe
from suite import DEFAULT_DATA_ROOT, SETS, write_jsonl

from lastpool.data.split import stratified_split
from lastpool.data.tables import Table, read_table

MARK_BEGIN, MARK_END = "<!-- few-shot:begin -->", "<!-- few-shot:end -->"
HEADS = {"default head": [], "label-word head": ["--head-init", "labels"]}


def per_class_sample(labels: list[str], k: int, seed: int, pool: list[int]) -> list[int]:
    """Up to ``k`` rows of each class from ``pool``, drawn at random with ``seed``."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i in pool:
        by_class[labels[i]].append(i)
    chosen: list[int] = []
    for name in sorted(by_class):
        rows = by_class[name]
        chosen += [rows[j] for j in rng.permutation(len(rows))[:k]]
    return sorted(chosen)


def scored_and_pool(set_name: str, root: Path, work: Path) -> tuple[Table, Path, list[int]]:
    """The training table, the file every run is scored on, and the rows samples are drawn from."""
    spec = SETS[set_name]
    table = read_table(root / spec.train)
    assert table.labels is not None
    if spec.dev is not None:
        return table, root / spec.dev, list(range(len(table)))
    rest, held_out = stratified_split(table.labels, 0.1, 0)
    scored = work / f"{set_name}-scored.jsonl"
    write_jsonl(scored, [table.texts[i] for i in held_out], [table.labels[i] for i in held_out])
    return table, scored, rest


def run(flags: list[str], data: Path, scored: Path, seed: int, model: Path, work: Path) -> dict[str, Any]:
    """One ``lastpool train`` (timed, whole process) and its ``lastpool eval`` on the scored file."""
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    train = subprocess.run([*lastpool_exe(), "train", "--model", str(model), "--data", str(data), "--seed", str(seed),
                            "--out", str(out), "-q", *flags], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if train.returncode != 0:
        return {"ok": False, "error": (train.stderr.strip().splitlines() or ["?"])[-1][:200]}
    scored_run = subprocess.run([*lastpool_exe(), "eval", str(out), "--data", str(scored), "--json"],
                                capture_output=True, text=True)
    if scored_run.returncode != 0:
        return {"ok": False, "error": (scored_run.stderr.strip().splitlines() or ["?"])[-1][:200]}
    metrics = json.loads(scored_run.stdout)
    return {"ok": True, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "seconds": seconds}


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def render(records: list[dict[str, Any]], command: str, seeds: list[int]) -> str:
    lines = [MARK_BEGIN, "## Few-shot: the label-word head against the default head (`benchmarks/few_shot.py`)", "",
             f"Command: `{command}`.", "", f"Machine: {machine_info()}", "",
             "Protocol: for each K (examples per class) and seed, a K-per-class sample (all of a class's texts where "
             "it has fewer) trains `lastpool train --model SmolLM2-135M-Instruct.Q4_1.gguf --data SAMPLE --seed S`, "
             "with `--head-init labels` or without (no other flag: the default mode and recipe). Scored on "
             "`dev.tsv` (SNIPS, StackOverflow-20) or on Financial PhraseBank's seed-0 10% validation split (samples "
             "drawn from the other 90%). The zero-shot row (`--mode zeroshot`, no examples) is scored on the same "
             f"texts. Mean ± std over seeds {','.join(map(str, seeds))}; wall time of the training process.", ""]
    for set_name in dict.fromkeys(r["set"] for r in records):
        lines += [f"### {set_name}", "", "| K per class | head | accuracy | macro-F1 | wall s | failed |",
                  "|---|---|---|---|---|---|"]
        rows = [r for r in records if r["set"] == set_name]
        for shots, head in dict.fromkeys((r["shots"], r["head"]) for r in rows):
            group = [r for r in rows if r["shots"] == shots and r["head"] == head]
            ok = [r for r in group if r["ok"]]
            wall = statistics.mean(r["seconds"] for r in ok) if ok else None
            lines.append(f"| {shots if shots else 'zero-shot'} | {head} | {mean_std([r['accuracy'] for r in ok])} | "
                         f"{mean_std([r['macro_f1'] for r in ok])} | {f'{wall:.1f}' if wall else '-'} | "
                         f"{len(group) - len(ok)} |")
        lines.append("")
    return "\n".join([*lines, MARK_END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="fpb,snips,stackoverflow20")
    parser.add_argument("--shots", default="8,32,128")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--json", type=Path, default=None, help="write the raw results here (after every run)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lastpool-few-shot-") as tmp:
        work = Path(tmp)
        for set_name in args.sets.split(","):
            table, scored, pool = scored_and_pool(set_name, args.data_root, work)
            assert table.labels is not None
            zero = run(["--mode", "zeroshot"], args.data_root / SETS[set_name].train, scored, 0, args.model, work)
            records.append({"set": set_name, "shots": 0, "head": "label words (zero-shot)", "seed": 0, **zero})
            for shots in (int(k) for k in args.shots.split(",")):
                for seed in seeds:
                    rows = per_class_sample(table.labels, shots, seed, pool)
                    data = work / f"{set_name}-{shots}-{seed}.jsonl"
                    write_jsonl(data, [table.texts[i] for i in rows], [table.labels[i] for i in rows])
                    for head, flags in HEADS.items():
                        result = run(flags, data, scored, seed, args.model, work)
                        records.append({"set": set_name, "shots": shots, "head": head, "seed": seed, **result})
                        print(json.dumps(records[-1]), flush=True)
                        if args.json is not None:
                            args.json.write_text(json.dumps(records, indent=1))
    publish(render(records, command_line("benchmarks/few_shot.py"), seeds), MARK_BEGIN, MARK_END,
            write=not args.no_write)


if __name__ == "__main__":
    main()
