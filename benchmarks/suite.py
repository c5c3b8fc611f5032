"""lastpool's default recipes against a bag-of-words baseline and transformers' Trainer on a three-set dev suite.

The question is what a user gets with no tuning flags, so every lastpool row passes only ``--model``,
``--mode``, ``--data``, ``--seed``, ``--out`` and ``-q``:

- ``bow``: ``lastpool.evaluation.baseline.bag_of_words_baseline`` in this process, on exactly the texts the
  lastpool rows train on, scored on the same texts (wall = its fit + score seconds; no RSS).
- ``scratch``: ``lastpool train --data D`` (the from-scratch default).
- ``zeroshot``, ``probe``, ``lora``, ``full``: ``lastpool train --model M --data D --mode X``.
- ``default``: ``lastpool train --model M --data D`` (no ``--mode``: the row the targets are about).
- ``trainer``: ``benchmarks/hf_trainer.py`` (AutoModelForSequenceClassification + Trainer, bf16,
  group_by_length, 1 epoch, lr 5e-5, batch 16) on lastpool's 90% split of the same file.

Sets (files under ``--data-root``, default ``../shared/data``):

- ``fpb``: Financial PhraseBank allagree; scored on lastpool's own 10% stratified validation split for the
  seed (``metrics.json`` ``val``; the Trainer's validation split is the same one).
- ``snips``, ``stackoverflow20``: a stratified 4000-row sample of ``train.tsv`` per seed, written to a JSONL
  file that every row trains on (lastpool holds out its own 10% of it for model selection and calibration);
  scored on the whole ``dev.tsv`` (``lastpool eval RUN --data dev.tsv --json``; the Trainer's final model).

Each process runs under ``/usr/bin/time -v`` for its wall time and peak RSS; the Trainer's scoring of
``dev.tsv`` (which lastpool does in a separate ``lastpool eval``) is subtracted from its wall time. One
``$LASTPOOL_CACHE`` is shared and warmed by one GGUF load first (dequantizing is charged to no row);
cached probe features are deleted before every run, so every run extracts its own.

Raw results go to ``--json`` after every run; ``--reuse`` merges an earlier JSON's runs that this
invocation does not repeat, so rows can be run in separate invocations and reported together.

    python benchmarks/suite.py [--sets fpb,snips,stackoverflow20] [--rows bow,scratch,...] [--seeds 3]
                               [--json runs.json] [--reuse runs.json] [--limit 300] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _results import command_line, machine_info, publish, write_section  # benchmarks/ is on sys.path
from pretrained import DEFAULT_MODEL, lastpool_exe

from lastpool.data.labels import LabelSet
from lastpool.data.split import stratified_split
from lastpool.data.tables import Table, read_table
from lastpool.fileio import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"
HF_TRAINER = Path(__file__).resolve().with_name("hf_trainer.py")
MARK_BEGIN, MARK_END = "<!-- suite:begin -->", "<!-- suite:end -->"
TIME = "/usr/bin/time"

SAMPLE_ROWS = 4000
VAL_FRACTION = 0.1  # lastpool's default --val-fraction: the bow row must train on lastpool's own 90%
TRAINER_FLAGS = ["--best", "--lr", "5e-5", "--epochs", "1", "--batch-size", "16"]
ROWS = ("bow", "scratch", "zeroshot", "probe", "lora", "full", "default", "trainer")
MODEL_ROWS = {"zeroshot", "probe", "lora", "full", "default", "trainer"}  # need the GGUF (and its cache)
TARGET_SPEED = 0.5  # default's wall time at most this share of the Trainer's
PROBE_SECONDS = 120.0


@dataclass(frozen=True)
class SuiteSet:
    """One dataset of the suite: its files and how it is scored."""

    name: str
    train: str  # relative to the data root
    dev: str | None  # None: scored on lastpool's validation split of the training data
    sample: int | None  # training rows drawn per seed (stratified) from ``train``; None: all rows


SETS = {
    "fpb": SuiteSet("fpb", "financial_phrasebank/sentences_allagree.txt", None, None),
    "snips": SuiteSet("snips", "snips/train.tsv", "snips/dev.tsv", SAMPLE_ROWS),
    "stackoverflow20": SuiteSet("stackoverflow20", "stackoverflow20/train.tsv", "stackoverflow20/dev.tsv",
                                SAMPLE_ROWS),
}


@dataclass(frozen=True)
class Prepared:
    """What every row of one (set, seed) trains and is scored on."""

    data: Path  # the file that ``lastpool train`` and the Trainer get as --data
    dev: Path | None  # the file scored afterwards; None: lastpool's validation split of ``data``
    n_source: int  # rows of the set's training file
    n_data: int  # rows of ``data``
    train_texts: list[str]  # lastpool's 90% of ``data``: what the bow row fits
    train_labels: list[str]
    score_texts: list[str]  # what every row is scored on
    score_labels: list[str]


@dataclass(frozen=True)
class Proc:
    """One finished process: exit code, wall seconds, peak RSS and where its output went."""

    code: int
    seconds: float
    rss_mib: float | None
    stdout: Path
    stderr: Path


@dataclass
class Context:
    """What every run of one invocation shares: model, environment (the shared cache), log folder."""

    model: Path
    env: dict[str, str]
    cache: Path
    keep: Path | None


# --- data -------------------------------------------------------------------------------------------


def sample_indices(labels: Sequence[str], size: int, seed: int) -> list[int]:
    """A stratified, seeded ``size``-row sample (the held-out part of a split, so exactly reproducible)."""
    if size >= len(labels):
        return list(range(len(labels)))
    return stratified_split(labels, size / len(labels), seed)[1]


def write_jsonl(path: Path, texts: Sequence[str], labels: Sequence[str]) -> None:
    """Write texts and labels as JSONL and check that lastpool reads back exactly them.

    JSONL rather than CSV/TSV because texts hold quotes, tabs and leading/trailing spaces that a
    delimited file would have to quote and that a reader could strip; the read-back proves nothing changed.
    """
    rows = (json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for t, y in zip(texts, labels, strict=True))
    path.write_text("".join(rows), encoding="utf-8")
    back = read_table(path)
    if back.texts != list(texts) or back.labels != list(labels):
        raise SystemExit(f"{path}: lastpool's read_table does not read the written sample back unchanged")


def prepare(spec: SuiteSet, seed: int, root: Path, limit: int | None, work: Path) -> Prepared:
    """The training file for (set, seed) and the texts the bow row fits and every row is scored on."""
    source = root / spec.train
    table = read_table(source)
    assert table.labels is not None
    n_source = len(table)
    size = min(spec.sample or len(table), limit or len(table))
    if size < len(table):
        keep = sample_indices(table.labels, size, seed)
        data = work / f"{spec.name}-s{seed}.jsonl"
        table = Table([table.texts[i] for i in keep], [table.labels[i] for i in keep], str(data))
        write_jsonl(data, table.texts, table.labels)
    else:
        data = source
    assert table.labels is not None
    fit, held_out = stratified_split(table.labels, VAL_FRACTION, seed)  # the split lastpool train makes
    if spec.dev is None:
        scored = Table([table.texts[i] for i in held_out], [table.labels[i] for i in held_out], str(data))
        dev = None
    else:
        dev = root / spec.dev
        scored = read_table(dev)
    assert scored.labels is not None
    return Prepared(data=data, dev=dev, n_source=n_source, n_data=len(table), train_texts=[table.texts[i] for i in fit],
                    train_labels=[table.labels[i] for i in fit], score_texts=scored.texts,
                    score_labels=scored.labels)


# --- processes --------------------------------------------------------------------------------------


def timed(cmd: list[str], env: dict[str, str], stem: Path) -> Proc:
    """Run ``cmd`` under ``/usr/bin/time -v`` (when there is one), stdout and stderr to files beside ``stem``."""
    stats, stdout, stderr = stem.with_suffix(".time"), stem.with_suffix(".stdout"), stem.with_suffix(".stderr")
    use_time = Path(TIME).exists()
    full = [TIME, "-v", "-o", str(stats), *cmd] if use_time else cmd
    start = time.perf_counter()
    with stdout.open("w") as out, stderr.open("w") as err:
        code = subprocess.call(full, env=env, stdout=out, stderr=err)
    seconds = time.perf_counter() - start
    rss = None
    if use_time and stats.exists():
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stats.read_text())
        rss = int(found.group(1)) / 1024 if found else None
    return Proc(code, seconds, rss, stdout, stderr)


def last_line(*paths: Path, limit: int | None = 300) -> str:
    """The last non-blank line of the first of ``paths`` that has one (cut to ``limit`` characters: what a
    failure row shows; ``limit=None`` for a result line that is parsed)."""
    for path in paths:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
        if lines:
            return lines[-1].strip()[:limit]
    return "(no output)"


def failure(proc: Proc, stage: str) -> dict[str, Any]:
    """A failed run's record: its exit code and the last line it wrote to stderr."""
    return {"ok": False, "code": proc.code, "stage": stage, "error": last_line(proc.stderr, proc.stdout),
            "seconds": proc.seconds, "rss_mib": proc.rss_mib}


