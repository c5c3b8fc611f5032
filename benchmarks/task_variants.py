"""Variants of lastpool's flags on the task sets of benchmarks/tasks.py: which default the new tasks want.

Each variant is a flag string added to the lastpool row of tasks.py (``""``: the default itself); each run is
``lastpool train`` on the set's training file with only the layout flags, the seed and the variant, then
``lastpool eval`` on its dev file, with tasks.py's own samples and scores. One JSON line per run goes to
``--json`` (appended, so a later invocation adds runs), and a table of means over seeds is printed.

    python benchmarks/task_variants.py --variants ",--mode top-8" [--sets stsb,mrpc] [--seeds 0,1,2]
        [--limit N] [--json runs.jsonl] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _results import machine_info  # benchmarks/ is on sys.path when run as a script
from pretrained import DEFAULT_MODEL
from tasks import run_row, sets


def run(args: argparse.Namespace, name: str, data: dict[str, Any], seed: int, variant: str) -> dict[str, Any]:
    """tasks.py's lastpool row plus the variant's flags, in a folder of its own."""
    work = Path(tempfile.mkdtemp(prefix=f"{name}-s{seed}-", dir=args.work))
    record = run_row(args, "lastpool", name, data, seed, work, None, tuple(shlex.split(variant)))
    return {"set": name, "seed": seed, "variant": variant, **record, "machine": machine_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--variants", default=",--mode top-8", help="comma separated flag strings ('' = default)")
    parser.add_argument("--sets", default="stsb,mrpc")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--sample", type=int, default=8000, help="GoEmotions training texts (as in tasks.py)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many training and dev rows per set "
                        "(a quick check of the script itself)")
    parser.add_argument("--json", type=Path, default=None, help="append each run here as one JSON line")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    args.epochs = None  # run_row's own --epochs override: a variant says it instead
    args.work = args.work or Path(tempfile.mkdtemp(prefix="lastpool-variants-"))
    args.work.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.sets.split(","):
            data = sets(args.sample, args.limit, args.work, seed)[name]
            for variant in [v.strip() for v in args.variants.split(",")]:
                records.append(run(args, name, data, seed, variant))
                print(json.dumps(records[-1]), flush=True)
                if args.json is not None:
                    with args.json.open("a") as out:
                        out.write(json.dumps(records[-1]) + "\n")
    for name in dict.fromkeys(r["set"] for r in records):
        scores = list(next(r for r in records if r["set"] == name)["scores"])
        print(f"\n| {name}: flags | seeds | " + " | ".join(scores) + " | wall s |")
        print("|---|---|" + "---|" * (len(scores) + 1))
        for variant in dict.fromkeys(r["variant"] for r in records):
            done = [r for r in records if (r["set"], r["variant"]) == (name, variant)]
            means = [f"{np.mean([r['scores'][k] for r in done]):.4f}" for k in scores]
            print(f"| `{variant or '(default)'}` | {','.join(str(r['seed']) for r in done)} | "
                  + " | ".join(means) + f" | {np.mean([r['seconds'] for r in done]):.0f} |")


if __name__ == "__main__":
    main()
