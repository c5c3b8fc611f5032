"""lastpool's default against transformers' Trainer on the three new tasks: multi-label, regression, pairs.

For each set, with SmolLM2-135M-Instruct (the dequantized GGUF) and the same data:

- GoEmotions (multi-label, 28 labels): a seeded sample of ``--sample`` training texts, scored on dev
  (macro- and micro-F1);
- STS-B (regression on sentence pairs): train, scored on dev (Pearson and Spearman);
- MRPC (paraphrase pairs): train, scored on dev (accuracy and F1 of the paraphrase class).

Three contestants, each trained on the same 90% of the training file (lastpool's own stratified split for
the seed; the other 10% is lastpool's validation split, which Trainer leaves unused) and scored once on
dev:

- **lastpool**: ``lastpool train`` with no tuning flags (the recipe's default mode; only the flags that say
  how the file is laid out), then ``lastpool eval`` on dev;
- **Trainer**: ``AutoModelForSequenceClassification`` with the matching ``problem_type`` and ``Trainer``
  with this machine's best options, as in the suite's Trainer row (group_by_length sampling, and bf16
  autocast where lastpool's ``--precision auto`` would pick bf16: on a CPU without AVX512-BF16 or AMX,
  bf16 matmuls are emulated and many times slower than fp32), learning rate 5e-5 (its default), the same
  epochs, truncation length and batch size as the lastpool run, the pair joined by the same template,
  multi-label predictions at probability 0.5;
- **bag-of-words**: TF-IDF word and character n-grams with a linear SVM (one per label for GoEmotions)
  or a ridge regression (STS-B), fitted on the same training rows.

Each training is a separate process (wall time includes loading and, for lastpool, its own baseline and
report); the wall-time ratio lastpool / Trainer is taken seed by seed. Results go to docs/BENCHMARKS.md.

    python benchmarks/tasks.py [--sets goemotions,stsb,mrpc] [--seeds 0,1,2] [--rows lastpool,trainer,bow]
        [--sample 8000] [--json RESULTS.json] [--no-write]

Trainer needs hours per seed on a 2-core CPU: ``--json`` keeps each finished run, and a later invocation
with the same file runs only what is missing.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import command_line, machine_info, publish  # benchmarks/ is on sys.path when run as a script
from pretrained import DEFAULT_MODEL, lastpool_exe

from lastpool.fileio import atomic_write_text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MARK_BEGIN, MARK_END = "<!-- tasks:begin -->", "<!-- tasks:end -->"
TEMPLATE = "{text}\n{text_pair}"  # lastpool's default pair template, given to Trainer's texts too


def sampled(source: Path, rows: int | None, work: Path, seed: int, header: bool) -> Path:
    """A seeded sample of ``rows`` lines of a file (its header kept), or the file itself when None."""
    if rows is None:
        return source
    target = work / f"{source.parent.name}-{source.stem}-{rows}-s{seed}{source.suffix}"
    if not target.exists():
        lines = source.read_text(encoding="utf-8-sig").splitlines(keepends=True)
        head, body = (lines[:1], lines[1:]) if header else ([], lines)
        target.write_text("".join(head + random.Random(seed).sample(body, min(rows, len(body)))), encoding="utf-8")
    return target


def sets(sample: int, limit: int | None, work: Path, seed: int) -> dict[str, dict[str, Any]]:
    """Each set's files, the flags that say how they are laid out, and the scores it is judged by
    (``limit``: fewer training and dev rows, for a quick check of the script itself)."""
    emotions = sampled(SHARED / "goemotions" / "train.tsv", min(sample, limit or sample), work, seed, header=False)

    def dev(path: Path, header: bool) -> Path:
        return sampled(path, limit, work, seed, header)

    return {
        "goemotions": {"train": emotions, "dev": dev(SHARED / "goemotions" / "dev.tsv", False), "task": "multilabel",
                       "flags": ["--no-header", "--text-col", "1", "--label-col", "2", "--label-sep", ",",
                                 "--label-names", str(SHARED / "goemotions" / "labels.txt")],
                       "scores": ("macro_f1", "micro_f1")},
        "stsb": {"train": dev(SHARED / "stsb" / "sts-train.csv", False),
                 "dev": dev(SHARED / "stsb" / "sts-dev.csv", False),
                 "task": "regression", "flags": ["--no-header", "--sep", "tab", "--text-col", "6",
                                                 "--text-pair-col", "7", "--label-col", "5"],
                 "scores": ("pearson", "spearman")},
        "mrpc": {"train": dev(SHARED / "mrpc" / "train.tsv", True), "dev": dev(SHARED / "mrpc" / "dev.tsv", True),
                 "task": "single",
                 "flags": ["--text-col", "#1 String", "--text-pair-col", "#2 String", "--label-col", "Quality"],
                 "scores": ("accuracy", "f1[1]")},
    }


def timed(cmd: list[str], log: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    return code, time.perf_counter() - start


def scores_of(metrics: dict[str, Any]) -> dict[str, float]:
    """The scores a set is judged by, from a metrics dict (f1[1]: the F1 of class "1")."""
    out = {name: metrics[name] for name in ("macro_f1", "micro_f1", "pearson", "spearman", "accuracy", "rmse")
           if name in metrics}
    per_class = metrics.get("per_class") or {}
    if "1" in per_class:
        out["f1[1]"] = per_class["1"]["f1"]
    return out


# ----------------------------------------------------------------------------- the Trainer side
def targets_of(task: Any, cfg: Any, labels: list[Any]) -> np.ndarray:
    """A file's labels as the task's targets, read as lastpool reads them (label ids named by the file)."""
    from lastpool.classifier import _as_task_labels, named_labels

    names = cfg.label_names if isinstance(cfg.label_names, list) else None
    return task.targets(_as_task_labels(task.name, named_labels(labels, names, "dev") if names else labels), "dev")


def layout_and_config(flags: list[str], seed: int) -> Any:
    """The lastpool settings the flags give (the file layout), for reading and splitting as lastpool does."""
    from lastpool.cli import _run_config

    names = {"--no-header": ("header", False)}
    values: dict[str, Any] = {"seed": seed}
    i = 0
    while i < len(flags):
        if flags[i] in names:
            key, value = names[flags[i]]
            values[key] = value
            i += 1
            continue
        values[flags[i][2:].replace("-", "_")] = flags[i + 1]
        i += 2
    return _run_config(values)


def trainer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and score the Trainer contestant (run in its own process); its scores on dev as JSON."""
    import torch
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    from lastpool.classifier import TrainingSplit, bf16_is_fast
    from lastpool.cli import table_layout
    from lastpool.data.tables import read_table
    from lastpool.models.backbones import load_backbone
    from lastpool.text.tokenizers import fill, load_pretrained_tokenizer

    cfg = layout_and_config(spec["flags"], spec["seed"])
    train, dev = read_table(spec["train"], layout=table_layout(cfg)), read_table(spec["dev"], layout=table_layout(cfg))
    split = TrainingSplit.of(cfg, train.texts, train.labels, None, None, "train", "val", train.pairs)
    task = split.task
    tokenizer = load_pretrained_tokenizer(spec["model"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    def encode(texts: list[str], pairs: list[str] | None) -> list[list[int]]:
        joined = texts if pairs is None else [fill(TEMPLATE, a, b) for a, b in zip(texts, pairs, strict=True)]
        return tokenizer(joined, truncation=True, max_length=spec["max_length"])["input_ids"]

    class Rows(torch.utils.data.Dataset):
        def __init__(self, ids: list[list[int]], targets: list[Any]) -> None:
            self.ids, self.targets = ids, targets

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"input_ids": self.ids[i], "attention_mask": [1] * len(self.ids[i]), "labels": self.targets[i]}

    problem = {"single": "single_label_classification", "multilabel": "multi_label_classification",
               "regression": "regression"}[task.name]
    _, info = load_backbone(spec["model"])
    model = AutoModelForSequenceClassification.from_pretrained(
        info.get("cache") or spec["model"], num_labels=len(task.names), problem_type=problem, dtype=torch.float32,
        pad_token_id=tokenizer.pad_token_id)
    targets = split.train_y if task.name != "regression" else [float(v) for v in split.train_y]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=spec["epochs"], seed=spec["seed"],
                                 per_device_train_batch_size=spec["batch_size"], per_device_eval_batch_size=64,
                                 bf16=bf16_is_fast(), train_sampling_strategy="group_by_length",
                                 save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
                                 disable_tqdm=True, logging_strategy="no")
        trainer = Trainer(model=model, args=args, train_dataset=Rows(encode(split.train_texts, split.train_pairs),
                                                                     targets),
                          data_collator=DataCollatorWithPadding(tokenizer))
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        dev_targets = targets_of(task, cfg, dev.labels or [])
        output = trainer.predict(Rows(encode(dev.texts, dev.pairs), dev_targets.tolist()))
    logits, truth = np.asarray(output.predictions), np.asarray(output.label_ids)
    if task.name == "multilabel":
        from lastpool.evaluation.metrics import multilabel_metrics
        from lastpool.tasks.multilabel import sigmoid

        metrics = multilabel_metrics(truth, sigmoid(logits), [0.5] * len(task.names), task.names)
    elif task.name == "regression":  # Trainer's outputs are values already (not lastpool's standardised ones)
        from lastpool.evaluation.metrics import regression_metrics

        metrics = regression_metrics(truth.reshape(-1), logits.reshape(-1))
    else:
        metrics = task.evaluate(logits.reshape(len(truth), -1), truth)
    return {"scores": scores_of(metrics), "train_seconds": train_seconds, "bf16": bool(args.bf16)}


