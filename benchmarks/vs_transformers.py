"""lastpool against transformers on the same model, data, split and hyperparameters: training and inference.

Training (each a separate process under ``/usr/bin/time -v``, run in the interleaved order A', B full,
B full compiled, A, B lora, B lora compiled so that slow and fast phases of a shared machine hit both sides):

- A:  ``AutoModelForSequenceClassification`` + ``Trainer`` + ``DataCollatorWithPadding``, defaults (fp32).
- A': the same with ``bf16=True`` and ``train_sampling_strategy="group_by_length"``.
- B:  ``lastpool train --mode full`` and ``--mode lora`` (``--precision auto``: bf16 weights, float32 masters);
  "B full compiled" and "B lora compiled" add ``--compile`` (its compile time counts as training time).

All runs: SmolLM2-135M-Instruct (the dequantized GGUF), Financial PhraseBank allagree, lastpool's 10%
stratified split for the seed, max length 64, batch 16, the same epochs; learning rate 5e-5 for the full
fine-tunes (LoRA: 1e-3, LoRA needs a larger one), no warmup, no weight decay, no label smoothing (the
Trainer defaults). Reported per run: train samples/s and real (unpadded) tokens/s over the training time
only (evaluation excluded on both sides), seconds per epoch, validation accuracy, peak RSS, and for the
full fine-tunes the achieved model FLOP/s = 6 x non-embedding parameters x real tokens/s, as a share of
this machine's bf16 matmul peak (a 2048^3 bf16 matmul loop, measured in this run before and after).

Inference: A''s trained weights are loaded by both ``transformers.pipeline("text-classification")`` and
lastpool (the same backbone and score matrix, as a lastpool model folder, head bias 0), and both classify
the same 2000 texts; texts/s excludes model loading, rounds alternate between the two, the best round
counts. lastpool runs fp32 (for exact agreement with the fp32 pipeline) and bf16 (its default on this CPU);
the agreement of the predicted labels with the pipeline's is reported for each.

    python benchmarks/vs_transformers.py [--epochs 1] [--max-steps N] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import command_line, machine_info, write_section  # benchmarks/ is on sys.path when run as a script
from pretrained import DEFAULT_DATA, DEFAULT_MODEL, lastpool_exe, timed

HERE = Path(__file__).resolve().parent
MARK_BEGIN, MARK_END = "<!-- vs_transformers:begin -->", "<!-- vs_transformers:end -->"
SHARED = {"max_length": 64, "batch_size": 16, "lr_full": "5e-5", "lr_lora": "1e-3"}
KINDS = ("A'", "A", "B full", "B full compiled", "B lora", "B lora compiled")  # the training runs --runs can name
FULL_B = ("B full", "B full compiled")  # lastpool full fine-tunes: measured against A' and the matmul peak
LORA_B = ("B lora", "B lora compiled")  # LoRA: fewer trained weights, so a speed against A' is not like for like
TARGETS = {"train_speedup": 2.0, "accuracy_gap": 0.01, "inference_speedup": 2.0, "peak_share": 0.40}

PIPELINE_SNIPPET = r"""
import json, sys, time
import torch
from transformers import pipeline
folder, texts_file, batch_size, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
texts = json.loads(open(texts_file).read())
pipe = pipeline("text-classification", model=folder, device=-1)
pipe(texts[:8], batch_size=batch_size, truncation=True, max_length=64)  # warm-up
start = time.perf_counter()
results = pipe(texts, batch_size=batch_size, truncation=True, max_length=64)
seconds = time.perf_counter() - start
json.dump({"seconds": seconds, "labels": [r["label"] for r in results]}, open(out, "w"))
"""

LASTPOOL_SNIPPET = r"""
import json, sys, time
from lastpool import Classifier
folder, texts_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
texts = json.loads(open(texts_file).read())
clf = Classifier.load(folder)
clf.predict(texts[:8])  # warm-up
start = time.perf_counter()
labels = clf.predict(texts)
seconds = time.perf_counter() - start
json.dump({"seconds": seconds, "labels": labels}, open(out, "w"))
"""


def matmul_peak(repeats: int = 5, n: int = 2048) -> float:
    """Best bf16 GFLOP/s of an n^3 matmul loop on this machine, now."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def data_facts(model: Path, data: Path, seed: int, n_texts: int) -> dict:
    """Non-embedding parameter count, real tokens per training epoch, and 2000 texts for inference."""
    from lastpool.data.split import stratified_split
    from lastpool.data.tables import read_table
    from lastpool.models.backbones import load_backbone
    from lastpool.text.tokenizers import TextEncoder, load_pretrained_tokenizer

    table = read_table(str(data))
    assert table.labels is not None
    train_idx, _ = stratified_split(table.labels, 0.1, seed)
    encoder = TextEncoder(load_pretrained_tokenizer(str(model)), SHARED["max_length"])
    ids = encoder.encode([table.texts[i] for i in train_idx])
    backbone, _ = load_backbone(str(model))
    embedding = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, torch.nn.Embedding))
    params = sum(p.numel() for p in backbone.parameters())
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(table.texts), generator=generator).tolist()
    return {"non_embedding_params": params - embedding, "train_rows": len(ids),
            "real_tokens_per_epoch": sum(len(x) for x in ids), "padding": padding_shares([len(x) for x in ids], seed),
            "inference_texts": [table.texts[i] for i in order[:n_texts]]}


