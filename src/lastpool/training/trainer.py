"""The training loop, on Accelerate so the same code runs on one CPU process or many GPUs.

AdamW, linear warmup then cosine decay, gradient clipping and accumulation, length-bucketed batches,
evaluation every epoch, and the best epoch by validation macro-F1 kept. With several processes (DDP) every
process computes the same global batches and takes its share of each, so the global batch and the
gradient are what one process would get. Each step reads back one flag (is the loss finite, was a stop
requested) before the update is applied; the loss itself is read only when the progress bar refreshes.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table as RichTable
from torch import nn
from transformers import get_cosine_schedule_with_warmup

from lastpool.config import RunConfig
from lastpool.data.batching import EncodedDataset, LengthBucketSampler, TokenDropoutCollator
from lastpool.distributed import under_launcher
from lastpool.errors import CheckpointError, ConfigError, TrainingStopped
from lastpool.evaluation.metrics import classification_metrics
from lastpool.training.checkpoint import (
    Checkpoint,
    CheckpointSettings,
    check_checkpoint_space,
    checkpoint_name,
    data_fingerprint,
    save_checkpoint,
)
from lastpool.training.compilation import compiled_blocks, eager
from lastpool.training.features import FeatureDataset, collate_features
from lastpool.training.inference import predict_logits, softmax
from lastpool.training.precision import MasterWeights, attention_for_training
from lastpool.training.sharding import full_optimizer_state, full_trainable_state, shard, shard_optimizer_state
from lastpool.training.signals import StopRequests
from lastpool.training.upper_blocks import HiddenCollator, HiddenStates, predict_hidden

# What a run trains on: token ids (the model), pooled features (a probe's head) or hidden states after the
# frozen blocks (top-N's upper blocks, training/upper_blocks.py).
TrainData = EncodedDataset | FeatureDataset | HiddenStates


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


def make_optimizer(params: nn.Module | list[torch.Tensor], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over a model's trainable parameters (or given tensors, e.g. float32 master weights);
    weight decay only on matrices (not biases, norms), as in GPT-2 / nanoGPT."""
    if isinstance(params, nn.Module):
        params = [p for p in params.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass (no per-tensor temporaries), on CPU and CUDA.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=fused, foreach=None if fused else True)


