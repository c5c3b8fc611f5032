"""Score a file of texts into a file of predictions, in chunks, resumably, over one or many processes.

One pass over the input checks every row first (a bad row stops the run before any scoring, with the
reader's one-line error); a second pass scores it chunk by chunk, so memory holds one chunk, not the
file. Each chunk's predictions become a part (scoring/parts.py); ``--resume`` skips the parts an earlier,
interrupted run finished. Under ``--num-processes``, torchrun or accelerate launch (RANK / WORLD_SIZE
set), process r scores the chunks whose number is r modulo the world size, and the main process joins
all parts, in input order, once every process has finished.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from lastpool.data.streaming import TableStream
from lastpool.errors import ConfigError
from lastpool.progress import ScoringProgress
from lastpool.scoring.parts import Parts
from lastpool.scoring.rows import output_columns, prediction_rows


def score_file(clf: Any, stream: TableStream, output: Path, model_path: Path, resume: bool = False,
               quiet: bool = False) -> int:
    """Write the predictions for every row of ``stream`` to ``output``; returns the number of rows."""
    rank, world = _shard()
    parts = Parts(output)
    rows, chunks, pairs = _check_input(stream)
    clash = [c for c in stream.keep_cols if c in output_columns(clf, pairs)]
    if clash:
        raise ConfigError(f"--keep-cols {', '.join(clash)}: the predictions have a column of that name")
    manifest = {"input": _fingerprint(stream.path), "model": _fingerprint(model_path),
                "chunk_rows": stream.chunk_rows, "keep_cols": stream.keep_cols, "layout": asdict(stream.layout),
                "format": parts.format}
    _on_main(rank, world, lambda: parts.start(manifest, resume))
    done = parts.done()
    scored = 0  # by this process in this run (the bar's rate counts every process: they go at one pace)
    with ScoringProgress(quiet or rank != 0) as bar:
        for chunk in stream:
            if chunk.index % world == rank and chunk.index not in done:
                parts.write(chunk.index, prediction_rows(clf, chunk.table.texts, chunk.table.pairs, chunk.kept))
                scored += len(chunk.table)
            bar.update(chunk.first_row + len(chunk.table), rows, scored * world)
    _on_main(rank, world, lambda: parts.merge(chunks))
    return rows


def _check_input(stream: TableStream) -> tuple[int, int, bool]:
    """Read every chunk once without scoring: the rows, the chunks and whether the texts come in pairs."""
    rows = chunks = 0
    pairs = False
    for chunk in stream:
        rows += len(chunk.table)
        chunks += 1
        pairs = chunk.table.pairs is not None
    return rows, chunks, pairs


def _shard() -> tuple[int, int]:
    """This process's rank and the number of processes (1 outside a launcher)."""
    from lastpool.distributed import under_launcher

    if not under_launcher():
        return 0, 1
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def _on_main(rank: int, world: int, step: Any) -> None:
    """Run ``step`` in the main process while the others wait; a user error there stops every process
    (the main one reports it)."""
    if world == 1:
        step()
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo carries only these few messages; a long input's scoring between them may take hours
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    dist.barrier()
    message: list[str | None] = [None]
    if rank == 0:
        try:
            step()
        except ConfigError as exc:
            message[0] = str(exc)
    dist.broadcast_object_list(message, src=0)
    if message[0] is not None:
        raise ConfigError(message[0])


def _fingerprint(path: Path) -> dict[str, Any]:
    """What identifies an input or a model for ``--resume``: its path and each file's size and mtime."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {"path": str(path.resolve()),
            "files": [[str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns]
                      for p in files]}
