"""The training loop, on Accelerate so the same code runs on one CPU process or many GPUs.

AdamW, linear warmup then cosine decay, gradient clipping and accumulation, length-bucketed batches,
evaluation every epoch, and the best epoch by validation macro-F1 kept. The loss is read back from the
device only when the progress bar refreshes, not every step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
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
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from lastpool.config import RunConfig
from lastpool.data.batching import EncodedDataset, LengthBucketSampler, TokenDropoutCollator
from lastpool.evaluation.metrics import classification_metrics
from lastpool.training.features import FeatureDataset, collate_features
from lastpool.training.inference import predict_logits, softmax
from lastpool.training.precision import MasterWeights, attention_for_training


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


def evaluate_logits(logits: np.ndarray, labels: list[int], label_names: list[str]) -> dict[str, Any]:
    probabilities = softmax(logits)
    predictions = probabilities.argmax(axis=-1).tolist()
    metrics = classification_metrics(labels, predictions, label_names, probabilities)
    metrics["loss"] = metrics.get("log_loss", float("nan"))
    return metrics


class Trainer:
    """Trains a SequenceClassifier on encoded data; keeps the best epoch's weights in the model."""

    def __init__(self, config: RunConfig, pad_token_id: int, label_names: list[str], quiet: bool = False,
                 console: Console | None = None, precision: str = "fp32") -> None:
        self.config = config
        self.pad_token_id = pad_token_id
        self.label_names = label_names
        self.quiet = quiet
        self.precision = precision
        self.console = console or Console(stderr=True, soft_wrap=True)

    def fit(self, model: nn.Module, train: EncodedDataset | FeatureDataset,
            val: EncodedDataset | FeatureDataset) -> TrainResult:
        """Train ``model`` on token ids, or (a probe) a head on precomputed pooled features."""
        # bf16 is handled here rather than by Accelerator(mixed_precision=...): Accelerate's process-wide
        # state cannot change precision between two fits in one process, and its autocast re-casts every
        # weight in every pass. bf16 trains the model's own weights in bf16 with float32 masters
        # (training/precision.py); a probe's head trains in float32 on float32 features.
        accelerator = Accelerator(gradient_accumulation_steps=self.config.grad_accum)
        on_features = isinstance(train, FeatureDataset)
        master = MasterWeights(model) if self.precision == "bf16" and not on_features else None
        try:
            with attention_for_training(model, accelerator.device):
                return self._fit(accelerator, model, train, val, master)
        finally:
            if master is not None:
                master.restore()

    def _fit(self, accelerator: Accelerator, model: nn.Module, train: EncodedDataset | FeatureDataset,
             val: EncodedDataset | FeatureDataset, master: MasterWeights | None) -> TrainResult:
        cfg = self.config
        on_features = isinstance(train, FeatureDataset)
        sampler = LengthBucketSampler(train.lengths, cfg.batch_size, seed=cfg.seed, shuffle=True)
        collate = collate_features if on_features else TokenDropoutCollator(
            self.pad_token_id, cfg.padding_side, rate=cfg.token_dropout, seed=cfg.seed)
        loader = DataLoader(train, batch_sampler=sampler, collate_fn=collate)
        steps_per_epoch = math.ceil(len(sampler) / cfg.grad_accum)
        total_steps = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        optimizer = make_optimizer(master.masters if master else model, cfg.lr, cfg.weight_decay)
        scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.warmup_steps(total_steps), total_steps)
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

        result = TrainResult()
        best_f1 = -1.0
        best_state: dict[str, torch.Tensor] | None = None
        progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=self.console, disable=self.quiet, transient=True,
        )
        with progress:
            task = progress.add_task("train", total=total_steps, epoch=f"1/{cfg.epochs}", loss="-")
            for epoch in range(cfg.epochs):
                if result.optimizer_steps >= total_steps:
                    break
                sampler.set_epoch(epoch)
                model.train()
                started = time.perf_counter()
                loss_sum = torch.zeros((), device=accelerator.device)
                seen = 0
                for batch in loader:
                    with accelerator.accumulate(model):
                        logits = (model(batch["features"]) if on_features
                                  else model(batch["input_ids"], batch["attention_mask"]))
                        loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=cfg.label_smoothing)
                        accelerator.backward(loss)
                        if master is not None:
                            master.collect_grads()
                        if accelerator.sync_gradients and cfg.grad_clip > 0:
                            if master is not None:
                                torch.nn.utils.clip_grad_norm_(master.masters, cfg.grad_clip, foreach=True)
                            else:
                                accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                        optimizer.step()
                        if master is not None and accelerator.sync_gradients:
                            master.push()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    rows = batch["labels"].shape[0]
                    loss_sum += loss.detach() * rows
                    seen += rows
                    if accelerator.sync_gradients:
                        result.optimizer_steps += 1
                        if not self.quiet and (result.optimizer_steps % 10 == 0 or result.optimizer_steps == 1):
                            progress.update(task, completed=result.optimizer_steps, epoch=f"{epoch + 1}/{cfg.epochs}",
                                            loss=f"{loss.item():.4f}")
                        if result.optimizer_steps >= total_steps:
                            break
                seconds = time.perf_counter() - started
                result.train_seconds += seconds
                result.train_samples += seen
                metrics, logits = self._evaluate(accelerator.unwrap_model(model), val)
                record = {
                    "epoch": epoch + 1,
                    "train_loss": float(loss_sum.item()) / max(seen, 1),
                    "val_loss": metrics["loss"],
                    "val_accuracy": metrics["accuracy"],
                    "val_macro_f1": metrics["macro_f1"],
                    "seconds": seconds,
                    "lr": float(scheduler.get_last_lr()[0]),
                    "steps": result.optimizer_steps,
                }
                improved = metrics["macro_f1"] > best_f1
                if improved:
                    best_f1 = metrics["macro_f1"]
                    result.best_epoch = epoch + 1
                    result.val_metrics = metrics
                    result.val_logits = logits
                    unwrapped = accelerator.unwrap_model(model)
                    best_state = (master.float_state_dict(unwrapped) if master is not None
                                  else {k: v.detach().clone() for k, v in unwrapped.state_dict().items()})
                result.history.append(record)
                if not self.quiet:
                    progress.console.print(self._epoch_line(record, cfg.epochs, improved))
        if master is not None:
            master.restore()
        if best_state is not None:
            accelerator.unwrap_model(model).load_state_dict(best_state)
        if not self.quiet:
            self.console.print(self._history_table(result))
        accelerator.free_memory()
        return result

    def _evaluate(self, model: nn.Module, val: EncodedDataset | FeatureDataset) -> tuple[dict[str, Any], np.ndarray]:
        if isinstance(val, FeatureDataset):
            model.eval()
            with torch.inference_mode():
                logits = model(val.features.to(next(model.parameters()).device)).float().cpu().numpy()
        else:
            logits = predict_logits(model, val.ids, self.pad_token_id, self.config.padding_side,
                                    precision=self.precision)
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
