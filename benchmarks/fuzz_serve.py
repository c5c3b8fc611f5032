"""The server under generated and sustained load: a long Schemathesis run and a soak with RSS sampled.

The server is ``python -m lastpool serve`` in its own process (a from-scratch model trained on Financial
PhraseBank unless ``--model`` is given), on a loopback port, with an API key.

1. **Schemathesis**: positive and negative requests drawn from the served OpenAPI schema for every
   operation (``--examples`` per operation and mode), each checked (no 5xx, responses match the schema,
   admitted requests accepted, violating ones refused); the number of requests sent and every failure
   found are reported.
2. **Soak**: ``--requests`` ``POST /v1/classify`` requests (1 to 3 sentences each) from ``--clients``
   concurrent httpx clients, with the server's resident memory read from /proc every second: its value
   after warm-up, at the end and at its peak, and the growth over the soak's second half.

    python benchmarks/fuzz_serve.py [--examples 300] [--requests 100000] [--clients 16] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _results import command_line, machine_info, publish  # benchmarks/ is on sys.path when run as a script
from serve_load import DEFAULT_DATA, Server, train_model

from lastpool.data.tables import read_table

MARK_BEGIN, MARK_END = "<!-- fuzz_serve:begin -->", "<!-- fuzz_serve:end -->"
KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def fuzz(url: str, examples: int) -> dict[str, Any]:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    sent = 0
    failures: list[str] = []
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        for result in schema.get_all_operations():
            operation = result.ok()
            if mode == schemathesis.GenerationMode.NEGATIVE and operation.method.upper() != "POST":
                continue

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: Any) -> None:
                nonlocal sent
                sent += 1
                case.call_and_validate(headers=AUTH)

            try:
                check()
            except Exception as exc:  # noqa: BLE001 - a failure found is a result to report
                failures.append(f"{mode.value} {operation.method.upper()} {operation.path}: "
                                f"{str(exc).strip().splitlines()[0][:200]}")
    return {"requests": sent, "failures": failures}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(url: str, requests: list[list[str]], clients: int, pid: int) -> dict[str, Any]:
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), rss_mib(pid)))
            done.wait(1.0)

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    position = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal position
        while position < len(requests):
            batch = requests[position]
            position += 1
            start = time.perf_counter()
            try:
                code = (await http.post("/v1/classify", json={"texts": batch})).status_code
            except httpx.HTTPError:
                code = -1
            latencies.append(time.perf_counter() - start)
            statuses[code] = statuses.get(code, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers=AUTH) as http:
        for batch in requests[:200]:  # warm-up: first-call allocations are not growth
            await http.post("/v1/classify", json={"texts": batch})
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(clients)))
        wall = time.perf_counter() - started
        done.set()
        thread.join()
    values = [v for _, v in samples]
    half = values[len(values) // 2:]
    ms = np.array(latencies) * 1000
    return {"requests": len(requests), "clients": clients, "wall": wall, "rps": len(requests) / wall,
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "statuses": statuses,
            "rss_start": values[0], "rss_end": values[-1], "rss_peak": max(values),
            "rss_second_half_growth": half[-1] - half[0], "samples": len(values)}


def render(args: argparse.Namespace, fuzzed: dict[str, Any], soaked: dict[str, Any], model: str) -> str:
    ok = soaked["statuses"].get(200, 0)
    lines = [MARK_BEGIN, "## The server fuzzed and soaked (issue 18, `benchmarks/fuzz_serve.py`)", "",
             f"`{command_line('fuzz_serve.py')}` on {machine_info()}; server: `lastpool serve {model}` in its own "
             "process with an API key; clients in this process.", "",
             f"- Schemathesis: {fuzzed['requests']:,} generated requests (positive and negative, every operation), "
             f"{len(fuzzed['failures'])} failures" + ("." if not fuzzed["failures"] else ":"),
             *[f"  - `{f}`" for f in fuzzed["failures"]],
             f"- Soak: {soaked['requests']:,} requests from {soaked['clients']} clients in {soaked['wall']:.0f} s "
             f"({soaked['rps']:.0f} requests/s, p50 {soaked['p50']:.1f} ms, p99 {soaked['p99']:.1f} ms); "
             f"{ok:,} answered 200, others: {json.dumps({k: v for k, v in soaked['statuses'].items() if k != 200})}.",
             f"- Server RSS (sampled every second, {soaked['samples']} samples): {soaked['rss_start']:.0f} MiB after "
             f"warm-up, {soaked['rss_end']:.0f} MiB at the end, peak {soaked['rss_peak']:.0f} MiB; growth over the "
             f"second half {soaked['rss_second_half_growth']:+.1f} MiB.", "", MARK_END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--examples", type=int, default=300, help="Schemathesis cases per operation and mode")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the default model")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lastpool-fuzz-serve-"))
    model = Path(args.model) if args.model else train_model(DEFAULT_DATA, args.epochs, work)
    texts = read_table(DEFAULT_DATA).texts
    rng = random.Random(0)
    requests = [rng.sample(texts, rng.randint(1, 3)) for _ in range(args.requests)]
    server = Server(model, micro_batching=True, threads=None, extra=["--api-key", KEY])
    try:
        fuzzed = fuzz(server.url, args.examples)
        print(json.dumps(fuzzed), file=sys.stderr, flush=True)
        soaked = asyncio.run(soak(server.url, requests, args.clients, server.proc.pid))
    finally:
        code = server.stop()
    if code != 0:
        raise SystemExit(f"the server exited with {code}: {''.join(server.log)[-2000:]}")
    publish(render(args, fuzzed, soaked, str(model)), MARK_BEGIN, MARK_END, write=not args.no_write)


if __name__ == "__main__":
    main()
