"""``lastpool tune`` with a fixed budget against the recipe's default config, on every set of the dev suite.

For each (set, seed), three processes on the same training file and seed (so the same validation split):

- ``default``: ``lastpool train --model M --mode MODE --data D --seed S`` (the recipe, no tuning flags);
- ``tune``: ``lastpool tune`` with the same flags and ``--trials N`` (its default search space, in memory,
  TPE seeded with S, median pruning on the per-epoch validation score);
- ``tuned``: ``lastpool train --config TUNE/best.yaml``, the best trial's settings retrained.

The study's objective is the validation split's main metric (macro-F1 for these single-label sets); its best
trial's value is therefore chosen on the very texts it is scored on, and is optimistic. So both models are
also scored on texts neither the study nor model selection saw:

- ``fpb``: a stratified ``--test-fraction`` of Financial PhraseBank allagree, cut off per seed before anything
  trains (the remaining rows are the training file);
- ``snips``, ``stackoverflow20``: the suite's stratified 4,000-row sample of ``train.tsv`` per seed as the
  training file, scored on the whole ``dev.tsv``.

Pooled probe features are cached by the first run of each (set, seed), so the study's trials and the retrain
reuse them; the walls say so. Results go to ``--json`` after every run (``--reuse`` skips (set, seed)
pairs already there) and to a marked section of docs/BENCHMARKS.md.

    python benchmarks/tune_suite.py [--sets fpb,snips,stackoverflow20] [--seeds 0,1,2] [--trials 20]
                                    [--mode probe] [--json F] [--reuse] [--limit N] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _results import command_line, machine_info, publish, write_section  # benchmarks/ is on sys.path
from pretrained import DEFAULT_MODEL, lastpool_exe
from suite import DEFAULT_DATA_ROOT, SETS, Context, last_line, sample_indices, timed, warm_up, write_jsonl

from lastpool.data.split import stratified_split
from lastpool.data.tables import read_table
from lastpool.fileio import atomic_write_text

MARK_BEGIN, MARK_END = "<!-- tune:begin -->", "<!-- tune:end -->"


def prepare(name: str, seed: int, root: Path, limit: int | None, test_fraction: float, work: Path) -> tuple[Path, Path]:
    """The training file and the held-out file for (set, seed), both JSONL."""
    spec = SETS[name]
    table = read_table(root / spec.train)
    assert table.labels is not None
    size = min(spec.sample or len(table), limit or len(table))
    keep = sample_indices(table.labels, size, seed)
    texts, labels = [table.texts[i] for i in keep], [table.labels[i] for i in keep]
    data, test = work / f"{name}-s{seed}-train.jsonl", work / f"{name}-s{seed}-test.jsonl"
    if spec.dev is None:
        rest, held = stratified_split(labels, test_fraction, seed)
        write_jsonl(data, [texts[i] for i in rest], [labels[i] for i in rest])
        write_jsonl(test, [texts[i] for i in held], [labels[i] for i in held])
    else:
        write_jsonl(data, texts, labels)
        dev = read_table(root / spec.dev)
        assert dev.labels is not None
        write_jsonl(test, dev.texts, dev.labels)
    return data, test


def lastpool(args: list[str], ctx: Context, stem: Path) -> tuple[dict[str, Any], Path]:
    """Run one lastpool command; (its seconds, or its failure), and where its stdout went."""
    proc = timed([*lastpool_exe(), *args], ctx.env, stem)
    if proc.code != 0:
        return {"ok": False, "code": proc.code, "error": last_line(proc.stderr, proc.stdout)}, proc.stdout
    return {"ok": True, "seconds": proc.seconds, "rss_mib": proc.rss_mib}, proc.stdout


def trained(run: Path, test: Path, ctx: Context, stem: Path, train_args: list[str]) -> dict[str, Any]:
    """Train, then score on the held-out file: validation and test accuracy / macro-F1."""
    record, _ = lastpool(["train", *train_args, "--out", str(run), "-q"], ctx, stem)
    if not record["ok"]:
        return record
    val = json.loads((run / "metrics.json").read_text())["val"]
    scored, stdout = lastpool(["eval", str(run), "--data", str(test), "--json"], ctx,
                              stem.with_name(stem.name + "-eval"))
    if not scored["ok"]:
        return {**scored, "stage": "eval"}
    held = json.loads(stdout.read_text())
    return {**record, "val_accuracy": val["accuracy"], "val_macro_f1": val["macro_f1"],
            "test_accuracy": held["accuracy"], "test_macro_f1": held["macro_f1"]}


def run_pair(name: str, seed: int, args: argparse.Namespace, ctx: Context, work: Path) -> dict[str, Any]:
    data, test = prepare(name, seed, args.data_root, args.limit, args.test_fraction, work)
    shutil.rmtree(ctx.cache / "features", ignore_errors=True)
    flags = ["--model", str(ctx.model), "--mode", args.mode, "--data", str(data), "--seed", str(seed)]
    record: dict[str, Any] = {"set": name, "seed": seed, "mode": args.mode, "trials": args.trials,
                              "n_train_file": sum(1 for _ in data.open()), "n_test": sum(1 for _ in test.open())}
    record["default"] = trained(work / f"{name}-{seed}-default", test, ctx, work / f"{name}-{seed}-default", flags)
    tune_dir = work / f"{name}-{seed}-tune"
    tuned, _ = lastpool(["tune", *flags, "--trials", str(args.trials), "--out", str(tune_dir), "-q"], ctx,
                        work / f"{name}-{seed}-tune")
    if tuned["ok"]:
        summary = json.loads((tune_dir / "tune.json").read_text())
        states = [t["state"] for t in summary["trials"]]
        tuned.update(metric=summary["metric"], best=summary["best"], importances=summary["importances"],
                     complete=states.count("COMPLETE"), pruned=states.count("PRUNED"),
                     default_trial_value=summary["trials"][0]["value"] if summary["trials"] else None)
        record["tuned"] = trained(work / f"{name}-{seed}-tuned", test, ctx, work / f"{name}-{seed}-tuned",
                                  ["--config", str(tune_dir / "best.yaml")])
    record["tune"] = tuned
    for folder in ("default", "tune", "tuned"):
        shutil.rmtree(work / f"{name}-{seed}-{folder}", ignore_errors=True)
    return record


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def render(records: list[dict[str, Any]], command: str, model: Path) -> str:
    lines = [MARK_BEGIN, "", "## Hyperparameter search: `lastpool tune` against the recipe's default "
             "(`benchmarks/tune_suite.py`)", "", f"Command: `{command}`.", "", f"Machine: {machine_info()}.", "",
             f"Model `{model.name}`. Protocol in the script's docstring: per (set, seed) the recipe's default "
             "(`lastpool train --mode M`), `lastpool tune` with the same flags and a fixed trial budget (default "
             "search space, seeded TPE, median pruning), and the best trial's `best.yaml` retrained with "
             "`lastpool train --config`. Validation = lastpool's 10% split of the training file for the seed (what "
             "the study maximises, macro-F1); test = texts neither saw (FPB: a stratified held-out part cut off "
             "first; SNIPS / StackOverflow-20: the whole dev.tsv, training on a 4,000-row sample). Mean ± std over "
             "seeds. 'study best' is the best trial's own validation score as the study recorded it.", "",
             "| set | seeds | trials (complete / pruned) | default val macro-F1 | study best val macro-F1 | "
             "tuned val macro-F1 | default val acc | tuned val acc | default test acc | tuned test acc | "
             "default test macro-F1 | tuned test macro-F1 | test acc tuned − default | tune wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name in SETS:
        rows = [r for r in records if r["set"] == name and r["default"].get("ok") and r.get("tuned", {}).get("ok")]
        failed = [r for r in records if r["set"] == name and r not in rows]
        notes += [f"- {name} seed {r['seed']} failed: " + "; ".join(
            f"{part} `{r[part].get('error', '')}`" for part in ("default", "tune", "tuned")
            if part in r and not r[part].get("ok")) for r in failed]
        if not rows:
            continue

        def pick(part: str, field: str, rows: list[dict[str, Any]] = rows) -> list[float]:
            return [r[part][field] for r in rows]

        deltas = [t - d for t, d in zip(pick("tuned", "test_accuracy"), pick("default", "test_accuracy"), strict=True)]
        counts = ", ".join(f"{r['tune']['complete']}/{r['tune']['pruned']}" for r in rows)
        lines.append(
            f"| {name} | {', '.join(str(r['seed']) for r in rows)} | {counts} "
            f"| {mean_sd(pick('default', 'val_macro_f1'))} "
            f"| {mean_sd([r['tune']['best']['value'] for r in rows])} | {mean_sd(pick('tuned', 'val_macro_f1'))} "
            f"| {mean_sd(pick('default', 'val_accuracy'))} | {mean_sd(pick('tuned', 'val_accuracy'))} "
            f"| {mean_sd(pick('default', 'test_accuracy'))} | {mean_sd(pick('tuned', 'test_accuracy'))} "
            f"| {mean_sd(pick('default', 'test_macro_f1'))} | {mean_sd(pick('tuned', 'test_macro_f1'))} "
            f"| {statistics.mean(deltas):+.4f} ({sum(d > 0 for d in deltas)} of {len(deltas)} up) "
            f"| {statistics.mean(pick('tune', 'seconds')):.0f} |")
        for r in rows:
            params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in r["tune"]["best"]["params"].items())
            notes.append(f"- {name} seed {r['seed']}: best trial {r['tune']['best']['trial']} ({params}); "
                         f"default wall {r['default']['seconds']:.0f} s, tuned retrain {r['tuned']['seconds']:.0f} s; "
                         f"test rows {r['n_test']}.")
    return "\n".join([*lines, "", *notes, "", MARK_END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--mode", default="probe")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--test-fraction", type=float, default=0.15, help="FPB's held-out share [0.15]")
    parser.add_argument("--limit", type=int, default=None, help="cap the training rows per set (smoke tests)")
    parser.add_argument("--cache", type=Path, default=None, help="LASTPOOL_CACHE (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="keep --json's finished (set, seed) pairs")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if bad := [s for s in sets if s not in SETS]:
        parser.error(f"unknown set(s) {', '.join(bad)} (choose from {', '.join(SETS)})")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.model, args.data_root = args.model.resolve(), args.data_root.resolve()
    command = command_line("tune_suite.py")
    records: list[dict[str, Any]] = []
    if args.reuse and args.json and args.json.exists():
        records = json.loads(args.json.read_text())["results"]
    cache = args.cache.resolve() if args.cache else Path(tempfile.mkdtemp(prefix="lastpool-tune-cache-"))
    ctx = Context(model=args.model, env={**os.environ, "LASTPOOL_CACHE": str(cache)}, cache=cache, keep=None)
    try:
        with tempfile.TemporaryDirectory(prefix="lastpool-tune-") as tmp:
            work = Path(tmp)
            warm_up(ctx, work)
            for name in sets:
                for seed in seeds:
                    if any(r["set"] == name and r["seed"] == seed for r in records):
                        continue
                    record = run_pair(name, seed, args, ctx, work)
                    records.append(record)
                    print(json.dumps({k: record[k] for k in ("set", "seed", "default", "tuned") if k in record},
                                     default=str), flush=True)
                    if args.json:
                        atomic_write_text(args.json, json.dumps({"command": command, "results": records}, indent=1))
                    if not args.no_write:
                        write_section(render(records, command, args.model), MARK_BEGIN, MARK_END)
    finally:
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    publish(render(records, command, args.model), MARK_BEGIN, MARK_END, write=not args.no_write)


if __name__ == "__main__":
    main()
