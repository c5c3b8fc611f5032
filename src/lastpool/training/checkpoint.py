"""Training checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

A checkpoint is a folder ``step-00000123`` (``step-00000123-epoch`` when saved after an epoch's
evaluation, which sorts after the same step's periodic one) under the run's ``checkpoints/``:

- ``model.safetensors``: the float32 weights now (the master weights under bf16 training);
- ``best.safetensors``: the weights of the best epoch so far (the run keeps them at the end);
- ``tensors.safetensors``: RNG states (torch, per process, and the token-dropout generator), the
  running training-loss sum and the best epoch's validation logits;
- ``optimizer.pt``: the optimizer and scheduler state dicts (plain tensors and numbers, read back with
  ``torch.load(weights_only=True)``, which refuses anything but tensors and containers);
- ``state.json``: where the run stands (epoch, step, history, best epoch, timings) and what it was
  started with (its configuration and a fingerprint of its data), to refuse an incompatible resume.

It is written into a temporary folder and renamed into place, so a kill at any moment leaves either the
previous checkpoint or the new one, never a half-written one; only the newest ``keep`` survive.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lastpool.errors import CheckpointError
from lastpool.fileio import check_writable_dir, nearest_existing

FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8})(-epoch)?$")
FILES = ("model.safetensors", "best.safetensors", "tensors.safetensors", "optimizer.pt", "state.json")


@dataclass
class CheckpointSettings:
    """Where and how often a run saves checkpoints (``every``: optimizer steps; None: epoch ends and
    interruptions only) and how many of the newest survive (no default: ``keep_checkpoints`` in the run's
    config is its one home)."""

    folder: Path
    keep: int
    every: int | None = None


@dataclass
class Checkpoint:
    """A checkpoint read back: the tensors and the run state to continue from."""

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.state["step"])


def data_fingerprint(train_ids: list[list[int]], train_labels: Sequence[Any], val_ids: list[list[int]],
                     val_labels: Sequence[Any]) -> str:
    """A hash of the exact token ids and labels a run trains and validates on."""
    digest = hashlib.sha256()
    for ids, labels in ((train_ids, train_labels), (val_ids, val_labels)):
        digest.update(json.dumps([ids, labels], separators=(",", ":")).encode())
    return digest.hexdigest()


def checkpoint_name(step: int, epoch_end: bool = False) -> str:
    return f"step-{step:08d}" + ("-epoch" if epoch_end else "")


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (half-written temporary folders are not listed)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(settings: CheckpointSettings, step: int, state: dict[str, Any],
                    model: dict[str, torch.Tensor], best: dict[str, torch.Tensor] | None,
                    tensors: dict[str, torch.Tensor], optimizer: dict[str, Any], scheduler: dict[str, Any],
                    epoch_end: bool = False) -> Path:
    """Write a checkpoint atomically and drop the oldest beyond ``settings.keep``; returns its folder.
    A checkpoint of this very state that exists already (a Ctrl-C right after a periodic save) stays."""
    folder = settings.folder
    target = folder / checkpoint_name(step, epoch_end)
    if target.is_dir():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp"))
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoints to {folder}: {exc.strerror or exc}") from None
    try:
        save_file(_contiguous(model), str(tmp / "model.safetensors"))
        if best is not None:
            save_file(_contiguous(best), str(tmp / "best.safetensors"))
        save_file(_contiguous(tensors), str(tmp / "tensors.safetensors"))
        torch.save({"optimizer": optimizer, "scheduler": scheduler}, tmp / "optimizer.pt")
        full_state = {"format": FORMAT_VERSION, "step": step, **state}
        (tmp / "state.json").write_text(json.dumps(full_state, indent=1), encoding="utf-8")
        for item in tmp.iterdir():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {target}: {exc.strerror or exc} "
                              f"(the previous checkpoints are intact)") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(folder)[: -settings.keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint folder; anything missing, truncated or not what lastpool writes is refused."""
    missing = [name for name in FILES if name != "best.safetensors" and not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: {', '.join(missing)} missing")
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: state.json is unreadable ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: not a lastpool checkpoint of format {FORMAT_VERSION}")
    try:
        model = load_file(str(path / "model.safetensors"))
        best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").is_file() else None
        tensors = load_file(str(path / "tensors.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: corrupt or truncated weights ({exc})") from None
    try:
        # weights_only: only tensors, numbers, strings and containers are accepted, never code.
        saved = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read it means the same thing to the user
        raise CheckpointError(f"checkpoint {path}: optimizer.pt is corrupt or not lastpool's "
                              f"({type(exc).__name__})") from None
    if not isinstance(saved, dict) or "optimizer" not in saved or "scheduler" not in saved:
        raise CheckpointError(f"checkpoint {path}: optimizer.pt is not lastpool's")
    return Checkpoint(path=path, state=state, model=model, best=best, tensors=tensors,
                      optimizer=saved["optimizer"], scheduler=saved["scheduler"])


def latest_checkpoint(folder: Path) -> Path:
    found = list_checkpoints(folder)
    if not found:
        raise CheckpointError(f"no checkpoint to resume from in {folder}")
    return found[-1]


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About how many bytes one checkpoint of ``model`` takes: the float32 trainable weights twice (now
    and best) and AdamW's two moments for each (frozen weights are rebuilt from their source)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * 4 * trainable


def check_free_space(folder: Path, needed: int) -> None:
    """Fail before training when the disk cannot hold the checkpoints the run will write."""
    free = shutil.disk_usage(nearest_existing(folder)).free
    if free < needed:
        raise CheckpointError(f"not enough free disk space for checkpoints in {folder}: they need about "
                              f"{needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free "
                              "(free some space, lower --keep-checkpoints or choose another --out)")


def check_checkpoint_space(settings: CheckpointSettings, model: torch.nn.Module) -> None:
    """Before the first step: the run directory must take checkpoints of this model (``keep`` of them,
    one more while the next is written, then the final model)."""
    check_writable_dir(settings.folder, f"cannot write checkpoints to {settings.folder}")
    check_free_space(settings.folder, (settings.keep + 2) * checkpoint_bytes(model))