def keep_logs(keep: Path | None, stem: Path) -> None:
    """Copy a process's stdout, stderr and time -v report to the --keep-logs folder."""
    if keep is None:
        return
    keep.mkdir(parents=True, exist_ok=True)
    for suffix in (".stdout", ".stderr", ".time"):
        if stem.with_suffix(suffix).exists():
            shutil.copy(stem.with_suffix(suffix), keep / stem.with_suffix(suffix).name)


# --- rows ---------------------------------------------------------------------------------------------


def lastpool_flags(row: str, model: Path) -> list[str]:
    """The only flags a lastpool row adds to --data/--seed/--out/-q: none that tune anything."""
    if row == "scratch":
        return []
    if row == "default":
        return ["--model", str(model)]
    return ["--model", str(model), "--mode", row]


def run_bow(prep: Prepared) -> dict[str, Any]:
    """The bag-of-words baseline in this process, fitted on lastpool's training texts."""
    try:
        from lastpool.evaluation.baseline import bag_of_words_baseline
    except ImportError as exc:
        return {"ok": False, "code": None, "stage": "import", "error": f"ImportError: {exc}", "seconds": None,
                "rss_mib": None}
    try:
        labels = LabelSet.from_labels(prep.train_labels)
        started = time.perf_counter()
        result = bag_of_words_baseline(prep.train_texts, labels.encode(prep.train_labels), prep.score_texts,
                                       labels.encode(prep.score_labels, source="scored data"), list(labels.names))
        measured = time.perf_counter() - started
    except Exception as exc:  # a broken baseline is one failed row, not a stopped suite
        return {"ok": False, "code": None, "stage": "fit", "error": f"{type(exc).__name__}: {exc}"[:300],
                "seconds": None, "rss_mib": None}
    if result is None:  # the baseline declines texts it cannot fit (no n-grams, one class)
        return {"ok": False, "code": None, "stage": "fit", "error": "no bag-of-words model could be fitted",
                "seconds": measured, "rss_mib": None}
    return {"ok": True, "accuracy": float(result["accuracy"]), "macro_f1": float(result["macro_f1"]),
            "seconds": float(result.get("seconds") or measured), "rss_mib": None, "detail": str(result.get("model"))}


