"""Shared by the benchmark scripts: replace one marked section of docs/BENCHMARKS.md atomically."""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
from pathlib import Path

from lastpool.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def command_line(script: str) -> str:
    """How this benchmark was invoked, for the results: ``python benchmarks/SCRIPT [args]``."""
    return f"python benchmarks/{script}" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")


def publish(block: str, begin: str, end: str, write: bool = True) -> None:
    """Print a benchmark's results section and (unless ``write`` is off) put it into docs/BENCHMARKS.md."""
    print(block)
    if write:
        write_section(block, begin, end)


def write_section(block: str, begin: str, end: str, results: Path = RESULTS) -> None:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in place of the old section."""
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        start, stop = text.index(begin), text.index(end) + len(end)
        text = text[:start] + block + text[stop:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(results, text)


def machine_info(threads: str | None = None) -> str:
    """CPU model, cores, RAM, torch version and thread count, Python and kernel: the line every result names."""
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        for line in lines:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
        # bf16 speed depends on these (without them bf16 matmuls are emulated), so every result names them
        isa = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX")) if flag in flags]
        cpu += f" ({', '.join(isa) if isa else 'no AVX512-BF16 or AMX' + (', AVX2' if 'avx2' in flags else '')})"
    except OSError:
        pass
    mem = ""
    try:
        found = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        if found:
            mem = f", {int(found.group(1)) / 2**20:.0f} GiB RAM"
    except OSError:
        pass
    try:
        import torch

        torch_v = f"torch {torch.__version__} ({threads or f'{torch.get_num_threads()} threads'})"
    except ImportError:
        torch_v = "torch ?"
    return (f"{cpu}, {os.cpu_count()} CPUs{mem}, no GPU, {torch_v}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")