def clip_in_fused_step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
                       max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` without its pass that multiplies every gradient by the clip factor: the fused
    AdamW divides each gradient by ``grad_scale`` as it reads it (the hook torch's GradScaler uses), so
    clipping reads the gradients once instead of reading them twice and writing them once (0.02 s of a
    1.6 s SmolLM2 step on this CPU, 135 M float32 gradients). Returns the total norm before clipping,
    as ``clip_grad_norm_`` does."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0))) if grads else torch.zeros(())
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)  # type: ignore[attr-defined]
    return norm


def evaluate_logits(logits: np.ndarray, labels: list[int], label_names: list[str]) -> dict[str, Any]:
    probabilities = softmax(logits)
    predictions = probabilities.argmax(axis=-1).tolist()
    metrics = classification_metrics(labels, predictions, label_names, probabilities)
    metrics["loss"] = metrics.get("log_loss", float("nan"))
    return metrics


@dataclass
class _Loop:
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
    def from_json(cls, state: dict[str, Any]) -> _Loop:
        result = TrainResult(history=state["history"], best_epoch=state["best_epoch"],
                             val_metrics=state["val_metrics"], train_seconds=state["train_seconds"],
                             train_samples=state["train_samples"], optimizer_steps=state["optimizer_steps"])
        return cls(epoch=state["epoch"], step_in_epoch=state["step_in_epoch"],
                   epoch_seconds=state["epoch_seconds"], seen=state["seen"], best_f1=state["best_f1"],
                   result=result)


# Fields that say how a run is driven, not what it computes: they may differ on --resume.
RUN_CONTROL_FIELDS = frozenset({"out", "save_every", "keep_checkpoints", "num_processes"})


class Trainer:
    """Trains a SequenceClassifier on encoded data; keeps the best epoch's weights in the model.

    With ``checkpoints`` it saves every ``checkpoints.every`` steps, at each epoch end and when
    interrupted (Ctrl-C, SIGTERM); with ``resume`` it continues from a checkpoint and finishes with
    the same weights and metrics as a run that was never stopped. A NaN or infinite loss stops the run
    before the step that produced it is applied, naming the step.
    """

    def __init__(self, config: RunConfig, pad_token_id: int, label_names: list[str], quiet: bool = False,
                 console: Console | None = None, precision: str = "fp32",
                 checkpoints: CheckpointSettings | None = None, resume: Checkpoint | None = None) -> None:
        self.config = config
        self.pad_token_id = pad_token_id
        self.label_names = label_names
        self.quiet = quiet
        self.precision = precision
        self.checkpoints = checkpoints
        self.resume = resume
        self.last_checkpoint: Path | None = None
        self.console = console or Console(stderr=True, soft_wrap=True)

    def fit(self, model: nn.Module, train: TrainData, val: TrainData) -> TrainResult:
        """Train ``model`` on token ids, or (a probe) a head on precomputed pooled features, or (top-N)
        the upper blocks on cached hidden states; ``model`` takes the collated batch as keywords."""
        # bf16 is handled here rather than by Accelerator(mixed_precision=...): Accelerate's process-wide
        # state cannot change precision between two fits in one process, and its autocast re-casts every
        # weight in every pass. bf16 trains the model's own weights in bf16 with float32 masters
        # (training/precision.py); a probe's head trains in float32 on float32 features.
        # Accelerate sets up several CPU processes (gloo) only when told the job is CPU-only.
        accelerator = Accelerator(cpu=under_launcher() and not torch.cuda.is_available())
        model.to(accelerator.device)  # before the master weights are taken, so they live beside the model
        on_features = isinstance(train, FeatureDataset)
        fsdp = self.config.sharding == "fsdp" and accelerator.num_processes > 1 and not on_features
        master = MasterWeights(model) if self.precision == "bf16" and not on_features and not fsdp else None
        if self.checkpoints is not None:
            check_checkpoint_space(self.checkpoints, model)  # fail now, not at the first epoch's end
        try:
            with attention_for_training(model, accelerator.device), \
                    compiled_blocks(model, self.config.compile and not on_features):
                return self._fit(accelerator, model, train, val, master)
        finally:
            if master is not None:
                master.restore()

    def _fit(self, accelerator: Accelerator, model: nn.Module, train: TrainData, val: TrainData,
             master: MasterWeights | None) -> TrainResult:
        cfg = self.config
        world, rank = accelerator.num_processes, accelerator.process_index
        if cfg.batch_size < world:
            raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch: it must be at least the "
                              f"number of processes ({world})")
        on_features = isinstance(train, FeatureDataset)
        sampler = LengthBucketSampler(train.lengths, cfg.batch_size, seed=cfg.seed, shuffle=True, min_batch=world)
        collate: Any = (collate_features if on_features else HiddenCollator(cfg.padding_side)
                        if isinstance(train, HiddenStates) else TokenDropoutCollator(
                            self.pad_token_id, cfg.padding_side, rate=cfg.token_dropout, seed=cfg.seed))
        if not isinstance(cfg.epochs, int):
            raise ConfigError("epochs auto must be resolved from the data before training (Classifier.fit does)")
        epochs = cfg.epochs
        steps_per_epoch = math.ceil(len(sampler) / cfg.grad_accum)
        total_steps = steps_per_epoch * epochs
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        unwrapped = model
        fsdp = cfg.sharding == "fsdp" and world > 1 and not on_features
        fingerprint = self._fingerprint(train, val, world)
        loop = _Loop()
        best: dict[str, torch.Tensor] | None = None
        if self.resume is not None:  # weights first: a sharded copy is made from them
            loop, best = self._restore(self.resume, fingerprint, unwrapped, master, collate, rank)
        if fsdp:  # train a sharded copy; its weights come back into ``unwrapped`` at the end
            model = shard(model, self.precision)
            if not self.quiet and accelerator.is_main_process:
                self.console.print(f"sharded with FSDP over {world} processes")
        optimizer = make_optimizer(master.masters if master else model, cfg.lr, cfg.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps(total_steps), total_steps)
        if self.resume is not None:
            self._restore_optimizer(self.resume, model if fsdp else None, optimizer, scheduler)
        if not fsdp:
            model = accelerator.prepare_model(model)  # DistributedDataParallel when there are several processes
        device = accelerator.device
        result = loop.result

        def save(reason: str, loss_sum: torch.Tensor) -> Path | None:
            if self.checkpoints is None:
                return None
            path = self._save(accelerator, loop, best, unwrapped, model if fsdp else None, master, optimizer,
                              scheduler, collate, fingerprint, reason, loss_sum)
            self.last_checkpoint = path
            return path

        progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=self.console, disable=self.quiet or not accelerator.is_main_process,
            transient=True,
        )
        with StopRequests(enabled=self.checkpoints is not None) as stop, progress:
            task = progress.add_task("train", total=total_steps, completed=result.optimizer_steps,
                                     epoch=f"{loop.epoch + 1}/{epochs}", loss="-")
            while loop.epoch < epochs and result.optimizer_steps < total_steps and not self._out_of_patience(loop):
                epoch = loop.epoch
                sampler.set_epoch(epoch)
                batches = sampler.batches()
                groups = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
                model.train()
                if loop.step_in_epoch == 0:
                    loss_sum = torch.zeros((), device=device)
                else:  # resumed inside an epoch: its running loss comes from the checkpoint
                    assert self.resume is not None
                    loss_sum = self.resume.tensors["loss_sum"].to(device)
                started = time.perf_counter()
                stopping = False
                for group in groups[loop.step_in_epoch:]:
                    step_rows = sum(len(indices) for indices in group)
                    step_loss = torch.zeros((), device=device)
                    for j, indices in enumerate(group):
                        local = indices if world == 1 else np.array_split(np.asarray(indices), world)[rank].tolist()
                        batch = {k: v.to(device) for k, v in collate([train[i] for i in local]).items()}
                        # Gradients of the last micro-batch only are averaged across processes.
                        last = world == 1 or fsdp or j == len(group) - 1
                        syncing: Any = nullcontext() if last else model.no_sync()  # type: ignore[operator]
                        with syncing:
                            logits = model(**{k: v for k, v in batch.items() if k != "labels"})
                            summed = F.cross_entropy(logits.float(), batch["labels"],
                                                     label_smoothing=cfg.label_smoothing, reduction="sum")
                            # The mean over the whole step's rows, on all processes together (DDP averages
                            # gradients over processes, hence x world).
                            (summed * (world / step_rows)).backward()
                        if master is not None:
                            master.collect_grads()
                        step_loss += summed.detach()
                    grad_norm = None
                    if cfg.grad_clip > 0:
                        params = master.masters if master is not None else [p for p in model.parameters()
                                                                            if p.requires_grad]
                        grad_norm = (clip_in_fused_step(optimizer, params, cfg.grad_clip)
                                     if optimizer.defaults.get("fused") and not fsdp
                                     else torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True))
                    bad, stopping = self._flags(accelerator, step_loss, grad_norm, stop.requested is not None)
                    if bad:
                        raise self._diverged(result.optimizer_steps + 1, epoch + 1, step_loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)  # over the masters, when there are masters
                    if master is not None:
                        master.push()
                    loss_sum += step_loss
                    loop.seen += step_rows
                    loop.step_in_epoch += 1
                    result.optimizer_steps += 1
                    if not self.quiet and (result.optimizer_steps % 10 == 0 or result.optimizer_steps == 1):
                        progress.update(task, completed=result.optimizer_steps, epoch=f"{epoch + 1}/{epochs}",
                                        loss=f"{float(step_loss) * world / step_rows:.4f}")
                    if stopping or result.optimizer_steps >= total_steps:
                        break
                    if self.checkpoints is not None and self.checkpoints.every and \
                            result.optimizer_steps % self.checkpoints.every == 0:
                        loop.epoch_seconds += time.perf_counter() - started
                        save("step", loss_sum)
                        started = time.perf_counter()
                loop.epoch_seconds += time.perf_counter() - started
                if stopping:
                    path = save("interrupted", loss_sum)
                    where = (f"checkpoint saved to {path}; continue with: lastpool train --resume "
                             f"{path.parent.parent}" if path is not None else "no checkpoint saved")
                    raise TrainingStopped(f"interrupted at step {result.optimizer_steps} (epoch {epoch + 1}): "
                                          f"{where}", exit_code=130)
                # The epoch is over (or max_steps reached): evaluate, keep the best, checkpoint.
                seconds = loop.epoch_seconds
                result.train_seconds += seconds
                result.train_samples += loop.seen
                total_loss = accelerator.reduce(loss_sum.clone(), "sum") if world > 1 else loss_sum
                with eager():  # validation never compiles (evaluation mode would be a second graph)
                    metrics, logits = self._evaluate(accelerator, model if fsdp else unwrapped, val, sharded=fsdp)
                record = {
                    "epoch": epoch + 1,
                    "train_loss": float(total_loss.item()) / max(loop.seen, 1),
                    "val_loss": metrics["loss"],
                    "val_accuracy": metrics["accuracy"],
                    "val_macro_f1": metrics["macro_f1"],
                    "seconds": seconds,
                    "lr": float(scheduler.get_last_lr()[0]),
                    "steps": result.optimizer_steps,
                }
                improved = metrics["macro_f1"] > loop.best_f1
                if improved:
                    loop.best_f1 = metrics["macro_f1"]
                    result.best_epoch = epoch + 1
                    result.val_metrics = metrics
                    result.val_logits = logits
                    best = full_trainable_state(model) if fsdp else self._trainable_state(unwrapped, master)
                result.history.append(record)
                loop.epoch, loop.step_in_epoch, loop.epoch_seconds, loop.seen = epoch + 1, 0, 0.0, 0
                if not self.quiet and accelerator.is_main_process:
                    progress.console.print(self._epoch_line(record, epochs, improved))
                save("epoch", torch.zeros(()))
        if master is not None:
            master.restore()
        if fsdp and best is None:
            best = full_trainable_state(model)
        if best is not None:
            self._load_trainable(unwrapped, None, best)
        if not self.quiet and accelerator.is_main_process:
            self.console.print(self._history_table(result))
        return result

    # ------------------------------------------------------------------ helpers
    def _out_of_patience(self, loop: _Loop) -> bool:
        """Early stopping: ``patience`` finished epochs in a row without a better validation macro-F1 (derived
        from the history, so a resumed run stops where the uninterrupted one would)."""
        patience = self.config.patience
        return patience is not None and loop.result.best_epoch > 0 and loop.epoch - loop.result.best_epoch >= patience

    @staticmethod
    def _trainable_state(model: nn.Module, master: MasterWeights | None) -> dict[str, torch.Tensor]:
        """The float32 values of the trainable parameters (all that training changes), cloned."""
        if master is not None:
            return master.trainable_state()
        return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    @staticmethod
    @torch.no_grad()
    def _load_trainable(model: nn.Module, master: MasterWeights | None, state: dict[str, torch.Tensor]) -> None:
        if master is not None:
            master.load_trainable(state)
            return
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(state[name])

    def _fingerprint(self, train: TrainData, val: TrainData, world: int) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: the configuration, the data and the process count."""
        config = {k: v for k, v in self.config.model_dump(mode="json").items() if k not in RUN_CONTROL_FIELDS}
        if isinstance(train, FeatureDataset) and isinstance(val, FeatureDataset):
            digest = hashlib.sha256(train.features.numpy().tobytes() + val.features.numpy().tobytes())
            digest.update(repr((train.labels, val.labels)).encode())
            data = digest.hexdigest()
        else:
            assert not isinstance(train, FeatureDataset) and not isinstance(val, FeatureDataset)
            data = data_fingerprint(train.ids, train.labels, val.ids, val.labels)
        return {"config": config, "data": data, "processes": world, "precision": self.precision}

    def _restore(self, checkpoint: Checkpoint, fingerprint: dict[str, Any], model: nn.Module,
                 master: MasterWeights | None, collate: Any, rank: int) -> tuple[_Loop, dict[str, torch.Tensor] | None]:
        """Check that the checkpoint belongs to this run, then load its weights, RNG states and progress."""
        saved = checkpoint.state.get("fingerprint", {})
        where = f"--resume {checkpoint.path.parent.parent}"
        differing = sorted(k for k in set(saved.get("config", {})) | set(fingerprint["config"])
                           if saved.get("config", {}).get(k) != fingerprint["config"].get(k))
        if differing:
            shown = ", ".join(f"{k}: {saved.get('config', {}).get(k)!r} -> {fingerprint['config'].get(k)!r}"
                              for k in differing[:5])
            raise CheckpointError(f"incompatible {where}: the run was started with other settings ({shown})")
        if saved.get("data") != fingerprint["data"]:
            raise CheckpointError(f"incompatible {where}: the training or validation data differ from the "
                                  "run's (other file contents, split or tokenizer)")
        for key, what in (("processes", "processes"), ("precision", "precision")):
            if saved.get(key) != fingerprint[key]:
                raise CheckpointError(f"incompatible {where}: it ran with {what} {saved.get(key)}, "
                                      f"this run has {fingerprint[key]}")
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        if set(checkpoint.model) != trainable or (checkpoint.best is not None and set(checkpoint.best) != trainable):
            raise CheckpointError(f"incompatible {where}: its weights do not match this model's parameters")
        try:
            self._load_trainable(model, master, checkpoint.model)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"incompatible {where}: {str(exc).splitlines()[0]}") from None
        tensors = checkpoint.tensors
        if f"rng_torch_{rank}" not in tensors:
            raise CheckpointError(f"incompatible {where}: no random state saved for process {rank}")
        torch.set_rng_state(tensors[f"rng_torch_{rank}"])
        if isinstance(collate, TokenDropoutCollator):
            collate.generator.set_state(tensors[f"rng_collate_{rank}"])
        if torch.cuda.is_available() and f"rng_cuda_{rank}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng_cuda_{rank}"])
        loop = _Loop.from_json(checkpoint.state["loop"])
        if "val_logits" in tensors:
            loop.result.val_logits = tensors["val_logits"].numpy()
        return loop, checkpoint.best

    @staticmethod
    def _restore_optimizer(checkpoint: Checkpoint, sharded: nn.Module | None, optimizer: torch.optim.Optimizer,
                           scheduler: Any) -> None:
        """The optimizer and scheduler state; a sharded (FSDP) optimizer takes its shard of the full state."""
        try:
            optimizer.load_state_dict(shard_optimizer_state(optimizer, checkpoint.optimizer)
                                      if sharded is not None else checkpoint.optimizer)
            scheduler.load_state_dict(checkpoint.scheduler)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"incompatible --resume {checkpoint.path.parent.parent}: "
                                  f"{str(exc).splitlines()[0]}") from None

    def _save(self, accelerator: Accelerator, loop: _Loop, best: dict[str, torch.Tensor] | None,
              model: nn.Module, sharded: nn.Module | None, master: MasterWeights | None,
              optimizer: torch.optim.Optimizer, scheduler: Any, collate: Any, fingerprint: dict[str, Any],
              reason: str, loss_sum: torch.Tensor) -> Path:
        """Write a checkpoint from the main process; with FSDP every process first helps gather the full
        weights and optimizer state."""
        assert self.checkpoints is not None
        rank = accelerator.process_index
        if sharded is not None:
            trainable = full_trainable_state(sharded)
            optimizer_state = full_optimizer_state(optimizer)
        else:
            trainable = self._trainable_state(model, master) if accelerator.is_main_process else {}
            optimizer_state = optimizer.state_dict()
        own = {f"rng_torch_{rank}": torch.get_rng_state()}
        if isinstance(collate, TokenDropoutCollator):
            own[f"rng_collate_{rank}"] = collate.generator.get_state()
        if torch.cuda.is_available():
            own[f"rng_cuda_{rank}"] = torch.cuda.get_rng_state()
        states = gather_object([own]) if accelerator.num_processes > 1 else [own]
        name = checkpoint_name(loop.result.optimizer_steps, reason == "epoch")
        path, error = self.checkpoints.folder / name, None
        if accelerator.is_main_process:
            tensors: dict[str, torch.Tensor] = {k: v for item in states for k, v in item.items()}
            tensors["loss_sum"] = loss_sum.detach().cpu().reshape(())
            if loop.result.val_logits is not None:
                tensors["val_logits"] = torch.from_numpy(np.ascontiguousarray(loop.result.val_logits))
            state = {"reason": reason, "loop": loop.to_json(), "fingerprint": fingerprint}
            try:
                path = save_checkpoint(self.checkpoints, loop.result.optimizer_steps, state, trainable, best, tensors,
                                       dict(optimizer_state), scheduler.state_dict(), epoch_end=reason == "epoch")
            except CheckpointError as exc:
                error = str(exc)
        if accelerator.num_processes > 1:  # every process learns whether the main one could write it
            error = next((e for e in gather_object([error]) if e), None)
        if error is not None:
            raise CheckpointError(error)
        return path

    @staticmethod
    def _flags(accelerator: Accelerator, step_loss: torch.Tensor, grad_norm: torch.Tensor | None,
               stop_requested: bool) -> tuple[bool, bool]:
        """(the step's loss or gradient is not finite on some process, some process was asked to stop)."""
        if grad_norm is not None and hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor
            grad_norm = grad_norm.full_tensor()
        values = step_loss.reshape(1) if grad_norm is None else torch.stack([step_loss, grad_norm.to(step_loss)])
        flags = torch.tensor([float(not bool(torch.isfinite(values).all())), float(stop_requested)])
        if accelerator.num_processes > 1:
            flags = accelerator.reduce(flags, "sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _diverged(self, step: int, epoch: int, step_loss: torch.Tensor) -> TrainingStopped:
        value = step_loss.item()
        what = "NaN" if math.isnan(value) else ("infinite" if math.isinf(value) else "finite but its gradient is not")
        kept = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint is not None
                else "no checkpoint was saved before it" + (" (use --save-every N)" if self.checkpoints else ""))
        return TrainingStopped(f"training stopped: the loss is {what} at step {step} (epoch {epoch}), so that "
                               f"step was not applied; {kept}. Lower --lr, or check the data and --precision.",
                               exit_code=3)

    def _evaluate(self, accelerator: Accelerator, model: nn.Module, val: TrainData,
                  sharded: bool = False) -> tuple[dict[str, Any], np.ndarray]:
        """Validation logits in the data's order, each example predicted exactly once: with several
        processes each predicts every N-th example and the rows are gathered back. A sharded (FSDP) model
        needs every process in every forward pass, so there each process runs the whole split."""
        world, rank = (1, 0) if sharded else (accelerator.num_processes, accelerator.process_index)
        mine = list(range(rank, len(val), world))
        if isinstance(val, FeatureDataset):
            model.eval()
            with torch.inference_mode():
                features = val.features[mine].to(next(model.parameters()).device)
                logits = model(features).float().cpu().numpy()
        elif isinstance(val, HiddenStates):
            logits = predict_hidden(model, val, mine, self.config.padding_side)
        else:
            logits = predict_logits(model, [val.ids[i] for i in mine], self.pad_token_id, self.config.padding_side,
                                    precision=self.precision)
        if world > 1:
            rows = gather_object([(i, row) for i, row in zip(mine, logits, strict=True)])
            ordered = sorted(rows, key=lambda item: item[0])
            if [i for i, _ in ordered] != list(range(len(val))):
                raise RuntimeError("validation rows were lost or duplicated while gathering")
            logits = np.stack([row for _, row in ordered])
        return evaluate_logits(logits, val.labels, self.label_names), logits

    @staticmethod
    def _epoch_line(record: dict[str, Any], epochs: int, best: bool) -> str:
        mark = " [green]*best[/green]" if best else ""
        return (f"epoch {record['epoch']:>3}/{epochs}  train_loss {record['train_loss']:.4f}  "
                f"val_loss {record['val_loss']:.4f}  acc {record['val_accuracy']:.4f}  "
                f"macro_f1 {record['val_macro_f1']:.4f}  {record['seconds']:.1f}s{mark}")

    @staticmethod
    def _history_table(result: TrainResult) -> RichTable:
        table = RichTable(title=f"training (best epoch {result.best_epoch}, by validation macro-F1)")
        for column in ("epoch", "train loss", "val loss", "accuracy", "macro-F1", "seconds"):
            table.add_column(column, justify="right")
        for r in result.history:
            style = "bold green" if r["epoch"] == result.best_epoch else None
            table.add_row(str(r["epoch"]), f"{r['train_loss']:.4f}", f"{r['val_loss']:.4f}",
                          f"{r['val_accuracy']:.4f}", f"{r['val_macro_f1']:.4f}", f"{r['seconds']:.1f}", style=style)
        return table