def run_lastpool(row: str, prep: Prepared, seed: int, ctx: Context, stem: Path,
                 extra: Sequence[str] = ()) -> dict[str, Any]:
    """``lastpool train`` with the row's flags (and ``extra``, for lever studies such as
    benchmarks/fine_tune_length.py; the suite passes none); the score from metrics.json or from
    ``lastpool eval``."""
    run_dir = stem.with_name(stem.name + "-run")
    cmd = [*lastpool_exe(), "train", *lastpool_flags(row, ctx.model), *extra, "--data", str(prep.data),
           "--seed", str(seed), "--out", str(run_dir), "-q"]
    proc = timed(cmd, ctx.env, stem)
    keep_logs(ctx.keep, stem)
    try:
        if proc.code != 0:
            return {**failure(proc, "train"), "cmd": shlex.join(cmd)}
        metrics = json.loads((run_dir / "metrics.json").read_text())
        record = {"ok": True, "seconds": proc.seconds, "rss_mib": proc.rss_mib, "cmd": shlex.join(cmd),
                  "val_accuracy": metrics["val"]["accuracy"], "best_epoch": metrics.get("best_epoch"),
                  "epochs_run": metrics.get("epochs_run")}
        fusion = metrics.get("fusion") or {}
        fused = bool(fusion.get("share"))
        record["bow_share"] = fusion.get("share")
        if prep.dev is None:
            alone = fusion.get("language_model") if fused else metrics["val"]
            return {**record, "accuracy": metrics["val"]["accuracy"], "macro_f1": metrics["val"]["macro_f1"],
                    "lm_accuracy": alone["accuracy"], "lm_macro_f1": alone["macro_f1"]}
        scored = score_run(run_dir, prep.dev, ctx, stem.with_name(stem.name + "-eval"))
        if fused and scored.get("accuracy") is not None:
            alone = score_run(run_dir, prep.dev, ctx, stem.with_name(stem.name + "-eval-lm"), ["--language-model-only"])
            scored.update(lm_accuracy=alone.get("accuracy"), lm_macro_f1=alone.get("macro_f1"))
        elif scored.get("accuracy") is not None:
            scored.update(lm_accuracy=scored["accuracy"], lm_macro_f1=scored["macro_f1"])
        return {**record, **scored}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # a full fine-tune's model folder is 540 MB


