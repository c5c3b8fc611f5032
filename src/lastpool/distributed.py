"""``--num-processes N``: start N training processes on this machine and wait for them.

Each process is an ordinary ``lastpool`` invocation with the standard torch.distributed environment
(RANK, WORLD_SIZE, MASTER_ADDR, ...), the same one ``torchrun`` or ``accelerate launch`` sets, so
Accelerate wraps the model in DistributedDataParallel (gloo on CPU, NCCL on GPUs) exactly as it does
under those launchers. The CPU cores are shared out between the processes. If one process fails, the
others are stopped and its exit code is returned (the main process reports errors; the others stay
quiet so a bad flag is reported once).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def under_launcher() -> bool:
    """True inside a process started by ``--num-processes``, torchrun or accelerate launch."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def process_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launch_processes(n: int, argv: list[str]) -> int:
    """Run ``python -m lastpool ARGV`` in ``n`` processes as one distributed job; returns the exit code."""
    threads = max(1, (os.cpu_count() or 1) // n)
    base = {**os.environ, "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-m", "lastpool", *argv],
                              env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)})
             for rank in range(n)]
    def forward(signum: int, _frame: object) -> None:  # Ctrl-C / SIGTERM reach every process
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed: int | None = None
        while any(proc.poll() is None for proc in procs):
            bad = [code for code in (proc.poll() for proc in procs) if code not in (None, 0)]
            if bad and failed is None:
                failed = bad[0]
                # The others either fail the same way at once or wait for the lost process in a
                # collective operation: give them a moment to report, then stop them.
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline and any(proc.poll() is None for proc in procs):
                    time.sleep(0.05)
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
            time.sleep(0.05)
        codes: list[int] = [proc.wait() for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for code in codes:  # the main process's code first
        if code != 0:
            return code if code > 0 else 128 - code  # killed by signal S: 128 + S, as a shell reports it
    return 0


def finish() -> None:
    """End this process's part in a distributed job (a no-op outside one). All processes wait for each
    other first: one tearing down its connections while another still uses them aborts that one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
