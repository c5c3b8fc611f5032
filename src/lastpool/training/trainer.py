"""The training loop, on Accelerate so the same code runs on one CPU process or many GPUs.

AdamW, linear warmup then cosine decay, gradient clipping and accumulation, length-bucketed batches,
evaluation every epoch, and the best epoch by the task's main validation score kept (the loss and the
scores are the task's: lastpool/tasks). With several processes (DDP) every
process computes the same global batches and takes its share of each, so the global batch and the
gradient are what one process would get. Each step reads back one flag (is the loss finite, was a stop
requested) before the update is applied; the loss itself is read only when the progress bar refreshes.

What the loop trains on (tokens, pooled features, hidden states) is behind ``TrainInputs``
(training/inputs.py); everything a checkpoint holds is in ``TrainingRun`` (training/run_state.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.console import Console
from torch import nn

from lastpool.config import Precision, RunConfig
from lastpool.data.batching import LengthBucketSampler
from lastpool.distributed import under_launcher
from lastpool.errors import ConfigError, TrainingStopped
from lastpool.tasks import Task
from lastpool.training.checkpoint import Checkpoint, CheckpointSettings, check_checkpoint_space
from lastpool.training.compilation import compiled_blocks, eager
from lastpool.training.display import TrainingDisplay
from lastpool.training.inputs import TrainData, TrainInputs, train_inputs
from lastpool.training.observers import TrainingObserver
from lastpool.training.optimization import clip_gradients
from lastpool.training.precision import MasterWeights, attention_for_training
from lastpool.training.run_state import TrainingRun, TrainResult, total_steps
from lastpool.training.signals import StopRequests

__all__ = ["TrainData", "TrainResult", "Trainer"]


class Trainer:
    """Trains a SequenceClassifier on encoded data; keeps the best epoch's weights in the model.

    With ``checkpoints`` it saves every ``checkpoints.every`` steps, at each epoch end and when
    interrupted (Ctrl-C, SIGTERM); with ``resume`` it continues from a checkpoint and finishes with
    the same weights and metrics as a run that was never stopped. A NaN or infinite loss stops the run
    before the step that produced it is applied, naming the step.
    """

    def __init__(self, config: RunConfig, pad_token_id: int, task: Task, quiet: bool = False,
                 console: Console | None = None, precision: Precision = "fp32",
                 checkpoints: CheckpointSettings | None = None, resume: Checkpoint | None = None,
                 observers: Sequence[TrainingObserver] = ()) -> None:
        self.config = config
        self.pad_token_id = pad_token_id
        self.task = task
        self.quiet = quiet
        self.precision = precision
        self.checkpoints = checkpoints
        self.resume = resume
        self.observers = observers
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
        inputs = train_inputs(train, self.config, self.pad_token_id, training=True)
        held_out = train_inputs(val, self.config, self.pad_token_id, training=False)
        sharded = self.config.sharding == "fsdp" and accelerator.num_processes > 1 and inputs.runs_blocks
        master = (MasterWeights(model) if self.precision == "bf16" and inputs.runs_blocks and not sharded
                  else None)
        if self.checkpoints is not None:
            check_checkpoint_space(self.checkpoints, model)  # fail now, not at the first epoch's end
        try:
            with attention_for_training(model, accelerator.device), \
                    compiled_blocks(model, self.config.compile and inputs.runs_blocks):
                return self._fit(accelerator, model, inputs, held_out, master)
        finally:
            if master is not None:
                master.restore()

    def _fit(self, accelerator: Accelerator, model: nn.Module, train: TrainInputs, val: TrainInputs,
             master: MasterWeights | None) -> TrainResult:
        cfg, world = self.config, accelerator.num_processes
        if cfg.batch_size < world:
            raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch: it must be at least the "
                              f"number of processes ({world})")
        sampler = LengthBucketSampler(train.lengths, cfg.batch_size, seed=cfg.seed, shuffle=True, min_batch=world)
        steps = total_steps(cfg, len(sampler))
        run = TrainingRun.start(accelerator, model, train, val, cfg, self.precision, master, steps, self.resume)
        assert isinstance(cfg.epochs, int)  # total_steps refuses an unresolved "auto"
        for observer in self.observers:
            observer.started(cfg.model_dump(mode="json"), run.result.optimizer_steps)
        shown = not self.quiet and accelerator.is_main_process
        with StopRequests(enabled=self.checkpoints is not None) as stop, \
                TrainingDisplay(self.console, cfg.epochs, steps, shown, self.task) as display:
            if run.sharded:
                display.note(f"sharded with FSDP over {world} processes")
            display.start(run.result.optimizer_steps, run.position.epoch)
            while (run.position.epoch < cfg.epochs and run.result.optimizer_steps < steps
                   and not self._out_of_patience(run)):
                if self._train_epoch(run, sampler, stop, display, steps):
                    raise self._interrupted(run)
                self._end_epoch(run, val, display)
        result = run.finish()
        display.history(result)
        return result

    def _train_epoch(self, run: TrainingRun, sampler: LengthBucketSampler, stop: StopRequests,
                     display: TrainingDisplay, steps: int) -> bool:
        """The rest of the current epoch (or up to ``steps``); returns whether a stop was requested."""
        cfg, position, result = self.config, run.position, run.result
        sampler.set_epoch(position.epoch)
        batches = sampler.batches()
        groups = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
        params = run.master.masters if run.master is not None else [
            p for p in run.stepped.parameters() if p.requires_grad]
        run.stepped.train()
        started = time.perf_counter()
        for group in groups[position.step_in_epoch:]:
            rows = sum(len(indices) for indices in group)
            step_loss = self._accumulate(run, group, rows)
            grad_norm = clip_gradients(run.optimizer, params, cfg.grad_clip, run.sharded) if cfg.grad_clip > 0 else None
            bad, stopping = self._flags(run.accelerator, step_loss, grad_norm, stop.requested is not None)
            if bad:
                raise self._diverged(result.optimizer_steps + 1, position.epoch + 1, step_loss)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)  # over the masters, when there are masters
            if run.master is not None:
                run.master.push()
            run.loss_sum += step_loss
            position.seen += rows
            position.step_in_epoch += 1
            result.optimizer_steps += 1
            display.step(result.optimizer_steps, position.epoch, step_loss, rows / run.accelerator.num_processes)
            self._observe_step(run, step_loss, rows)
            if stopping or result.optimizer_steps >= steps:
                position.epoch_seconds += time.perf_counter() - started
                return stopping
            if self.checkpoints is not None and self.checkpoints.every and \
                    result.optimizer_steps % self.checkpoints.every == 0:
                position.epoch_seconds += time.perf_counter() - started
                self._save(run, "step")
                started = time.perf_counter()
        position.epoch_seconds += time.perf_counter() - started
        return False

    def _accumulate(self, run: TrainingRun, group: Sequence[list[int]], rows: int) -> torch.Tensor:
        """Forward and backward over one optimizer step's micro-batches; the summed loss of this process's
        rows. Each process takes its share of every global batch."""
        accelerator = run.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        step_loss = torch.zeros((), device=accelerator.device)
        for j, indices in enumerate(group):
            local = indices if world == 1 else np.array_split(np.asarray(indices), world)[rank].tolist()
            batch = {k: v.to(accelerator.device) for k, v in run.train.batch(local).items()}
            labels = batch.pop("labels")
            # Gradients of the last micro-batch only are averaged across processes.
            last = world == 1 or run.sharded or j == len(group) - 1
            syncing: Any = nullcontext() if last else run.stepped.no_sync()  # type: ignore[operator]
            with syncing:
                summed = self.task.loss(run.stepped(**batch).float(), labels)
                # The mean over the whole step's rows, on all processes together (DDP averages gradients
                # over processes, hence x world).
                (summed * (world / rows)).backward()
            if run.master is not None:
                run.master.collect_grads()
            step_loss += summed.detach()
        return step_loss

    def _end_epoch(self, run: TrainingRun, val: TrainInputs, display: TrainingDisplay) -> None:
        """The epoch is over (or max_steps reached): evaluate, keep the best, checkpoint."""
        accelerator, position, result = run.accelerator, run.position, run.result
        result.train_seconds += position.epoch_seconds
        result.train_samples += position.seen
        total_loss = accelerator.reduce(run.loss_sum.clone(), "sum") if accelerator.num_processes > 1 else run.loss_sum
        with eager():  # validation never compiles (evaluation mode would be a second graph)
            logits = self._validation_logits(run, val)
        metrics = self.task.evaluate(logits, np.asarray(val.labels))
        record = {
            "epoch": position.epoch + 1,
            "train_loss": float(total_loss.item()) / max(position.seen, 1),
            "val_loss": metrics["loss"],
            **{f"val_{name}": metrics[name] for name in dict.fromkeys((*self.task.headline, self.task.main_metric))},
            "seconds": position.epoch_seconds,
            "lr": float(run.scheduler.get_last_lr()[0]),
            "steps": result.optimizer_steps,
        }
        improved = run.end_epoch(metrics, logits, record, self.task.main_metric)
        display.epoch_done(record, improved)
        self._save(run, "epoch")
        for observer in self.observers:
            observer.epoch_ended(record)

    @staticmethod
    def _validation_logits(run: TrainingRun, val: TrainInputs) -> np.ndarray:
        """Validation logits in the data's order, each example predicted exactly once: with several
        processes each predicts every N-th example and the rows are gathered back. A sharded (FSDP) model
        needs every process in every forward pass, so there each process runs the whole split."""
        world, rank = (1, 0) if run.sharded else (run.accelerator.num_processes, run.accelerator.process_index)
        mine = list(range(rank, len(val), world))
        logits = val.predict(run.evaluated, mine)
        if world == 1:
            return logits
        rows = gather_object([(i, row) for i, row in zip(mine, logits, strict=True)])
        ordered = sorted(rows, key=lambda item: item[0])
        if [i for i, _ in ordered] != list(range(len(val))):
            raise RuntimeError("validation rows were lost or duplicated while gathering")
        return np.stack([row for _, row in ordered])

    # ------------------------------------------------------------------ helpers
    def _out_of_patience(self, run: TrainingRun) -> bool:
        """Early stopping: ``patience`` finished epochs in a row without a better main validation score (derived
        from the history, so a resumed run stops where the uninterrupted one would)."""
        patience, best = self.config.patience, run.result.best_epoch
        return patience is not None and best > 0 and run.position.epoch - best >= patience

    def _observe_step(self, run: TrainingRun, step_loss: torch.Tensor, rows: int) -> None:
        """Every ``log_every`` steps, the step's mean loss (reading it waits for the step) to the observers."""
        step = run.result.optimizer_steps
        watching = [o for o in self.observers if step % o.log_every == 0]
        if watching:
            loss = float(step_loss) / (rows / run.accelerator.num_processes)
            lr = float(run.scheduler.get_last_lr()[0])
            for observer in watching:
                observer.stepped(step, loss, lr)

    def _save(self, run: TrainingRun, reason: str) -> Path | None:
        if self.checkpoints is None:
            return None
        observed: dict[str, Any] = {}
        for observer in self.observers:
            observed.update(observer.state())
        self.last_checkpoint = run.save(self.checkpoints, reason, {"observers": observed})
        return self.last_checkpoint

    def _interrupted(self, run: TrainingRun) -> TrainingStopped:
        path = self._save(run, "interrupted")
        where = (f"checkpoint saved to {path}; continue with: lastpool train --resume {path.parent.parent}"
                 if path is not None else "no checkpoint saved")
        return TrainingStopped(f"interrupted at step {run.result.optimizer_steps} (epoch {run.position.epoch + 1}): "
                               f"{where}", exit_code=130)

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