def padding_shares(lengths: list[int], seed: int) -> dict[str, float]:
    """Padding as a share of the tokens an epoch computes: lastpool's length buckets vs random batches.
    It bounds what packing several texts into one row could save."""
    from lastpool.data.batching import LengthBucketSampler

    def share(batches: list[list[int]]) -> float:
        computed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return 1 - sum(lengths) / computed

    size = SHARED["batch_size"]
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    return {"buckets": share(LengthBucketSampler(lengths, size, seed=seed).batches()),
            "random": share([order[i : i + size] for i in range(0, len(order), size)])}


def train_run(kind: str, args: argparse.Namespace, env: dict[str, str], work: Path, facts: dict) -> dict:
    """One training process; returns its measures (or the failure)."""
    out = work / f"run-{kind}"
    if kind in ("A", "A'"):
        cmd = [sys.executable, str(HERE / "hf_trainer.py"), "--model", str(args.model), "--data", str(args.data),
               "--seed", str(args.seed), "--epochs", str(args.epochs), "--batch-size", str(SHARED["batch_size"]),
               "--lr", SHARED["lr_full"], "--max-length", str(SHARED["max_length"]), "--eval-at-end"]
        if kind == "A'":
            cmd += ["--best", "--save", str(work / "hf-model")]
    else:
        mode = "lora" if kind in LORA_B else "full"
        cmd = [*lastpool_exe(), "train", "--model", str(args.model), "--data", str(args.data), "--mode", mode,
               "--seed", str(args.seed), "--epochs", str(args.epochs), "--batch-size", str(SHARED["batch_size"]),
               "--lr", SHARED["lr_full" if mode == "full" else "lr_lora"], "--max-length", str(SHARED["max_length"]),
               "--warmup", "0", "--weight-decay", "0", "--label-smoothing", "0", "--token-dropout", "0",
               "--precision", "auto", "--quiet", "--out", str(out)]
        if mode == "lora":
            cmd += ["--lora-r", "16", "--lora-alpha", "32"]
        if kind.endswith("compiled"):
            cmd += ["--compile"]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    log = work / f"{kind.replace(' ', '-')}.log"
    code, wall, rss = timed(cmd, env, log)
    result: dict = {"kind": kind, "ok": code == 0, "wall": wall, "rss_mib": rss, "cmd": shlex.join(cmd)}
    if code != 0:
        result["error"] = log.read_text(errors="replace")[-2000:]
        return result
    if kind in ("A", "A'"):
        raw = json.loads(log.read_text().strip().splitlines()[-1])
        steps, seconds = raw["optimizer_steps"], raw["train_runtime"]
        accuracy = raw["final_accuracy"]
    else:
        metrics = json.loads((out / "metrics.json").read_text())
        history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]
        steps, seconds = metrics["optimizer_steps"], metrics["train_seconds"]
        accuracy = history[-1]["val_accuracy"]  # final epoch, as for the Trainer
    samples = min(steps * SHARED["batch_size"], facts["train_rows"] * args.epochs)
    epochs_done = samples / facts["train_rows"]
    tokens = facts["real_tokens_per_epoch"] * epochs_done
    result.update({"steps": steps, "train_seconds": seconds, "accuracy": accuracy,
                   "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
                   "s_per_epoch": seconds / epochs_done})
    result["gflops"] = 6 * facts["non_embedding_params"] * result["tokens_per_s"] / 1e9
    return result