def score_run(run_dir: Path, dev: Path, ctx: Context, stem: Path, flags: Sequence[str] = ()) -> dict[str, Any]:
    """``lastpool eval RUN --data DEV --json``: accuracy and macro-F1 on the dev file (not timed as training)."""
    cmd = [*lastpool_exe(), "eval", str(run_dir), "--data", str(dev), "--json", *flags]
    proc = timed(cmd, ctx.env, stem)
    keep_logs(ctx.keep, stem)
    if proc.code != 0:  # the training's wall time and RSS stay in the record
        return {k: v for k, v in failure(proc, "eval").items() if k not in ("seconds", "rss_mib")}
    metrics = json.loads(proc.stdout.read_text())
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "eval_seconds": proc.seconds}


def run_trainer(prep: Prepared, seed: int, ctx: Context, stem: Path) -> dict[str, Any]:
    """benchmarks/hf_trainer.py on the same file; its wall time without its scoring of the dev file."""
    cmd = [sys.executable, str(HF_TRAINER), "--model", str(ctx.model), "--data", str(prep.data),
           "--seed", str(seed), *TRAINER_FLAGS]
    if prep.dev is not None:
        cmd += ["--eval-data", str(prep.dev)]
    proc = timed(cmd, ctx.env, stem)
    keep_logs(ctx.keep, stem)
    if proc.code != 0:
        return {**failure(proc, "train"), "cmd": shlex.join(cmd)}
    result = json.loads(last_line(proc.stdout, limit=None))
    scoring = result.get("eval_seconds") or 0.0
    prefix = "eval_" if prep.dev is not None else ""
    return {"ok": True, "accuracy": result[f"{prefix}accuracy"], "macro_f1": result[f"{prefix}macro_f1"],
            "seconds": proc.seconds - scoring, "process_seconds": proc.seconds, "eval_seconds": scoring or None,
            "rss_mib": proc.rss_mib, "val_accuracy": result["accuracy"], "cmd": shlex.join(cmd)}


def run_row(row: str, prep: Prepared, seed: int, ctx: Context, stem: Path) -> dict[str, Any]:
    """One row for one (set, seed), each run starting with no cached probe features.

    A run that exits 0 but leaves no readable result (no metrics.json, no JSON line, a missing key) is
    recorded as a failure too, so one odd row cannot stop a suite that takes hours."""
    if row == "bow":
        return run_bow(prep)
    shutil.rmtree(ctx.cache / "features", ignore_errors=True)
    try:
        if row == "trainer":
            return run_trainer(prep, seed, ctx, stem)
        return run_lastpool(row, prep, seed, ctx, stem)
    except (OSError, KeyError, ValueError) as exc:
        return {"ok": False, "code": 0, "stage": "read result", "error": f"{type(exc).__name__}: {exc}"[:300],
                "seconds": None, "rss_mib": None}


