"""How fast this CPU multiplies bf16 matrices at the shapes of a SmolLM2 training step, against the
2048^3 loop that ``vs_transformers.py`` takes as the peak, on 1 and 2 threads.

Why: it tells whether a training step's matmuls are slow (then shapes, layouts or fusion would help)
or already at the machine's peak (then only fewer FLOPs or less non-matmul work can help). The shapes
are those of a length-bucketed batch of 16 texts (627 real tokens): the forward projections
(tokens x 576 @ 576 x N), the input gradients and the weight gradients (576 x tokens @ tokens x N).

    python benchmarks/matmul_shapes.py [--no-write]
"""

from __future__ import annotations

import argparse
import time

import torch
from _results import command_line, machine_info, publish  # benchmarks/ is on sys.path when run as a script

MARK_BEGIN, MARK_END = "<!-- matmul_shapes:begin -->", "<!-- matmul_shapes:end -->"
TOKENS, HIDDEN, MLP, KV = 627, 576, 1536, 192
SHAPES = {  # (m, k, n) of m x k @ k x n
    "forward q / o projection": (TOKENS, HIDDEN, HIDDEN),
    "forward k / v projection": (TOKENS, HIDDEN, KV),
    "forward MLP gate / up": (TOKENS, HIDDEN, MLP),
    "forward MLP down": (TOKENS, MLP, HIDDEN),
    "input gradient through MLP gate / up": (TOKENS, MLP, HIDDEN),
    "weight gradient of q / o": (HIDDEN, TOKENS, HIDDEN),
    "weight gradient of MLP gate / up": (MLP, TOKENS, HIDDEN),
    "weight gradient of MLP down": (HIDDEN, TOKENS, MLP),
}


def gflops(m: int, k: int, n: int, threads: int, seconds: float = 1.5) -> float:
    """Best-of-3 bf16 GFLOP/s of a repeated m x k @ k x n matmul on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(m, k, dtype=torch.bfloat16)
        b = torch.randn(k, n, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        repeats = max(3, int(seconds * 4e11 / (2 * m * k * n) / 3))
        best = 0.0
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9)
        return best
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    command = command_line("matmul_shapes.py")
    threads = torch.get_num_threads()
    one, peak = gflops(2048, 2048, 2048, 1), gflops(2048, 2048, 2048, threads)
    rows = [f"| 2048^3 loop (the peak `vs_transformers.py` uses) | 2048 x 2048 @ 2048 x 2048 | {peak:.0f} | 100% |"]
    for name, (m, k, n) in SHAPES.items():
        rate = gflops(m, k, n, threads)
        rows.append(f"| {name} | {m} x {k} @ {k} x {n} | {rate:.0f} | {rate / peak:.0%} |")
        print(rows[-1], flush=True)
    block = "\n".join([
        MARK_BEGIN, "## bf16 matmuls at a training step's shapes (`benchmarks/matmul_shapes.py`)", "",
        f"Command: `{command}`. Machine: {machine_info()}.", "",
        f"The 2048^3 loop: {one:.0f} GFLOP/s on 1 thread, {peak:.0f} on {threads} "
        f"({peak / one:.2f}x). Shapes of a SmolLM2-135M step on a batch of 16 texts ({TOKENS} real tokens); "
        "best of 3 timed loops each.", "",
        f"| matmul | shape | GFLOP/s ({threads} threads) | vs the 2048^3 loop |", "|---|---|---|---|", *rows,
        MARK_END])
    publish(block, MARK_BEGIN, MARK_END, write=not args.no_write)


if __name__ == "__main__":
    main()
