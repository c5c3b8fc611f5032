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
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import machine_info  # benchmarks/ is on sys.path when run as a script
from pretrained import DEFAULT_MODEL, lastpool_exe
from tasks import scores_of, sets


def run(name: str, data: dict[str, Any], seed: int, variant: str, work: Path) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-s{seed}-", dir=work)) / "run"
    cmd = [*lastpool_exe(), "train", "--model", str(DEFAULT_MODEL), "--data", str(data["train"]), *data["flags"],
           "--seed", str(seed), "--out", str(folder), "--quiet", *shlex.split(variant)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    evaluated = subprocess.run([*lastpool_exe(), "eval", str(folder), "--data", str(data["dev"]), "--json"],
                               capture_output=True, text=True, check=True)
    return {"set": name, "seed": seed, "variant": variant, "seconds": round(seconds, 1),
            "scores": scores_of(json.loads(evaluated.stdout)), "command": shlex.join(cmd), "machine": machine_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",--mode top-8", help="comma separated flag strings ('' = default)")
    parser.add_argument("--sets", default="stsb,mrpc")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--sample", type=int, default=8000, help="GoEmotions training texts (as in tasks.py)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many training and dev rows per set "
                        "(a quick check of the script itself)")
    parser.add_argument("--json", type=Path, default=None, help="append each run here as one JSON line")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lastpool-variants-"))
    work.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.sets.split(","):
            data = sets(args.sample, args.limit, work, seed)[name]
            for variant in [v.strip() for v in args.variants.split(",")]:
                records.append(run(name, data, seed, variant, work))
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
