"""Batch prediction at scale: texts/s, peak RSS and time per text as the input grows; precisions and
engines on the same weights; one process against two.

Input: Financial PhraseBank sentences (``sentences_allagree.txt``) repeated, each row numbered (an ``id``
column kept with ``--keep-cols id``), written once per size. Models: the from-scratch default trained on
the same file, and SmolLM2-135M-Instruct from ``../shared/models`` (lastpool's default recipe, top-4 at
half depth, one epoch) unless ``--scratch-model`` / ``--smol-model`` give trained ones.

1. **Scale**: ``lastpool predict MODEL --input N.csv --output out.parquet`` as its own process under
   ``/usr/bin/time -v`` (wall and peak RSS include start-up and loading) for each size in ``--sizes``
   (SmolLM2: ``--smol-sizes``, its texts/s make a million texts take hours here).
2. **Precision and engine**, in this process on ``--engine-texts`` texts, the language model alone (what
   an export computes): lastpool fp32, lastpool bf16, the ONNX file in fp32 and in int8
   (``export --quantize int8``), and ``transformers.pipeline`` on the ``export --format hf`` folder;
   texts/s after one warm-up pass, and each one's agreement with lastpool fp32's labels.
3. **Processes**: the same predict with ``--num-processes 2`` against one process on the largest size
   both models ran.

    python benchmarks/predict_scale.py [--sizes 10000,100000,1000000] [--smol-sizes 10000] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import command_line, machine_info, publish  # benchmarks/ is on sys.path when run as a script
from pretrained import DEFAULT_MODEL, lastpool_exe, timed

from lastpool.fileio import atomic_write_text

SHARED = Path(__file__).resolve().parents[2] / "shared"
FPB = SHARED / "data" / "financial_phrasebank" / "sentences_allagree.txt"
MARK_BEGIN, MARK_END = "<!-- predict_scale:begin -->", "<!-- predict_scale:end -->"


def sentences() -> list[str]:
    from lastpool.data.tables import read_table

    return read_table(FPB).texts


def input_file(rows: int, work: Path) -> Path:
    """``rows`` numbered sentences as CSV, written in slices (the benchmark's own memory stays small)."""
    path = work / f"texts-{rows}.csv"
    if path.exists():
        return path
    import pandas as pd

    base = sentences()
    tmp = path.with_suffix(".tmp")
    for start in range(0, rows, 100_000):
        ids = range(start, min(rows, start + 100_000))
        frame = pd.DataFrame({"id": list(ids), "text": [base[i % len(base)] for i in ids]})
        frame.to_csv(tmp, mode="w" if start == 0 else "a", header=start == 0, index=False)
    tmp.rename(path)
    return path


def trained(kind: str, given: str | None, work: Path) -> Path:
    if given:
        return Path(given)
    run = work / f"{kind}-run"
    if not (run / "model").exists():
        flags = ["--model", str(DEFAULT_MODEL), "--epochs", "1"] if kind == "smol" else []
        code, seconds, _ = timed([*lastpool_exe(), "train", "--data", str(FPB), *flags, "--seed", "0", "--out",
                                  str(run), "--quiet"], dict(os.environ), work / f"{kind}-train.log")
        if code != 0:
            raise SystemExit(f"training the {kind} model failed: see {work / f'{kind}-train.log'}")
        print(f"trained {kind} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return run


def scale_row(name: str, model: Path, rows: int, work: Path, processes: int = 1) -> dict[str, Any]:
    data = input_file(rows, work)
    out = work / f"out-{name}-{rows}-p{processes}.parquet"
    out.unlink(missing_ok=True)
    cmd = [*lastpool_exe(), "predict", str(model), "--input", str(data), "--output", str(out), "--keep-cols", "id",
           "-q", *(["--num-processes", str(processes)] if processes > 1 else [])]
    code, seconds, rss = timed(cmd, dict(os.environ), work / f"predict-{name}-{rows}-p{processes}.log")
    if code != 0:
        raise SystemExit(f"predict failed: see {work / f'predict-{name}-{rows}-p{processes}.log'}")
    import pyarrow.parquet as pq

    assert pq.ParquetFile(out).metadata.num_rows == rows
    row = {"model": name, "rows": rows, "processes": processes, "seconds": seconds, "rss_mib": rss,
           "texts_per_s": rows / seconds}
    print(json.dumps(row), flush=True)
    return row


def engine_rows(run: Path, n: int, work: Path) -> list[dict[str, Any]]:
    """Texts/s and agreement with lastpool fp32 for each way of running the same weights."""
    import torch
    from transformers import pipeline

    from lastpool.classifier import Classifier, bf16_is_fast
    from lastpool.export import OnnxClassifier, export_hf, export_onnx

    texts = (sentences() * (n // 2000 + 1))[:n]
    base = Classifier.load(run).language_model_only()
    assert base.spec is not None

    def with_precision(precision: str) -> Any:
        clf = Classifier.load(run).language_model_only()
        assert clf.spec is not None
        clf.spec = clf.spec.model_copy(update={"precision": precision})
        return clf

    onnx32, onnx8, hf = work / "fp32.onnx", work / "int8.onnx", work / "hf"
    if not onnx32.exists():
        export_onnx(base, onnx32)
    if not onnx8.exists():
        export_onnx(base, onnx8, quantize="int8")
    if not hf.exists():
        export_hf(base, hf)
    labels = base.labels
    pipe = pipeline("text-classification", model=str(hf), device=-1, dtype=torch.float32)

    def pipeline_labels(batch: list[str]) -> list[str]:
        return [r["label"] for r in pipe(batch, batch_size=64, truncation=True)]

    fp32, bf16 = with_precision("fp32"), with_precision("bf16")
    onnx_fp32, onnx_int8 = OnnxClassifier(onnx32), OnnxClassifier(onnx8)
    # Without bf16 instructions the CPU emulates bf16 matmuls (tens of times slower): bf16 then runs on
    # every 10th text, and its agreement is counted against fp32's labels on those texts.
    bf16_step = 1 if bf16_is_fast() else 10
    runners: dict[str, tuple[Any, int]] = {  # each built before its timing starts
        "lastpool fp32": (fp32.predict, 1), "lastpool bf16": (bf16.predict, bf16_step),
        "ONNX Runtime fp32": (onnx_fp32.predict, 1), "ONNX Runtime int8": (onnx_int8.predict, 1),
        "transformers pipeline fp32": (pipeline_labels, 1),
    }
    rows: list[dict[str, Any]] = []
    reference: list[str] | None = None
    for name, (run_it, step) in runners.items():
        run_it(texts[:64])  # warm-up (first-call allocations, ONNX session set-up)
        start = time.perf_counter()
        got = run_it(texts[::step])
        seconds = time.perf_counter() - start
        reference = got if reference is None else reference
        agree = float(np.mean([a == b for a, b in zip(got, reference[::step], strict=True)]))
        rows.append({"engine": name, "texts": len(got), "seconds": seconds, "texts_per_s": len(got) / seconds,
                     "agreement": agree})
        print(json.dumps(rows[-1]), flush=True)
    assert set(reference or []) <= set(labels)
    return rows


def machines_of(rows: list[dict[str, Any]]) -> str:
    """The machines a table's rows were measured on (``--json`` keeps rows of earlier invocations, which may
    have run on another machine)."""
    return "; ".join(dict.fromkeys(r.get("machine", "-") for r in rows))


def render(scale: list[dict[str, Any]], engines: list[dict[str, Any]], processes: list[dict[str, Any]]) -> str:
    lines = [MARK_BEGIN, "## Batch prediction at scale (issue 18, `benchmarks/predict_scale.py`)", "",
             f"`{command_line('predict_scale.py')}` (the last invocation; this machine: {machine_info()}). Input: "
             "`sentences_allagree.txt` repeated and numbered; each predict is its own process (`--keep-cols id`, "
             "Parquet out) under `/usr/bin/time -v`: wall and peak RSS include start-up and model loading.", "",
             f"Sizes, measured on {machines_of(scale)}.", "",
             "Marginal: the extra seconds per 1k texts over the model's previous size (start-up cancels out; "
             "equal values down a model's rows mean time linear in the input).", "",
             "| model | texts | wall s | texts/s | s per 1k texts | marginal s per 1k texts | peak RSS MiB |",
             "|---|---|---|---|---|---|---|"]
    for i, row in enumerate(scale):
        before = scale[i - 1] if i and scale[i - 1]["model"] == row["model"] else None
        marginal = (f"{1000 * (row['seconds'] - before['seconds']) / (row['rows'] - before['rows']):.3f}"
                    if before else "-")
        lines.append(f"| {row['model']} | {row['rows']:,} | {row['seconds']:.1f} | {row['texts_per_s']:.0f} | "
                     f"{1000 * row['seconds'] / row['rows']:.3f} | {marginal} | {row['rss_mib']:.0f} |")
    for name in dict.fromkeys(r["model"] for r in scale):
        mine = [r for r in scale if r["model"] == name]
        if len(mine) > 1:
            small, large = mine[0], mine[-1]
            per_text = (large["seconds"] / large["rows"]) / (small["seconds"] / small["rows"])
            lines.append(f"- {name}: peak RSS {large['rss_mib']:.0f} MiB at {large['rows']:,} texts against "
                         f"{small['rss_mib']:.0f} at {small['rows']:,} ({large['rss_mib'] / small['rss_mib']:.3f}x; "
                         f"target within 1.10x); time per text {per_text:.3f}x the small input's (1.0: linear; "
                         "start-up weighs more in the small one)")
    if engines:
        fp32 = next(r["texts_per_s"] for r in engines if r["engine"] == "lastpool fp32")
        bf16 = next(r["texts_per_s"] for r in engines if r["engine"] == "lastpool bf16")
        lines += ["", f"Same weights (SmolLM2 default model, the language model alone), {engines[0]['texts']:,} "
                  "texts in this process after a warm-up (fewer: every 10th of them); agreement: labels equal to "
                  f"lastpool fp32's on the same texts. Measured on {machines_of(engines)}.", "",
                  "| engine | texts | texts/s | vs lastpool fp32 | vs lastpool bf16 | label agreement |",
                  "|---|---|---|---|---|---|"]
        for row in engines:
            speed = row["texts_per_s"]
            lines.append(f"| {row['engine']} | {row['texts']:,} | {speed:.1f} | {speed / fp32:.2f}x | "
                         f"{speed / bf16:.2f}x | {row['agreement']:.2%} |")
    if processes:
        lines += ["", f"One process against two, measured on {machines_of(processes)}.", "",
                  "| model | texts | 1 process s | 2 processes s | speed-up |", "|---|---|---|---|---|"]
        ones = [r for r in processes if r["processes"] == 1]
        pairs = [(one, next(r for r in processes if r["processes"] == 2 and (r["model"], r["rows"]) ==
                            (one["model"], one["rows"]))) for one in ones]
        for one, two in pairs:
            lines.append(f"| {one['model']} | {one['rows']:,} | {one['seconds']:.1f} | {two['seconds']:.1f} | "
                         f"{one['seconds'] / two['seconds']:.2f}x |")
    lines += ["", MARK_END]
    return "\n".join(lines)


class Results:
    """Every row measured so far (``--json``): a later invocation measures only the rows still missing, so
    the benchmark runs in parts on a machine shared with other work."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        saved = json.loads(path.read_text()) if path is not None and path.exists() else {}
        self.rows: dict[str, list[dict[str, Any]]] = {k: saved.get(k, []) for k in ("scale", "engines", "processes")}

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Keep freshly measured rows, each stamped with this machine, and save at once."""
        self.rows[kind] += [{**row, "machine": machine_info()} for row in rows]
        if self.path is not None:
            atomic_write_text(self.path, json.dumps(self.rows, indent=1) + "\n")

    def scale(self, name: str, model: Path, rows: int, work: Path, processes: int, kind: str) -> dict[str, Any]:
        found = next((r for r in self.rows[kind] if (r["model"], r["rows"], r["processes"]) == (name, rows, processes)),
                     None)
        if found is None:
            self.add(kind, [scale_row(name, model, rows, work, processes)])
            found = self.rows[kind][-1]
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="input sizes for the from-scratch model")
    parser.add_argument("--smol-sizes", default="10000", help="input sizes for SmolLM2 (empty: none)")
    parser.add_argument("--engine-texts", type=int, default=2000)
    parser.add_argument("--process-rows", type=int, default=None, help="rows for 1 vs 2 processes with the "
                        "scratch model (default: the largest of --sizes up to 100,000)")
    parser.add_argument("--smol-process-rows", type=int, default=None, help="the same for SmolLM2 (default: the "
                        "largest of --smol-sizes up to 100,000)")
    parser.add_argument("--skip-processes", action="store_true", help="leave out 1 vs 2 processes")
    parser.add_argument("--scratch-model", default=None)
    parser.add_argument("--smol-model", default=None)
    parser.add_argument("--work", default=None)
    parser.add_argument("--json", type=Path, default=None, help="keep every row here; rows already in it are not "
                        "measured again (the benchmark goes on where it stopped)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="lastpool-predict-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results = Results(args.json)
    scratch = trained("scratch", args.scratch_model, work)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    smol_sizes = [int(s) for s in args.smol_sizes.split(",") if s]
    smol = trained("smol", args.smol_model, work) if smol_sizes or args.engine_texts else None
    for n in sizes:
        results.scale("scratch", scratch, n, work, 1, "scale")
    for n in smol_sizes if smol is not None else []:
        results.scale("SmolLM2 (top-4)", smol, n, work, 1, "scale")
    if smol is not None and args.engine_texts and not results.rows["engines"]:
        results.add("engines", engine_rows(smol, args.engine_texts, work))
    for name, model, own, given in (("scratch", scratch, sizes, args.process_rows),
                                    ("SmolLM2 (top-4)", smol, smol_sizes, args.smol_process_rows)):
        if model is None or not own or args.skip_processes:
            continue
        rows = given or max([n for n in own if n <= 100_000] or [min(own)])
        results.scale(name, model, rows, work, 1, "processes")
        results.scale(name, model, rows, work, 2, "processes")
    scale = sorted(results.rows["scale"], key=lambda r: (r["model"] != "scratch", r["model"], r["rows"]))
    publish(render(scale, results.rows["engines"], results.rows["processes"]), MARK_BEGIN, MARK_END,
            write=not args.no_write)


if __name__ == "__main__":
    main()
