"""HTTP serving throughput and latency of ``lastpool serve``, with micro-batching on and off.

The server is a separate ``python -m lastpool serve`` process on a loopback port; the clients are
``httpx.AsyncClient`` tasks in this process, each with its own keep-alive connection, working through
one shared list of requests (1 to 3 sentences each, drawn with a fixed seed from the data file). Every
row of the table sends the same requests in the same order, at 1, 4 and 16 concurrent clients; a few
warm-up requests precede each server's measurements. Any non-200 answer is counted as an error.

Without ``--model`` a small from-scratch model (the default config) is trained first on Financial
PhraseBank (``--epochs``). The Markdown section is written into docs/BENCHMARKS.md between the
``serve_load`` markers (``--no-write``: print only).

    python benchmarks/serve_load.py [--model DIR] [--requests 2000] [--clients 1,4,16] [--server-threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _results import command_line, machine_info, publish  # benchmarks/ is on sys.path when run as a script

from lastpool.data.tables import read_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "financial_phrasebank" / "sentences_allagree.txt"
MARK_BEGIN, MARK_END = "<!-- serve_load:begin -->", "<!-- serve_load:end -->"
WARMUP = 20


def server_machine_info(server_threads: int | None) -> str:
    threads = f"{server_threads} torch thread(s) in the server" if server_threads else "torch default threads"
    return machine_info(threads)


def train_model(data: Path, epochs: int, work: Path) -> Path:
    """A small from-scratch model (lastpool's default config) trained on ``data``."""
    run = work / "run"
    cmd = [sys.executable, "-m", "lastpool", "train", "--data", str(data), "--epochs", str(epochs), "--seed", "0",
           "--out", str(run), "--quiet"]
    print(f"training: {shlex.join(cmd)}", file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return run / "model"


class Server:
    """``python -m lastpool serve`` in a subprocess on a free loopback port; stopped with SIGTERM."""

    def __init__(self, model: Path, micro_batching: bool, threads: int | None, extra: list[str]) -> None:
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.cmd = [sys.executable, "-m", "lastpool", "serve", str(model), "--port", "0", "--log-level", "warning",
                    *([] if micro_batching else ["--no-micro-batching"]), *extra]
        self.proc = subprocess.Popen(self.cmd, env=env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if not line.startswith("serving "):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split(" at ", 1)[1].split()[0]
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr or []), daemon=True).start()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


async def run_load(url: str, requests: list[list[str]], clients: int) -> dict[str, Any]:
    """Send ``requests`` in order with ``clients`` concurrent workers; throughput and latency figures."""
    latencies: list[float] = []
    errors = 0
    texts = 0
    position = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal errors, texts, position
        while position < len(requests):
            batch = requests[position]
            position += 1
            start = time.perf_counter()
            try:
                response = await http.post("/v1/classify", json={"texts": batch})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            if ok:
                texts += len(batch)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        for batch in requests[:WARMUP]:
            await http.post("/v1/classify", json={"texts": batch})
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(requests), "wall": wall, "rps": len(requests) / wall,
            "tps": texts / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "errors": errors}


def render(rows: list[dict[str, Any]], args: argparse.Namespace, model_desc: str, n_texts: int, command: str) -> str:
    lines = [
        MARK_BEGIN,
        "## HTTP serving (`benchmarks/serve_load.py`)",
        "",
        f"Command: `{command}`. Machine: {server_machine_info(args.server_threads)}.",
        f"Model: {model_desc}. Load: {args.requests} requests of 1-3 sentences "
        f"from `{args.data.name}` ({n_texts / args.requests:.2f} texts per request on average), the same requests "
        "in the same order in every row, after "
        f"{WARMUP} warm-up requests per server. Server: `lastpool serve` (uvicorn, one process, batch wait "
        f"{args.batch_wait_ms:g} ms, token budget {args.max_batch_tokens}); clients: `httpx.AsyncClient` tasks "
        "in another process on the same machine (their CPU time competes with the server's), one keep-alive "
        "connection each. Latency is per request, as the client sees it.",
        "",
        "| micro-batching | clients | requests/s | texts/s | p50 latency (ms) | p99 latency (ms) | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {'on' if r['micro_batching'] else 'off'} | {r['clients']} | {r['rps']:.1f} | "
                     f"{r['tps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")
    lines.append("")
    by_key = {(r["micro_batching"], r["clients"]): r for r in rows}
    for clients in args.clients:
        on, off = by_key.get((True, clients)), by_key.get((False, clients))
        if on and off:
            lines.append(f"- {clients} client(s): micro-batching on / off = **{on['rps'] / off['rps']:.2f}x** "
                         "requests/s.")
    lines.append(MARK_END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model folder or run directory (default: train one)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="sentences to send (and to train on)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs when training the model")
    parser.add_argument("--requests", type=int, default=2000, help="requests per row")
    parser.add_argument("--clients", default="1,4,16", help="concurrent client counts, comma separated")
    parser.add_argument("--server-threads", type=int, default=1,
                        help="OMP_NUM_THREADS for the server (0: torch's default); the clients use a core too")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    command = command_line("serve_load.py")
    if not args.data.is_file():
        parser.error(f"{args.data}: no such file (give --data)")

    sentences = read_table(str(args.data), require_labels=False).texts
    rng = random.Random(args.seed)
    requests = [rng.sample(sentences, rng.randint(1, 3)) for _ in range(args.requests)]
    n_texts = sum(len(r) for r in requests)

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        model = args.model or train_model(args.data, args.epochs, Path(tmp))
        from lastpool import Classifier

        spec = Classifier.load(model).spec
        assert spec is not None
        backbone = spec.backbone
        arch = (f"from-scratch decoder d_model {backbone.config.d_model}, {backbone.config.n_layers} layers"
                if backbone.type == "scratch" else f"{backbone.source}")
        trained = "" if args.model else f", trained {args.epochs} epochs on `{args.data.name}`"
        model_desc = f"{arch}, max_length {spec.max_length}, {spec.pooling} pooling{trained}"
        extra = ["--batch-wait-ms", str(args.batch_wait_ms), "--max-batch-tokens", str(args.max_batch_tokens)]
        rows = []
        for micro in (True, False):
            server = Server(model, micro, args.server_threads or None, extra)
            try:
                for clients in args.clients:
                    row = asyncio.run(run_load(server.url, requests, clients))
                    row["micro_batching"] = micro
                    rows.append(row)
                    print(f"micro-batching {'on ' if micro else 'off'} clients {clients:>2}: {row['rps']:.1f} req/s, "
                          f"{row['tps']:.1f} texts/s, p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms, "
                          f"{row['errors']} errors", file=sys.stderr)
            finally:
                code = server.stop()
            if code != 0:
                print(f"server exited {code}:\n{''.join(server.log)}", file=sys.stderr)
                return 1

    block = render(rows, args, model_desc, n_texts, command)
    publish(block, MARK_BEGIN, MARK_END, write=not args.no_write)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