def warm_up(ctx: Context, work: Path) -> dict[str, Any]:
    """Load the GGUF once, so dequantizing it into the shared cache is charged to no row."""
    code = "from lastpool.models.backbones import load_backbone; import sys; load_backbone(sys.argv[1])"
    proc = timed([sys.executable, "-c", code, str(ctx.model)], ctx.env, work / "warmup")
    keep_logs(ctx.keep, work / "warmup")
    if proc.code == 0:
        print(f"warm-up load: {proc.seconds:.1f} s, peak RSS {proc.rss_mib or 0:.0f} MiB", flush=True)
    else:  # the model rows will fail one by one and say why
        print(f"warm-up load failed (exit {proc.code}): {last_line(proc.stderr)}", file=sys.stderr, flush=True)
    return {"ok": proc.code == 0, "seconds": proc.seconds, "rss_mib": proc.rss_mib}


# --- results: JSON and reuse ------------------------------------------------------------------------


def key(record: dict[str, Any]) -> tuple[str, str, int]:
    return record["set"], record["row"], record["seed"]


def load_reuse(path: Path, planned: set[tuple[str, str, int]]) -> list[dict[str, Any]]:
    """The runs of an earlier JSON that this invocation does not repeat, marked with where they came from."""
    saved = json.loads(path.read_text())
    kept = []
    for record in saved["results"]:
        if key(record) not in planned:
            record.setdefault("reused_from", str(path))
            kept.append(record)
    return kept


def save_json(path: Path | None, command: str, records: list[dict[str, Any]], warm: dict | None) -> None:
    """All raw results so far (rewritten after every run, so a stopped suite can be --reuse'd)."""
    if path is not None:
        payload = {"command": command, "machine": machine_info(), "warm_up": warm, "results": records}
        atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


# --- report -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One row of one set over its seeds."""

    runs: list[dict[str, Any]]

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["ok"]]

    def mean(self, field: str) -> float | None:
        values = [r[field] for r in self.ok if r.get(field) is not None]
        return statistics.mean(values) if values else None

    def spread(self, field: str) -> str:
        values = [r[field] for r in self.ok if r.get(field) is not None]
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {sd:.4f}"

    def peak_rss(self) -> float | None:
        values = [r["rss_mib"] for r in self.ok if r.get("rss_mib") is not None]
        return max(values) if values else None

    def failures(self) -> str:
        bad = [r for r in self.runs if not r["ok"]]
        return "; ".join(f"seed {r['seed']} failed ({r['stage']}, exit {r['code']}): `{cell(r['error'])}`"
                         for r in bad)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell's code span (an error line may hold '|' or backticks)."""
    return text.replace("|", "\\|").replace("`", "'")


def summaries(records: list[dict[str, Any]], set_name: str) -> dict[str, Summary]:
    """Each row's summary for one set, in the suite's row order."""
    return {row: Summary(sorted((r for r in records if r["set"] == set_name and r["row"] == row),
                                key=lambda r: r["seed"]))
            for row in ROWS if any(r["set"] == set_name and r["row"] == row for r in records)}


def ratio(part: float | None, whole: float | None) -> float | None:
    return part / whole if part is not None and whole else None


def times(speed: float | None) -> str:
    """A wall-time ratio as '0.42x' (one significant digit below 0.01x: the bag-of-words row)."""
    if speed is None:
        return "-"
    return f"{speed:.2f}x" if speed >= 0.01 else f"{speed:.1g}x"