def lastpool_folder_from_hf(hf_dir: Path, out: Path, precision: str) -> None:
    """The Trainer's model as a lastpool model folder: its base model as backbone, its score as the head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lastpool.artifact import ModelSpec, PretrainedBackboneSpec, TokenizerSpec, build_model, save_model
    from lastpool.models.backbones import HFBackbone
    from lastpool.text.tokenizers import TextEncoder

    hf = AutoModelForSequenceClassification.from_pretrained(str(hf_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    base = getattr(hf, hf.base_model_prefix)
    config = {k: v for k, v in json.loads(base.config.to_json_string(use_diff=False)).items() if not k.startswith("_")}
    labels = [hf.config.id2label[i] for i in range(hf.config.num_labels)]
    encoder = TextEncoder(tokenizer, SHARED["max_length"])
    spec = ModelSpec(
        backbone=PretrainedBackboneSpec(source=str(hf_dir), kind="folder", model_type=base.config.model_type,
                                        config=config),
        labels=labels, max_length=SHARED["max_length"], precision=precision,
        tokenizer=TokenizerSpec(type="pretrained", source=str(hf_dir), vocab_size=encoder.vocab_size,
                                pad_token_id=encoder.pad_token_id),
    )
    model = build_model(spec, HFBackbone(base))
    with torch.no_grad():
        model.head.weight.copy_(hf.score.weight)
        model.head.bias.zero_()
    out.mkdir(parents=True)
    encoder.save(out)
    save_model(model, spec, out)


def inference(work: Path, env: dict[str, str], facts: dict, rounds: int) -> dict:
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(facts["inference_texts"]))
    hf_dir = work / "hf-model"
    for precision in ("fp32", "bf16"):
        lastpool_folder_from_hf(hf_dir, work / f"lastpool-{precision}", precision)
    sides = {"pipeline, batch_size 1 (default)": [sys.executable, "-c", PIPELINE_SNIPPET, str(hf_dir)],
             "pipeline, batch_size 32": [sys.executable, "-c", PIPELINE_SNIPPET, str(hf_dir)],
             "lastpool fp32": [sys.executable, "-c", LASTPOOL_SNIPPET, str(work / "lastpool-fp32")],
             "lastpool bf16": [sys.executable, "-c", LASTPOOL_SNIPPET, str(work / "lastpool-bf16")]}
    results: dict[str, dict] = {}
    for round_ in range(rounds):
        for name, base in sides.items():
            out = work / f"pred-{round_}-{len(results)}.json"
            extra = ["1" if "batch_size 1" in name else "32"] if name.startswith("pipeline") else []
            cmd = [*base, str(texts_file), *extra, str(out)]
            code, wall, rss = timed(cmd, env, work / "inference.log")
            if code != 0:
                raise SystemExit(f"{name} failed:\n" + (work / "inference.log").read_text()[-2000:])
            got = json.loads(out.read_text())
            best = results.get(name)
            if best is None or got["seconds"] < best["seconds"]:
                results[name] = {"seconds": got["seconds"], "labels": got["labels"], "rss_mib": rss, "wall": wall}
            print(f"inference {name} round {round_}: {got['seconds']:.1f} s", flush=True)
    reference = results["pipeline, batch_size 32"]["labels"]
    for item in results.values():
        item["texts_per_s"] = len(reference) / item["seconds"]
        item["agreement"] = sum(a == b for a, b in zip(item["labels"], reference, strict=True)) / len(reference)
    return results


def render(args: argparse.Namespace, command: str, facts: dict, peaks: list[float], runs: list[dict],
           infer: dict | None, done: bool) -> str:
    peak = max(peaks) if peaks else float("nan")
    head = ["run", "train samples/s", "real tokens/s", "s / epoch", "val accuracy (final epoch)", "peak RSS MiB",
            "model GFLOP/s (6N)", "share of bf16 peak"]
    rows = []
    for r in runs:
        if not r["ok"]:
            rows.append([r["kind"], "failed", "", "", "", "", "", ""])
            continue
        full = r["kind"] not in LORA_B
        rows.append([r["kind"], f"{r['samples_per_s']:.2f}", f"{r['tokens_per_s']:.0f}", f"{r['s_per_epoch']:.0f}",
                     f"{r['accuracy']:.4f}", f"{r['rss_mib'] or 0:.0f}",
                     f"{r['gflops']:.0f}" if full else "(LoRA: n/a)",
                     f"{r['gflops'] / peak:.1%}" if full else "-"])
    lines = [MARK_BEGIN, "## lastpool vs transformers (`benchmarks/vs_transformers.py`)", "",
             ("" if done else "**PARTIAL: still running or stopped.** ") + f"Command: `{command}`.", "",
             f"Machine: {machine_info()}. bf16 matmul peak (2048^3 loop, best of the runs before and after "
             f"training): {peak:.0f} GFLOP/s (measurements: {', '.join(f'{p:.0f}' for p in peaks)}).", "",
             f"Model `{args.model.name}` (dequantized float32, "
             f"{facts['non_embedding_params'] / 1e6:.1f} M non-embedding parameters), `{args.data.name}`, "
             f"seed {args.seed} split ({facts['train_rows']} training rows, "
             f"{facts['real_tokens_per_epoch']} real tokens per epoch; padding "
             f"{facts['padding']['buckets']:.1%} of the tokens computed in lastpool's length buckets, "
             f"{facts['padding']['random']:.1%} in random batches), "
             f"{args.epochs} epoch(s)"
             + (f", stopped after {args.max_steps} steps" if args.max_steps else "")
             + f", batch {SHARED['batch_size']}, max length {SHARED['max_length']}, lr {SHARED['lr_full']} "
             f"(LoRA {SHARED['lr_lora']}, r 16). Training time excludes evaluation on both sides.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows), ""]
    by = {r["kind"]: r for r in runs if r["ok"]}
    best_hf = by.get("A'")
    for kind in FULL_B:
        if best_hf and kind in by:
            speed = by[kind]["samples_per_s"] / best_hf["samples_per_s"]
            gap = best_hf["accuracy"] - by[kind]["accuracy"]
            ok = speed >= TARGETS["train_speedup"] and gap <= TARGETS["accuracy_gap"]
            lines.append(f"- Training, {kind} / A' samples/s: **{speed:.2f}x**, accuracy B {by[kind]['accuracy']:.4f} "
                         f"vs A' {best_hf['accuracy']:.4f} (target >= 2.0x within 1 point: "
                         f"{'met' if ok else 'NOT met'}).")
    for kind in LORA_B:
        if best_hf and kind in by:
            speed = by[kind]["samples_per_s"] / best_hf["samples_per_s"]
            lines.append(f"- {kind} / A' samples/s: {speed:.2f}x, accuracy {by[kind]['accuracy']:.4f} vs A' "
                         f"{best_hf['accuracy']:.4f} (LoRA trains adapters, not every weight: a different method "
                         "from A''s full fine-tune, so not what the target is judged on).")
    if best_hf and "A" in by:
        lines.append(f"- A' / A samples/s: {best_hf['samples_per_s'] / by['A']['samples_per_s']:.2f}x.")
    for kind in FULL_B:
        if kind in by:
            share = by[kind]["gflops"] / peak
            lines.append(f"- {kind} sustains {share:.1%} of the bf16 matmul peak (target >= 40%: "
                         f"{'met' if share >= TARGETS['peak_share'] else 'NOT met'}).")
    if infer:
        n_texts = len(facts["inference_texts"])
        lines += ["", f"| inference ({n_texts} texts, same weights) | texts/s | label agreement with the pipeline "
                      "| process peak RSS MiB |", "|---|---|---|---|"]
        for name, item in infer.items():
            lines.append(f"| {name} | {item['texts_per_s']:.1f} | {item['agreement']:.2%} | "
                         f"{item['rss_mib'] or 0:.0f} |")
        best_pipe = max(v["texts_per_s"] for k, v in infer.items() if k.startswith("pipeline"))
        for name in ("lastpool fp32", "lastpool bf16"):
            ratio = infer[name]["texts_per_s"] / best_pipe
            lines.append(f"- {name} / fastest pipeline: **{ratio:.2f}x** (target >= 2.0x: "
                         f"{'met' if ratio >= TARGETS['inference_speedup'] else 'NOT met'}).")
    for r in runs:
        if not r["ok"]:
            lines.append(f"- {r['kind']} failed: `{r['error'].strip().splitlines()[-1][:300]}`")
    lines.append(MARK_END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="stop every training run early (smoke test)")
    parser.add_argument("--runs", default="A',B full,B full compiled,A,B lora,B lora compiled",
                        help=f"which training runs, in this order (of {', '.join(KINDS)})")
    parser.add_argument("--rounds", type=int, default=2, help="inference rounds per side")
    parser.add_argument("--texts", type=int, default=2000, help="texts to classify in the inference comparison")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    args.model, args.data = args.model.resolve(), args.data.resolve()
    command = command_line("vs_transformers.py")
    kinds = [k.strip() for k in args.runs.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}: choose from {', '.join(KINDS)}")
    if "A'" not in kinds:
        parser.error("the A' run is needed: its weights are used for the inference comparison")
    env = {**os.environ}
    peaks = [matmul_peak()]
    facts = data_facts(args.model, args.data, args.seed, args.texts)
    runs: list[dict] = []
    infer = None

    def publish(done: bool) -> str:
        block = render(args, command, facts, peaks, runs, infer, done)
        if not args.no_write:
            write_section(block, MARK_BEGIN, MARK_END)
        return block

    with tempfile.TemporaryDirectory(prefix="lastpool-vs-") as tmp:
        work = Path(tmp)
        for kind in kinds:
            result = train_run(kind, args, env, work, facts)
            runs.append(result)
            print(json.dumps({k: v for k, v in result.items() if k not in ("cmd", "error")}), flush=True)
            if not result["ok"]:
                print(result["error"], file=sys.stderr)
            subprocess.run(["rm", "-rf", str(work / f"run-{kind}")], check=False)
            publish(False)
        peaks.append(matmul_peak())
        if any(r["kind"] == "A'" and r["ok"] for r in runs):
            infer = inference(work, env, facts, args.rounds)
    print(publish(True))


if __name__ == "__main__":
    main()
