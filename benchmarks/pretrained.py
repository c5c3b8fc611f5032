"""Fine-tune a pretrained decoder (SmolLM2-135M-Instruct, GGUF) on Financial PhraseBank: probe, LoRA, full.

Each training is a separate ``lastpool train`` process wrapped in ``/usr/bin/time -v``, so every run has
its own wall time (model load and, for the probe, feature extraction included) and its own peak RSS.
Validation: lastpool's 10% stratified split for each seed; the reported accuracy / macro-F1 are those of
the kept model (best validation macro-F1 epoch, what lastpool saves), read from the run's metrics.json.

One ``$LASTPOOL_CACHE`` (a temporary folder unless ``--cache``) is shared by all runs, and one warm-up
load dequantizes the GGUF into it first, so no mode is charged for that. ``$LASTPOOL_CACHE/features``
is deleted before every probe run ("cold": features are extracted again); one extra probe run with the
features left in place is reported separately ("cached features"). Each run directory is deleted after
it is read (a full fine-tune's model folder is 540 MB).

The Markdown table is written into docs/BENCHMARKS.md between the ``pretrained`` markers after every
run (marked "partial" until the end), atomically, and printed at the end.

    python benchmarks/pretrained.py [--seeds 3] [--modes probe,lora,full] [--seeds-full 1] [--epochs-full 1]
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
from pathlib import Path

from _results import command_line, machine_info, write_section  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "financial_phrasebank" / "sentences_allagree.txt"
MARK_BEGIN, MARK_END = "<!-- pretrained:begin -->", "<!-- pretrained:end -->"
TIME = "/usr/bin/time"

MODES = ("probe", "lora", "full", "trainer")
PROTOCOL = {"seeds": 3, "epochs": {"probe": 40, "lora": 2, "full": 2, "trainer": 2}}
PROMPT = "{text}\nSentiment:"
COMMON = ["--max-length", "64", "--batch-size", "16", "--precision", "auto", "--prompt", PROMPT, "--layer", "22"]
FULL_LR = "5e-5"
MODE_FLAGS = {
    "probe": ["--lr", "3e-3", "--weight-decay", "0", "--label-smoothing", "0", "--token-dropout", "0"],
    "lora": ["--lr", "1e-3", "--lora-r", "16", "--lora-alpha", "32", "--warmup", "0.1", "--label-smoothing", "0",
             "--token-dropout", "0", "--weight-decay", "0"],
    "full": ["--lr", FULL_LR, "--warmup", "0.1", "--label-smoothing", "0", "--token-dropout", "0",
             "--weight-decay", "0.01"],
    # transformers AutoModelForSequenceClassification + Trainer (bf16, group_by_length), all 30 blocks, the
    # same prompted texts, max length, batch size, epochs and learning rate as the full fine-tune
    "trainer": ["--max-length", "64", "--batch-size", "16", "--lr", FULL_LR, "--prompt", PROMPT, "--best"],
}
HF_TRAINER = Path(__file__).resolve().with_name("hf_trainer.py")
TARGETS = {"best_acc": 0.97, "probe_acc": 0.90, "probe_seconds": 120.0}


def lastpool_exe() -> list[str]:
    exe = Path(sys.executable).with_name("lastpool")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lastpool"]


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float, float | None]:
    """Run ``cmd``; return (exit code, wall seconds, peak RSS MiB or None)."""
    stats = log.with_suffix(".time")
    use_time = Path(TIME).exists()
    full = [TIME, "-v", "-o", str(stats), *cmd] if use_time else cmd
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(full, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    rss = None
    if use_time and stats.exists():
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stats.read_text())
        rss = int(found.group(1)) / 1024 if found else None
    return code, seconds, rss


def run_one(args: argparse.Namespace, mode: str, seed: int, epochs: int, env: dict[str, str], work: Path,
            cold: bool) -> dict:
    if mode == "probe" and cold:
        shutil.rmtree(Path(env["LASTPOOL_CACHE"]) / "features", ignore_errors=True)
    tag = f"{mode}-s{seed}" + ("" if cold else "-cached")
    out = work / f"run-{tag}"
    if mode == "trainer":
        cmd = [sys.executable, str(HF_TRAINER), "--model", str(args.model), "--data", str(args.data),
               "--seed", str(seed), "--epochs", str(epochs), *MODE_FLAGS[mode]]
    else:
        cmd = [*lastpool_exe(), "train", "--model", str(args.model), "--mode", mode, "--data", str(args.data),
               "--seed", str(seed), "--out", str(out), "--quiet", "--epochs", str(epochs), *COMMON, *MODE_FLAGS[mode]]
    max_steps = getattr(args, f"max_steps_{mode}") or args.max_steps
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    log = work / f"{tag}.log"
    code, seconds, rss = timed(cmd, env, log)
    if code == 0 and mode == "trainer":
        result = json.loads(log.read_text().strip().splitlines()[-1])
        steps = result["optimizer_steps"]
        return {"mode": mode, "seed": seed, "epochs": epochs, "cold": cold, "ok": True, "seconds": seconds,
                "rss_mib": rss, "accuracy": result["accuracy"], "macro_f1": result["macro_f1"],
                "final_accuracy": result["final_accuracy"], "best_epoch": round(result["best_epoch"] or 0),
                "epochs_run": epochs, "optimizer_steps": steps, "train_seconds": result["train_runtime"],
                "sec_per_step": result["train_runtime"] / steps if steps else None, "cmd": shlex.join(cmd)}
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        shutil.rmtree(out, ignore_errors=True)
        return {"mode": mode, "seed": seed, "epochs": epochs, "cold": cold, "ok": False, "code": code,
                "seconds": seconds, "rss_mib": rss, "error": tail, "cmd": shlex.join(cmd)}
    metrics = json.loads((out / "metrics.json").read_text())
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]
    shutil.rmtree(out, ignore_errors=True)
    steps = metrics.get("optimizer_steps") or 0
    train_s = metrics.get("train_seconds") or 0.0
    return {
        "mode": mode, "seed": seed, "epochs": epochs, "cold": cold, "ok": True, "seconds": seconds, "rss_mib": rss,
        "accuracy": metrics["val"]["accuracy"], "macro_f1": metrics["val"]["macro_f1"],
        "final_accuracy": history[-1]["val_accuracy"] if history else None,
        "best_epoch": metrics.get("best_epoch"), "epochs_run": metrics.get("epochs_run"),
        "optimizer_steps": steps, "train_seconds": train_s,
        "sec_per_step": train_s / steps if steps else None, "cmd": shlex.join(cmd),
    }


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def render(args: argparse.Namespace, plan: list[tuple[str, int, int]], runs: list[dict], warm: dict | None,
           done: bool, command: str, n_rows: int | None) -> str:
    rows = []
    groups: list[tuple[str, str, bool]] = [(m, m, True) for m in args.modes]
    if any(not r["cold"] for r in runs):
        groups.append(("probe", "probe (cached features)", False))
    best_acc = {}
    for mode, label, cold in groups:
        sel = [r for r in runs if r["mode"] == mode and r["cold"] == cold]
        ok = [r for r in sel if r["ok"]]
        if not sel:
            continue
        failed = len(sel) - len(ok)
        accs = [r["accuracy"] for r in ok]
        if accs and cold:  # the cached-features probe repeats a cold probe run
            best_acc[label] = statistics.mean(accs)
        sps = [r["sec_per_step"] for r in ok if r["sec_per_step"]]
        rss = [r["rss_mib"] for r in sel if r["rss_mib"] is not None]
        rows.append([
            label,
            ", ".join(str(r["seed"]) for r in ok) + (f" ({failed} failed)" if failed else ""),
            str(sel[0]["epochs"]),
            mean_std(accs),
            mean_std([r["macro_f1"] for r in ok]),
            f"{statistics.mean(r['seconds'] for r in sel):.1f}",
            f"{statistics.mean(sps):.3g}" if sps else "-",
            f"{max(rss):.0f}" if rss else "-",
        ])
    header = ["mode", "seeds", "epochs", "val accuracy (mean ± std)", "val macro-F1 (mean ± std)",
              "wall s / run (mean)", "train s / optimizer step", "peak RSS MiB (max)"]
    deviations = []
    for mode, seeds, epochs in plan:
        cut = []
        if seeds < PROTOCOL["seeds"]:
            cut.append(f"{seeds} seed{'s' if seeds != 1 else ''} instead of {PROTOCOL['seeds']}")
        if epochs != PROTOCOL["epochs"][mode]:
            cut.append(f"{epochs} epoch{'s' if epochs != 1 else ''} instead of {PROTOCOL['epochs'][mode]}")
        if cut:
            deviations.append(f"{mode}: " + ", ".join(cut))
    for mode in args.modes:
        max_steps = getattr(args, f"max_steps_{mode}") or args.max_steps
        if max_steps:
            deviations.append(f"{mode}: stopped after --max-steps {max_steps} optimizer steps")
    missing = [m for m in MODES if m not in args.modes]
    if missing:
        deviations.append("not run: " + ", ".join(missing))
    if n_rows is not None:
        deviations.append(f"data limited to the first {n_rows} rows")
    lines = [
        MARK_BEGIN,
        "## Pretrained decoder: probe, LoRA, full fine-tune (`benchmarks/pretrained.py`)",
        "",
        ("" if done else "**PARTIAL: the benchmark was still running (or was stopped) when this was written.** ")
        + f"Command: `{command}`.",
        "",
        f"Model `{args.model.name}` (dequantized to float32), data `{args.data.name}`, 10% stratified validation "
        "(lastpool's split, per seed). Flags for every run: `" + shown(COMMON) + "`; per mode: "
        + "; ".join(f"{m} `" + shown(MODE_FLAGS[m]) + "`" for m in MODES) + ". "
        "Row 'trainer' is transformers' `AutoModelForSequenceClassification` + `Trainer` (`benchmarks/hf_trainer.py`: "
        "bf16, group_by_length, all 30 blocks, the same split, prompted texts, max length, batch, epochs and "
        "learning rate as `full`, Trainer's default linear schedule and AdamW otherwise). "
        "Each run is its own process (`lastpool train`, or the Trainer script) under `/usr/bin/time -v`: "
        "wall time includes interpreter "
        "start, model load (from the cached dequantized safetensors) and, for the probe, feature extraction "
        "(features cache cleared before each cold probe run); peak RSS is that process's maximum resident set. "
        "Accuracy / macro-F1 are the kept model's (best validation macro-F1 epoch). "
        "'train s / optimizer step' is lastpool's train_seconds / optimizer_steps (probe: head steps only; "
        "trainer: Trainer's train_runtime, which includes its per-epoch evaluation, / steps).",
        "",
        f"Machine: {machine_info()}. Shared machine: other processes ran at times, so times are indicative.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    reused_modes = sorted({r["mode"] for r in runs if r.get("reused")})
    if reused_modes:
        lines.append(f"- Rows {', '.join(reused_modes)}: runs reported from an earlier invocation of this script "
                     f"(`{args.reuse.name}`, command `{args.reused_command or 'not recorded'}`), not rerun.")
    if warm is not None:
        lines.append(f"- One-off GGUF warm-up load (dequantize + write safetensors cache, not charged to any mode): "
                     f"{warm['seconds']:.1f} s, peak RSS {warm['rss_mib'] or 0:.0f} MiB.")
    lines.append("- Cut short versus the protocol (3 seeds; probe 40, LoRA 2, full 2, Trainer 2 epochs): "
                 + ("; ".join(deviations) if deviations else "nothing") + ".")
    if best_acc:
        best = max(best_acc, key=best_acc.get)
        verdict = "met" if best_acc[best] >= TARGETS["best_acc"] else "NOT met"
        lines.append(f"- Best mode by mean val accuracy: {best} {best_acc[best]:.4f} "
                     f"(target >= {TARGETS['best_acc']}: {verdict}).")
    probe = [r for r in runs if r["mode"] == "probe" and r["cold"] and r["ok"]]
    if probe:
        acc = statistics.mean(r["accuracy"] for r in probe)
        sec = statistics.mean(r["seconds"] for r in probe)
        ok = acc >= TARGETS["probe_acc"] and sec <= TARGETS["probe_seconds"]
        lines.append(f"- Probe (cold, feature extraction included): mean accuracy {acc:.4f}, mean wall {sec:.1f} s "
                     f"(target accuracy >= {TARGETS['probe_acc']} within {TARGETS['probe_seconds']:.0f} s: "
                     f"{'met' if ok else 'NOT met'}).")
    per_run = ", ".join(
        f"{r['mode']}{'' if r['cold'] else '(cached)'} s{r['seed']}: "
        + (f"acc {r['accuracy']:.4f}, {r['seconds']:.0f} s, best epoch {r['best_epoch']}/{r['epochs_run']}"
           if r["ok"] else f"FAILED (exit {r['code']})")
        for r in runs)
    if per_run:
        lines.append(f"- Per run: {per_run}.")
    for r in runs:
        if not r["ok"]:
            last = [ln for ln in r["error"].strip().splitlines() if ln.strip()][-1:] or ["?"]
            lines.append(f"- Failure, {r['mode']} seed {r['seed']}: `{last[0][:300]}`")
    lines.append(MARK_END)
    return "\n".join(lines)


def shown(flags: list[str]) -> str:
    """Flags as one bash line (an argument with a newline, like the prompt, as $'...\\n...')."""
    def quote(arg: str) -> str:
        if "\n" not in arg:
            return shlex.quote(arg)
        return "$'" + arg.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    return " ".join(quote(arg) for arg in flags)


def write_block(block: str) -> None:
    write_section(block, MARK_BEGIN, MARK_END)


def reused_runs(args: argparse.Namespace) -> list[dict]:
    """Runs of ``--reuse-modes`` read back from an earlier run's stdout (one JSON object per run)."""
    modes = [m.strip() for m in args.reuse_modes.split(",") if m.strip()]
    if not modes:
        return []
    if args.reuse is None:
        raise SystemExit("--reuse-modes needs --reuse FILE")
    overlap = set(modes) & set(args.modes)
    if overlap:
        raise SystemExit(f"modes both run and reused: {', '.join(sorted(overlap))}")
    runs = []
    for line in args.reuse.read_text().splitlines():
        if line.startswith("{"):
            run = json.loads(line)
            if "command" in run:
                args.reused_command = run["command"]
                continue
            if run.get("mode") in modes:
                run.setdefault("cmd", "")
                run["reused"] = True
                runs.append(run)
    missing = set(modes) - {r["mode"] for r in runs}
    if missing:
        raise SystemExit(f"{args.reuse} holds no runs of {', '.join(sorted(missing))}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--modes", default="probe,lora,full,trainer",
                        help="comma separated subset of probe,lora,full,trainer (trainer: transformers Trainer)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 for every mode [3]")
    for mode in MODES:
        parser.add_argument(f"--seeds-{mode}", type=int, default=None, help=f"override --seeds for {mode}")
        parser.add_argument(f"--epochs-{mode}", type=int, default=PROTOCOL["epochs"][mode],
                            help=f"[{PROTOCOL['epochs'][mode]}]")
    parser.add_argument("--max-steps", type=int, default=None, help="pass --max-steps to every run (smoke tests)")
    for mode in MODES:
        parser.add_argument(f"--max-steps-{mode}", type=int, default=None, help=f"--max-steps for {mode} runs only")
    parser.add_argument("--no-cached-probe", action="store_true", help="skip the extra cached-features probe run")
    parser.add_argument("--cache", type=Path, default=None, help="LASTPOOL_CACHE to use (default: a temp dir)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy each run's log to this folder")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="stdout of an earlier run of this script: its runs of --reuse-modes are reported "
                             "again instead of being rerun (e.g. to redo the probe timing on an idle machine)")
    parser.add_argument("--reuse-modes", default="", help="comma separated modes to take from --reuse")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        parser.error(f"unknown mode(s): {', '.join(bad)}")
    args.model, args.data = args.model.resolve(), args.data.resolve()
    command = command_line("pretrained.py")
    plan = [(m, getattr(args, f"seeds_{m}") or args.seeds, getattr(args, f"epochs_{m}")) for m in args.modes]
    args.reused_command = None
    reused = reused_runs(args)
    print(json.dumps({"command": command}), flush=True)
    for mode in dict.fromkeys(r["mode"] for r in reused):
        mine = [r for r in reused if r["mode"] == mode and r["cold"]]
        plan.append((mode, len(mine), mine[0]["epochs"] if mine else 0))
        args.modes.append(mode)

    own_cache = args.cache is None
    cache = Path(tempfile.mkdtemp(prefix="lastpool-bench-cache-")) if own_cache else args.cache.resolve()
    env = {**os.environ, "LASTPOOL_CACHE": str(cache)}
    runs: list[dict] = list(reused)
    warm = None

    def publish(done: bool) -> str:
        block = render(args, plan, runs, warm, done, command, None)
        if not args.no_write:
            write_block(block)
        return block

    try:
        with tempfile.TemporaryDirectory(prefix="lastpool-bench-") as tmp:
            work = Path(tmp)
            code = ("from lastpool.models.backbones import load_backbone; import sys; "
                    "load_backbone(sys.argv[1])")
            rc, seconds, rss = timed([sys.executable, "-c", code, str(args.model)], env, work / "warmup.log")
            if rc != 0:
                raise SystemExit("warm-up load failed:\n" + (work / "warmup.log").read_text()[-3000:])
            warm = {"seconds": seconds, "rss_mib": rss}
            print(f"warm-up load: {seconds:.1f} s, peak RSS {rss or 0:.0f} MiB", flush=True)
            for mode, n_seeds, epochs in plan:
                if any(r["mode"] == mode for r in reused):
                    continue
                for seed in range(n_seeds):
                    r = run_one(args, mode, seed, epochs, env, work, cold=True)
                    runs.append(r)
                    print(json.dumps({k: v for k, v in r.items() if k not in ("error", "cmd")}), flush=True)
                    if not r["ok"]:
                        print(r["error"], file=sys.stderr, flush=True)
                    if args.keep_logs:
                        args.keep_logs.mkdir(parents=True, exist_ok=True)
                        shutil.copy(work / f"{mode}-s{seed}.log", args.keep_logs / f"{mode}-s{seed}.log")
                    publish(False)
                if mode == "probe" and n_seeds and not args.no_cached_probe:
                    # one feature entry serves every seed; it was extracted by the last cold run
                    r = run_one(args, mode, n_seeds - 1, epochs, env, work, cold=False)
                    runs.append(r)
                    print(json.dumps({k: v for k, v in r.items() if k not in ("error", "cmd")}), flush=True)
                    publish(False)
    finally:
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)
    print(publish(True))


if __name__ == "__main__":
    main()