def set_table(rows: dict[str, Summary]) -> list[str]:
    """One Markdown table: a line per row, failures in the notes column."""
    trainer_wall = rows["trainer"].mean("seconds") if "trainer" in rows else None
    header = ["row", "seeds", "accuracy (mean ± std)", "macro-F1 (mean ± std)", "LM alone: accuracy",
              "bow share", "wall s (mean)", "peak RSS MiB", "time vs Trainer", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, summary in rows.items():
        wall, rss = summary.mean("seconds"), summary.peak_rss()
        speed = ratio(wall, trainer_wall)
        cells = [f"`{row}`", ", ".join(str(r["seed"]) for r in summary.ok) or "-",
                 summary.spread("accuracy"), summary.spread("macro_f1"), lm_alone(summary),
                 ", ".join(f"{r['bow_share']:g}" for r in summary.ok if r.get("bow_share") is not None) or "-",
                 f"{wall:.1f}" if wall is not None else "-", f"{rss:.0f}" if rss is not None else "-",
                 times(speed), summary.failures()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def lm_alone(summary: Summary) -> str:
    """The language model's accuracy without the fused bag-of-words part (lastpool rows only)."""
    mean = summary.mean("lm_accuracy")
    return "-" if mean is None else f"{mean:.4f}"


def paired(rows: dict[str, Summary], row: str, other: str) -> tuple[float, float, int] | None:
    """Both rows' mean accuracy over the seeds both ran, and how many: a seed-0-only row is compared with
    the other row's seed 0, not with its mean over more seeds."""
    if row not in rows or other not in rows:
        return None
    mine = {r["seed"]: r["accuracy"] for r in rows[row].ok if r.get("accuracy") is not None}
    theirs = {r["seed"]: r["accuracy"] for r in rows[other].ok if r.get("accuracy") is not None}
    seeds = sorted(set(mine) & set(theirs))
    if not seeds:
        return None
    return statistics.mean(mine[s] for s in seeds), statistics.mean(theirs[s] for s in seeds), len(seeds)


def verdicts(set_name: str, rows: dict[str, Summary]) -> list[tuple[str, str]]:
    """(target, verdict) for one set; a target whose rows are missing or all failed is 'not measured'.
    Accuracy comparisons are paired: over the seeds both rows ran."""
    def wall(row: str) -> float | None:
        return rows[row].mean("seconds") if row in rows else None

    def verdict(met: bool | None, detail: str) -> str:
        return "not measured" if met is None else f"{'met' if met else '**NOT met**'} ({detail})"

    def beats(row: str, other: str) -> str:
        pair = paired(rows, row, other)
        if pair is None:
            return verdict(None, "")
        a, b, n = pair
        return verdict(a > b, f"{a:.4f} vs {b:.4f}, {n} seed{'s' * (n > 1)}")

    out = []
    pair, speed = paired(rows, "default", "trainer"), ratio(wall("default"), wall("trainer"))
    met = None if pair is None or speed is None else pair[0] >= pair[1] and speed <= TARGET_SPEED
    a, t, n = pair or (0.0, 0.0, 0)
    out.append((f"`default` accuracy >= `trainer`'s and wall <= {TARGET_SPEED}x Trainer's",
                verdict(met, f"{a:.4f} vs {t:.4f}, {n} seed{'s' * (n > 1)}, {speed or 0:.2f}x")))
    out.append(("`default` accuracy > `bow`'s", beats("default", "bow")))
    pair, pw = paired(rows, "probe", "bow"), wall("probe")
    met = None if pair is None or pw is None else pair[0] > pair[1] and pw <= PROBE_SECONDS
    p, b, n = pair or (0.0, 0.0, 0)
    out.append((f"`probe` accuracy > `bow`'s and wall <= {PROBE_SECONDS:.0f} s",
                verdict(met, f"{p:.4f} vs {b:.4f}, {n} seed{'s' * (n > 1)}, {pw or 0:.0f} s")))
    if set_name == "fpb":
        out.append(("`scratch` accuracy > `bow`'s (fpb only)", beats("scratch", "bow")))
    return out


def verdict_table(by_set: dict[str, dict[str, Summary]]) -> list[str]:
    """Targets as rows, sets as columns: the compact summary."""
    names = list(by_set)
    judged = {name: dict(verdicts(name, rows)) for name, rows in by_set.items()}
    targets = list(dict.fromkeys(t for per_set in judged.values() for t in per_set))
    lines = ["| target | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for target in targets:
        lines.append(f"| {target} | " + " | ".join(judged[n].get(target, "n/a") for n in names) + " |")
    return lines


def data_line(spec: SuiteSet, record: dict[str, Any]) -> str:
    """What one set's runs trained and were scored on, from a run's recorded sizes."""
    source = Path(spec.train).name
    if spec.dev is None:
        data = (f"`{source}`" if record["n_data"] == record["n_source"]
                else f"a stratified {record['n_data']}-row sample of `{source}` ({record['n_source']} rows) per seed")
        return (f"Data: {data}; trained on lastpool's {record['n_train']}-row 90% split per seed, scored on its "
                f"{record['n_scored']}-row validation split.")
    return (f"Data: a stratified {record['n_data']}-row sample of `{source}` ({record['n_source']} rows) per seed, "
            f"of which lastpool trains on {record['n_train']} and keeps the rest for model selection and "
            f"calibration; scored on all {record['n_scored']} rows of `{Path(spec.dev).name}`.")


def render(records: list[dict[str, Any]], command: str, done: bool, model: Path) -> str:
    """The Markdown section: command, machine, protocol, a table per set, the verdicts."""
    by_set = {name: summaries(records, name) for name in SETS if any(r["set"] == name for r in records)}
    limits = sorted({r.get("limit") for r in records if r.get("limit")})
    lines = [
        MARK_BEGIN,
        "## Default recipes on the dev suite: against bag-of-words and transformers' Trainer (`benchmarks/suite.py`)",
        "",
        ("" if done else "**PARTIAL: the suite was still running (or was stopped) when this was written.** ")
        + (f"**Smoke test: training data limited to {', '.join(map(str, limits))} rows.** " if limits else "")
        + f"Command: `{command}`.",
        "",
        f"Machine: {machine_info()}. Shared machine: other processes may have run, so times are indicative.",
        "",
        "Protocol: no tuning flags. lastpool rows run `lastpool train --data D --seed S --out RUN -q` plus only: "
        + "; ".join(f"`{row}` `{shlex.join(lastpool_flags(row, Path(model.name))) or '(nothing)'}`"
                    for row in ROWS if row not in ("bow", "trainer"))
        + f". `trainer`: `python benchmarks/hf_trainer.py --model M --data D --seed S {shlex.join(TRAINER_FLAGS)}` "
        "(AutoModelForSequenceClassification + Trainer, bf16, group_by_length, lastpool's 90% split of D; "
        "`--eval-data dev.tsv` where a set has one, and that scoring's seconds are taken off its wall time). "
        "`bow`: `lastpool.evaluation.baseline.bag_of_words_baseline`, in-process, fitted on exactly the texts "
        "lastpool trains on (its 90% split of D for the seed) and scored on the same texts as the other rows; "
        "its wall time is fit + score, RSS not measured. "
        "Wall time: the whole training process under `/usr/bin/time -v` (interpreter start, model load from "
        "the shared dequantized cache, feature extraction, training, validation, saving); one GGUF warm-up load "
        "before the runs is charged to no row, and cached probe features are deleted before each run. "
        "Peak RSS: max over seeds. 'time vs Trainer': mean wall / the Trainer row's mean wall on that set. "
        "Mean ± std over the seeds listed.",
        "",
    ]
    for name, rows in by_set.items():
        first = next(r for r in records if r["set"] == name)
        lines += [f"### {name}", "", data_line(SETS[name], first), "", *set_table(rows), ""]
    if by_set:
        lines += ["### Verdicts (mean over seeds)", "", *verdict_table(by_set), ""]
    lines += provenance_notes(records)
    lines.append(MARK_END)
    return "\n".join(lines)


def provenance_notes(records: list[dict[str, Any]]) -> list[str]:
    """Which runs came from earlier invocations (--reuse), and whether settings differ between runs."""
    notes = []
    reused = [r for r in records if r.get("reused_from")]
    for command in dict.fromkeys(r["invocation"] for r in reused):
        mine = [r for r in reused if r["invocation"] == command]
        which = ", ".join(sorted({f"{r['set']}/{r['row']}" for r in mine}))
        notes.append(f"- Reused from an earlier invocation (`{command}`), not rerun: {which}.")
    settings = {(r.get("model"), r.get("limit")) for r in records if r["row"] != "bow"}
    if len(settings) > 1:
        notes.append("- **Runs differ in model or --limit:** " + "; ".join(
            f"model {m}, limit {lim}" for m, lim in sorted(settings, key=str)) + ".")
    return [*notes, ""] if notes else []


# --- main -------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma separated subset of {','.join(SETS)}")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma separated subset of {','.join(ROWS)}")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 [1]")
    parser.add_argument("--seed-list", default=None, help="explicit seeds, e.g. 1,2,3 (overrides --seeds)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--limit", type=int, default=None, help="cap the training rows per set (smoke tests)")
    parser.add_argument("--cache", type=Path, default=None, help="LASTPOOL_CACHE to use (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write all raw results here (after every run)")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="an earlier --json: its runs that this invocation does not repeat are reported too")
    parser.add_argument("--keep-logs", type=Path, default=None, help="keep each process's stdout/stderr here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    args.sets = split_choice(parser, args.sets, tuple(SETS), "set")
    args.rows = split_choice(parser, args.rows, ROWS, "row")
    args.seed_list = ([int(s) for s in args.seed_list.split(",") if s.strip()] if args.seed_list
                      else list(range(args.seeds)))
    args.model, args.data_root = args.model.resolve(), args.data_root.resolve()
    return args


def split_choice(parser: argparse.ArgumentParser, value: str, allowed: Sequence[str], what: str) -> list[str]:
    """A comma list checked against ``allowed``, kept in the suite's own order."""
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in chosen if v not in allowed]
    if bad:
        parser.error(f"unknown {what}(s): {', '.join(bad)} (choose from {', '.join(allowed)})")
    return [v for v in allowed if v in chosen]


def run_suite(args: argparse.Namespace, ctx: Context, work: Path, records: list[dict[str, Any]],
              after_each: Callable[[], None]) -> None:
    """Every planned (set, seed, row), each set's data prepared once per seed, rows interleaved."""
    for name in args.sets:
        for seed in args.seed_list:
            prep = prepare(SETS[name], seed, args.data_root, args.limit, work)
            for row in args.rows:
                stem = work / f"{name}-{row}-s{seed}"
                record = {"set": name, "row": row, "seed": seed, **run_row(row, prep, seed, ctx, stem),
                          "invocation": args.command, "model": ctx.model.name, "limit": args.limit,
                          "n_source": prep.n_source, "n_data": prep.n_data, "n_train": len(prep.train_texts),
                          "n_scored": len(prep.score_texts)}
                records.append(record)
                print(progress(record), flush=True)
                after_each()


def progress(record: dict[str, Any]) -> str:
    """One line per finished run."""
    head = f"{record['set']} {record['row']} seed {record['seed']}: "
    if not record["ok"]:
        return head + f"FAILED ({record['stage']}, exit {record['code']}): {record['error']}"
    rss = f", peak RSS {record['rss_mib']:.0f} MiB" if record.get("rss_mib") else ""
    scores = f"accuracy {record['accuracy']:.4f}, macro-F1 {record['macro_f1']:.4f}"
    return head + f"{scores}, {record['seconds']:.1f} s{rss}"


def main() -> None:
    args = parse_args()
    args.command = command_line("suite.py")
    planned = {(s, r, seed) for s in args.sets for r in args.rows for seed in args.seed_list}
    records = load_reuse(args.reuse, planned) if args.reuse else []
    own_cache = args.cache is None
    cache = Path(tempfile.mkdtemp(prefix="lastpool-suite-cache-")) if own_cache else args.cache.resolve()
    ctx = Context(model=args.model, env={**os.environ, "LASTPOOL_CACHE": str(cache)}, cache=cache,
                  keep=args.keep_logs.resolve() if args.keep_logs else None)
    warm = None

    def after_each() -> None:
        save_json(args.json, args.command, records, warm)
        if not args.no_write:
            write_section(render(records, args.command, False, args.model), MARK_BEGIN, MARK_END)

    try:
        with tempfile.TemporaryDirectory(prefix="lastpool-suite-") as tmp:
            work = Path(tmp)
            if MODEL_ROWS & set(args.rows):
                warm = warm_up(ctx, work)
            run_suite(args, ctx, work, records, after_each)
    finally:
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)
    save_json(args.json, args.command, records, warm)
    publish(render(records, args.command, True, args.model), MARK_BEGIN, MARK_END, write=not args.no_write)


if __name__ == "__main__":
    main()
