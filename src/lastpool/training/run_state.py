"""A training run's state as one object: the model and the module that steps it (itself, a DDP wrapper or
an FSDP-sharded copy), the float32 master weights, the optimizer and schedule, where the run stands and
the best epoch so far. It saves itself as a checkpoint and restores itself from one, so the training loop
holds nothing a checkpoint would need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from lastpool.config import RunConfig
from lastpool.errors import CheckpointError, ConfigError
from lastpool.tracking.run import TRACKING_FIELDS
from lastpool.training.checkpoint import Checkpoint, CheckpointSettings, checkpoint_name, save_checkpoint
from lastpool.training.inputs import TrainInputs, data_identity
from lastpool.training.optimization import make_optimizer
from lastpool.training.precision import MasterWeights
from lastpool.training.sharding import full_optimizer_state, full_trainable_state, shard, shard_optimizer_state

# Fields that say how a run is driven, not what it computes: they may differ on --resume.
RUN_CONTROL_FIELDS = frozenset({"out", "save_every", "keep_checkpoints", "num_processes", *TRACKING_FIELDS})


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    val_metrics: dict[str, Any] = field(default_factory=dict)
    val_logits: np.ndarray | None = None  # the kept epoch's validation logits (for calibration)
    train_seconds: float = 0.0
    train_samples: int = 0
    optimizer_steps: int = 0

    @property
    def train_samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0


@dataclass
class RunPosition:
    """Where a run stands: everything a checkpoint must hold besides tensors and optimizer state."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # optimizer steps done in it
    epoch_seconds: float = 0.0  # training seconds spent in it so far
    seen: int = 0  # training rows in it so far (all processes)
    best_f1: float = -1.0
    result: TrainResult = field(default_factory=TrainResult)

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "epoch_seconds": self.epoch_seconds,
                "seen": self.seen, "best_f1": self.best_f1, "history": r.history, "best_epoch": r.best_epoch,
                "val_metrics": r.val_metrics, "train_seconds": r.train_seconds, "train_samples": r.train_samples,
                "optimizer_steps": r.optimizer_steps}

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> RunPosition:
        result = TrainResult(history=state["history"], best_epoch=state["best_epoch"],
                             val_metrics=state["val_metrics"], train_seconds=state["train_seconds"],
                             train_samples=state["train_samples"], optimizer_steps=state["optimizer_steps"])
        return cls(epoch=state["epoch"], step_in_epoch=state["step_in_epoch"],
                   epoch_seconds=state["epoch_seconds"], seen=state["seen"], best_f1=state["best_f1"],
                   result=result)


def total_steps(config: RunConfig, batches_per_epoch: int) -> int:
    """Optimizer steps the run takes: every epoch's, or ``max_steps`` when that comes first."""
    if not isinstance(config.epochs, int):
        raise ConfigError("epochs auto must be resolved from the data before training (Classifier.fit does)")
    steps = math.ceil(batches_per_epoch / config.grad_accum) * config.epochs
    return steps if config.max_steps is None else min(steps, config.max_steps)