# ----------------------------------------------------------------------------- the bag-of-words side
def bag_of_words(spec: dict[str, Any]) -> dict[str, float]:
    from lastpool.classifier import TrainingSplit, _joined
    from lastpool.cli import table_layout
    from lastpool.data.tables import read_table
    from lastpool.evaluation.baseline import fit_baseline, fit_task_baseline
    from lastpool.evaluation.metrics import classification_metrics

    cfg = layout_and_config(spec["flags"], spec["seed"])
    train, dev = read_table(spec["train"], layout=table_layout(cfg)), read_table(spec["dev"], layout=table_layout(cfg))
    split = TrainingSplit.of(cfg, train.texts, train.labels, None, None, "train", "val", train.pairs)
    task = split.task
    dev_y = targets_of(task, cfg, dev.labels or [])
    texts, dev_texts = _joined(split.train_texts, split.train_pairs), _joined(dev.texts, dev.pairs)
    if task.name == "single":
        fitted = fit_baseline(texts, [int(v) for v in split.train_y], dev_texts, dev_y.tolist(), task.names)
        assert fitted is not None
        return scores_of(classification_metrics(dev_y.tolist(), fitted[0].predict(dev_texts), task.names))
    result = fit_task_baseline(task.name, texts, np.asarray(split.train_y), dev_texts, dev_y, task.names)
    return {k: v for k, v in (result or {}).items() if isinstance(v, float)}