@dataclass
class TrainingRun:
    """Everything a run holds while it trains. ``start`` builds it (or restores it from a checkpoint);
    ``save`` writes it as a checkpoint; ``finish`` puts the best epoch's weights into the model."""

    accelerator: Accelerator
    model: nn.Module  # the classifier whose weights are the result
    stepped: nn.Module  # what the optimizer steps: the model, its DDP wrapper or an FSDP copy
    sharded: bool
    master: MasterWeights | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train: TrainInputs
    fingerprint: dict[str, Any]
    position: RunPosition
    best: dict[str, torch.Tensor] | None
    # The epoch's summed training loss (on the device; read once per epoch); from the checkpoint when a
    # run resumes inside an epoch.
    loss_sum: torch.Tensor

    @property
    def result(self) -> TrainResult:
        return self.position.result

    @property
    def evaluated(self) -> nn.Module:
        """The module validation runs: a sharded model needs every process in every forward pass."""
        return self.stepped if self.sharded else self.model

    @classmethod
    def start(cls, accelerator: Accelerator, model: nn.Module, train: TrainInputs, val: TrainInputs,
              config: RunConfig, precision: str, master: MasterWeights | None, steps: int,
              resume: Checkpoint | None) -> TrainingRun:
        """A fresh run, or (``resume``) the stopped one, after checking the checkpoint belongs to it."""
        world, rank = accelerator.num_processes, accelerator.process_index
        config_fields = {k: v for k, v in config.model_dump(mode="json").items() if k not in RUN_CONTROL_FIELDS}
        fingerprint = {"config": config_fields, "data": data_identity(train, val), "processes": world,
                       "precision": precision}
        position, best, loss_sum = RunPosition(), None, torch.zeros((), device=accelerator.device)
        if resume is not None:  # weights first: a sharded copy is made from them
            _check_compatible(resume, fingerprint, model)
            _load_trainable(model, master, resume.model, f"--resume {resume.path.parent.parent}")
            _restore_random_state(resume, train, rank)
            position, best = RunPosition.from_json(resume.state["loop"]), resume.best
            if "val_logits" in resume.tensors:
                position.result.val_logits = resume.tensors["val_logits"].numpy()
            if position.step_in_epoch > 0:
                loss_sum = resume.tensors["loss_sum"].to(accelerator.device)
        sharded = config.sharding == "fsdp" and world > 1 and train.runs_blocks
        stepped = shard(model, precision) if sharded else model
        optimizer = make_optimizer(master.masters if master else stepped, config.lr, config.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps(steps), steps)
        if resume is not None:
            _restore_optimizer(resume, optimizer, scheduler, sharded)
        if not sharded:
            stepped = accelerator.prepare_model(stepped)  # DistributedDataParallel when there are several processes
        return cls(accelerator, model, stepped, sharded, master, optimizer, scheduler, train, fingerprint,
                   position, best, loss_sum)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The float32 values of the trainable parameters (all that training changes), cloned."""
        if self.sharded:
            return full_trainable_state(self.stepped)
        if self.master is not None:
            return self.master.trainable_state()
        return {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def end_epoch(self, metrics: dict[str, Any], logits: np.ndarray, record: dict[str, Any], main: str) -> bool:
        """Record the finished epoch and keep its weights when its ``main`` score is the best so far (the first
        epoch always is, even with an undefined score); returns whether it is."""
        position, result = self.position, self.result
        score = float(metrics[main])
        score = -math.inf if math.isnan(score) else score
        improved = result.best_epoch == 0 or score > position.best_f1
        if improved:
            position.best_f1 = score
            result.best_epoch = position.epoch + 1
            result.val_metrics, result.val_logits = metrics, logits
            self.best = self.trainable_state()
        result.history.append(record)
        position.epoch, position.step_in_epoch, position.epoch_seconds, position.seen = position.epoch + 1, 0, 0.0, 0
        self.loss_sum = torch.zeros((), device=self.accelerator.device)
        return improved

    def finish(self) -> TrainResult:
        """The best epoch's weights into the model (float32 again, when it trained in bf16)."""
        if self.master is not None:
            self.master.restore()
        best = self.best if self.best is not None or not self.sharded else full_trainable_state(self.stepped)
        if best is not None:
            _load_trainable(self.model, None, best, "the best epoch")
        return self.result

    def save(self, settings: CheckpointSettings, reason: str, extra: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint from the main process; with FSDP every process first helps gather the full
        weights and optimizer state. Every process learns whether it could be written. ``extra``: more
        JSON-able state (the observers')."""
        accelerator, rank = self.accelerator, self.accelerator.process_index
        if self.sharded:
            trainable, optimizer_state = full_trainable_state(self.stepped), full_optimizer_state(self.optimizer)
        else:
            trainable = self.trainable_state() if accelerator.is_main_process else {}
            optimizer_state = self.optimizer.state_dict()
        own = {f"rng_torch_{rank}": torch.get_rng_state()}
        if self.train.generator is not None:
            own[f"rng_collate_{rank}"] = self.train.generator.get_state()
        if torch.cuda.is_available():
            own[f"rng_cuda_{rank}"] = torch.cuda.get_rng_state()
        states = gather_object([own]) if accelerator.num_processes > 1 else [own]
        steps, epoch_end = self.result.optimizer_steps, reason == "epoch"
        path, error = settings.folder / checkpoint_name(steps, epoch_end), None
        if accelerator.is_main_process:
            tensors: dict[str, torch.Tensor] = {k: v for item in states for k, v in item.items()}
            tensors["loss_sum"] = self.loss_sum.detach().cpu().reshape(())
            if self.result.val_logits is not None:
                tensors["val_logits"] = torch.from_numpy(np.ascontiguousarray(self.result.val_logits))
            state = {"reason": reason, "loop": self.position.to_json(), "fingerprint": self.fingerprint,
                     **(extra or {})}
            try:
                path = save_checkpoint(settings, steps, state, trainable, self.best, tensors, dict(optimizer_state),
                                       self.scheduler.state_dict(), epoch_end=epoch_end)
            except CheckpointError as exc:
                error = str(exc)
        if accelerator.num_processes > 1:
            error = next((e for e in gather_object([error]) if e), None)
        if error is not None:
            raise CheckpointError(error)
        return path


def _check_compatible(checkpoint: Checkpoint, fingerprint: dict[str, Any], model: nn.Module) -> None:
    """Refuse a checkpoint of another run: other settings, data, process count, precision or parameters."""
    saved = checkpoint.state.get("fingerprint", {})
    where = f"--resume {checkpoint.path.parent.parent}"
    saved_config = saved.get("config", {})
    differing = sorted(k for k in set(saved_config) | set(fingerprint["config"])
                       if saved_config.get(k) != fingerprint["config"].get(k))
    if differing:
        shown = ", ".join(f"{k}: {saved_config.get(k)!r} -> {fingerprint['config'].get(k)!r}" for k in differing[:5])
        raise CheckpointError(f"incompatible {where}: the run was started with other settings ({shown})")
    if saved.get("data") != fingerprint["data"]:
        raise CheckpointError(f"incompatible {where}: the training or validation data differ from the "
                              "run's (other file contents, split or tokenizer)")
    for key in ("processes", "precision"):
        if saved.get(key) != fingerprint[key]:
            raise CheckpointError(f"incompatible {where}: it ran with {key} {saved.get(key)}, "
                                  f"this run has {fingerprint[key]}")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(checkpoint.model) != trainable or (checkpoint.best is not None and set(checkpoint.best) != trainable):
        raise CheckpointError(f"incompatible {where}: its weights do not match this model's parameters")


@torch.no_grad()
def _load_trainable(model: nn.Module, master: MasterWeights | None, state: dict[str, torch.Tensor],
                    where: str) -> None:
    try:
        if master is not None:
            master.load_trainable(state)
            return
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(state[name])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"incompatible {where}: {str(exc).splitlines()[0]}") from None


def _restore_random_state(checkpoint: Checkpoint, train: TrainInputs, rank: int) -> None:
    tensors = checkpoint.tensors
    if f"rng_torch_{rank}" not in tensors:
        raise CheckpointError(f"incompatible --resume {checkpoint.path.parent.parent}: no random state saved "
                              f"for process {rank}")
    torch.set_rng_state(tensors[f"rng_torch_{rank}"])
    if train.generator is not None:
        train.generator.set_state(tensors[f"rng_collate_{rank}"])
    if torch.cuda.is_available() and f"rng_cuda_{rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng_cuda_{rank}"])


def _restore_optimizer(checkpoint: Checkpoint, optimizer: torch.optim.Optimizer, scheduler: Any,
                       sharded: bool) -> None:
    """The optimizer and scheduler state; a sharded (FSDP) optimizer takes its shard of the full state."""
    try:
        optimizer.load_state_dict(shard_optimizer_state(optimizer, checkpoint.optimizer) if sharded
                                  else checkpoint.optimizer)
        scheduler.load_state_dict(checkpoint.scheduler)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"incompatible --resume {checkpoint.path.parent.parent}: "
                              f"{str(exc).splitlines()[0]}") from None