# ----------------------------------------------------------------------------- the run
ROWS = ("lastpool", "trainer", "bow")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--sets", default="goemotions,stsb,mrpc")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rows", default=",".join(ROWS), help="which contestants to run (lastpool runs first: "
                        "Trainer takes its epochs, truncation length and batch size)")
    parser.add_argument("--sample", type=int, default=8000, help="GoEmotions training texts (a seeded sample)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many training and dev rows per set "
                        "(a quick check of the script, not a result)")
    parser.add_argument("--epochs", default=None, help="give both this many epochs instead of lastpool's own "
                        "choice (a quick check of the script, not a result)")
    parser.add_argument("--work", default=None, help="folder for runs and logs (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="keep every result here, rewritten after each run; "
                        "runs already in it are not repeated (a long benchmark goes on where it stopped)")
    parser.add_argument("--no-write", action="store_true", help="print the results, leave docs/BENCHMARKS.md")
    parser.add_argument("--trainer-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trainer_worker:
        print(json.dumps(trainer_worker(json.loads(args.trainer_worker))))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="lastpool-tasks-"))
    work.mkdir(parents=True, exist_ok=True)
    saved = json.loads(args.json.read_text()) if args.json and args.json.exists() else {"results": []}
    records: list[dict[str, Any]] = saved["results"]
    done = {(r["set"], r["seed"], r["row"]) for r in records}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.sets.split(","):
            data = sets(args.sample, args.limit, work, seed)[name]
            for row in [r for r in ROWS if r in args.rows.split(",")]:
                if (name, seed, row) in done:
                    continue
                lastpool = next((r for r in records if (r["set"], r["seed"], r["row"]) == (name, seed, "lastpool")),
                                None)
                if row != "lastpool" and lastpool is None:
                    raise SystemExit(f"{row} on {name} seed {seed} takes lastpool's settings: run lastpool first")
                record = {"set": name, "seed": seed, "row": row, "sample": args.sample, "limit": args.limit,
                          "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                          **run_row(args, row, name, data, seed, work, lastpool), "machine": machine_info()}
                records.append(record)
                print(json.dumps(record), flush=True)
                if args.json:
                    atomic_write_text(args.json, json.dumps({"results": records}, indent=1) + "\n")
    publish(render(args, records), MARK_BEGIN, MARK_END, write=not args.no_write)


def trainer_spec(args: argparse.Namespace, data: dict[str, Any], seed: int,
                 lastpool: dict[str, Any] | None) -> dict[str, Any]:
    settings = (lastpool or {}).get("settings") or {"epochs": 1, "max_length": 128, "batch_size": 16}
    return {"model": args.model, "train": str(data["train"]), "dev": str(data["dev"]), "flags": data["flags"],
            "seed": seed, **{k: settings[k] for k in ("epochs", "max_length", "batch_size")}}


def run_row(args: argparse.Namespace, row: str, name: str, data: dict[str, Any], seed: int, work: Path,
            lastpool: dict[str, Any] | None, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """One contestant's run on one set for one seed: its dev scores, wall seconds and what it ran (``flags``:
    more for lastpool's own run, as benchmarks/task_variants.py tries them)."""
    if row == "bow":
        started = time.perf_counter()
        scores = bag_of_words(trainer_spec(args, data, seed, lastpool))
        return {"scores": scores, "seconds": time.perf_counter() - started}
    if row == "trainer":
        spec = trainer_spec(args, data, seed, lastpool)
        worker = [sys.executable, str(Path(__file__).resolve()), "--trainer-worker", json.dumps(spec)]
        log = work / f"{name}-s{seed}-trainer.log"
        code, seconds = timed(worker, log)
        if code != 0:
            raise SystemExit(f"the Trainer run failed for {name}: see {log}")
        trainer = json.loads(log.read_text().strip().splitlines()[-1])
        return {"scores": trainer["scores"], "seconds": seconds, "train_seconds": trainer["train_seconds"],
                "settings": {**{k: spec[k] for k in ("epochs", "max_length", "batch_size")},
                             "precision": "bf16" if trainer["bf16"] else "fp32"}}
    run = work / f"{name}-s{seed}"
    train_cmd = [*lastpool_exe(), "train", "--model", args.model, "--data", str(data["train"]), *data["flags"],
                 "--seed", str(seed), "--out", str(run), "--quiet", *(["--epochs", args.epochs] if args.epochs else []),
                 *flags]
    log = work / f"{name}-s{seed}-lastpool.log"
    code, seconds = timed(train_cmd, log)
    if code != 0:
        raise SystemExit(f"lastpool train failed for {name}: see {log}")
    evaluated = subprocess.run([*lastpool_exe(), "eval", str(run), "--data", str(data["dev"]), "--json"],
                               capture_output=True, text=True, check=True)
    import yaml

    from lastpool.classifier import resolve_precision

    settings = yaml.safe_load((run / "config.yaml").read_text())
    return {"scores": scores_of(json.loads(evaluated.stdout)), "seconds": seconds, "command": shlex.join(train_cmd),
            "settings": {**{k: settings[k] for k in ("mode", "layer", "epochs", "max_length", "batch_size")},
                         "precision": resolve_precision(settings["precision"], pretrained=True)}}


def render(args: argparse.Namespace, records: list[dict[str, Any]]) -> str:
    def mean_std(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else f"{values[0]:.4f}"

    def runs(name: str, row: str) -> list[dict[str, Any]]:
        return sorted((r for r in records if r["set"] == name and r["row"] == row), key=lambda r: r["seed"])

    lines = [MARK_BEGIN, "## Tasks: multi-label, regression and pairs against Trainer (issue 17)", "",
             f"`{command_line('tasks.py')}` (the last invocation, on {machine_info()}; with `--json`, runs of "
             "earlier invocations kept). Scores on each set's dev file, mean ± std over the seeds named; wall "
             "seconds of the whole training process, median over the seeds (bag-of-words: fit and score, "
             "in-process); ratio: lastpool / Trainer wall, seed by seed, median over the seeds both ran on the "
             "same machine (the list under the table says which machine ran what).", "",
             "| set | lastpool settings | score | lastpool (default) | Trainer | bag-of-words | lastpool s | "
             "Trainer s | wall ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["set"] for r in records):
        mine, theirs, bow = runs(name, "lastpool"), runs(name, "trainer"), runs(name, "bow")
        if not mine:
            continue
        both = {r["seed"]: r for r in theirs}
        # a wall-time ratio only where both ran on one machine (accuracy does not depend on which)
        ratios = [r["seconds"] / both[r["seed"]]["seconds"] for r in mine
                  if r["seed"] in both and both[r["seed"]]["machine"] == r["machine"]]
        s = mine[0]["settings"]
        depth = f" to layer {s['layer']}" if s.get("layer") is not None else ""  # (older records lack it)
        setting = f"{s['mode']}{depth}, {s['epochs']} epochs, max length {s['max_length']}, batch {s['batch_size']}"
        for score in mine[0]["scores"]:
            def cell(rows: list[dict[str, Any]], score: str = score) -> str:
                values = [r["scores"][score] for r in rows if score in r["scores"]]
                return f"{mean_std(values)} (seeds {','.join(str(r['seed']) for r in rows)})" if values else "-"

            lines.append(
                f"| {name} | {setting} | {score} | {cell(mine)} | {cell(theirs)} | {cell(bow)} | "
                f"{np.median([r['seconds'] for r in mine]):.0f} | "
                f"{np.median([r['seconds'] for r in theirs]) if theirs else float('nan'):.0f} | "
                f"{np.median(ratios) if ratios else float('nan'):.3f} |")
    machines = {m: f"M{i + 1}" for i, m in enumerate(dict.fromkeys(r["machine"] for r in records))}
    lines += ["", "Machines: " + "; ".join(f"{short} = {m}" for m, short in machines.items()) + ".", ""]
    for name in dict.fromkeys(r["set"] for r in records):
        where = []
        for row in ROWS:
            seeds: dict[str, list[str]] = {}
            for r in runs(name, row):
                seeds.setdefault(machines[r["machine"]], []).append(str(r["seed"]))
            where.append(f"{row} " + ", ".join(f"seed{'s' * (len(s) > 1)} {','.join(s)} on {m}"
                                               for m, s in seeds.items()))
        lines.append(f"- {name}: " + "; ".join(where))
    lines += ["", MARK_END]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
