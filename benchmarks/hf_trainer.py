"""The transformers baseline: AutoModelForSequenceClassification + Trainer on the same split as lastpool.

Used by the benchmark scripts as a separate process (so its wall time and peak RSS are its own); also
runnable alone. Loads the dequantized weights that lastpool cached for a GGUF file (the same float32
weights lastpool fine-tunes), splits with lastpool's own stratified split for the seed, tokenizes with
truncation to ``--max-length`` and pads per batch with DataCollatorWithPadding. ``--best`` switches on
this machine's best Trainer options (bf16 autocast, group_by_length sampling); otherwise Trainer's
defaults. Prints one JSON object: kept (best validation macro-F1 epoch) and final-epoch metrics, train
time and samples/s. ``--eval-data FILE`` also scores the final model on that labelled file (as a held-out
test set: ``eval_accuracy`` / ``eval_macro_f1``, and ``eval_seconds`` so a caller can leave that scoring
out of the training time).

    python benchmarks/hf_trainer.py --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --seed 0 --best
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from lastpool.data.labels import LabelSet
from lastpool.data.split import stratified_split
from lastpool.data.tables import Table, read_table
from lastpool.models.backbones import load_backbone
from lastpool.text.tokenizers import TEXT_SLOT, load_pretrained_tokenizer


class Rows(torch.utils.data.Dataset):
    def __init__(self, encodings: list[list[int]], labels: list[int]) -> None:
        self.encodings, self.labels = encodings, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.encodings[i], "attention_mask": [1] * len(self.encodings[i]),
                "labels": self.labels[i]}


class History(TrainerCallback):
    """Collects each epoch's evaluation metrics."""

    def __init__(self) -> None:
        self.evals: list[dict] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        self.evals.append({"epoch": state.epoch, **(metrics or {})})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="GGUF file or transformers model folder")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                             / "financial_phrasebank" / "sentences_allagree.txt"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--prompt", default=TEXT_SLOT)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--best", action="store_true", help="bf16=True and group_by_length sampling")
    parser.add_argument("--eval-at-end", action="store_true",
                        help="evaluate once after training (train_runtime then excludes evaluation)")
    parser.add_argument("--save", default=None, help="save the trained model and tokenizer to this folder")
    parser.add_argument("--eval-data", default=None,
                        help="also score the final model on this labelled file (read like --data)")
    args = parser.parse_args()

    table = read_table(args.data)
    assert table.labels is not None
    labels = LabelSet.from_labels(table.labels)
    y = labels.encode(table.labels)
    test = read_table(args.eval_data) if args.eval_data else None
    train_idx, val_idx = stratified_split(table.labels, 0.1, args.seed)
    tokenizer = load_pretrained_tokenizer(args.model)

    def encode(raw: list[str]) -> list[list[int]]:
        texts = [args.prompt.replace(TEXT_SLOT, t) for t in raw]
        return tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]

    ids = encode(table.texts)
    _, info = load_backbone(args.model)  # the dequantized float32 weights, cached by lastpool
    folder = info.get("cache") or args.model
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=len(labels.names), id2label=dict(enumerate(labels.names)),
        label2id={n: i for i, n in enumerate(labels.names)}, pad_token_id=tokenizer.pad_token_id,
        dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id

    def metrics(pred) -> dict:  # noqa: ANN001
        predicted = np.argmax(pred.predictions, axis=-1)
        return {"accuracy": accuracy_score(pred.label_ids, predicted),
                "macro_f1": f1_score(pred.label_ids, predicted, average="macro")}

    history = History()
    with tempfile.TemporaryDirectory() as out:
        options: dict = {"bf16": True, "train_sampling_strategy": "group_by_length"} if args.best else {}
        training_args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
            num_train_epochs=args.epochs, max_steps=args.max_steps, learning_rate=args.lr, seed=args.seed,
            eval_strategy="no" if args.eval_at_end else "epoch", save_strategy="no", report_to="none",
            use_cpu=True, disable_tqdm=True,
            logging_strategy="no", **options)
        trainer = Trainer(model=model, args=training_args,
                          train_dataset=Rows([ids[i] for i in train_idx], [y[i] for i in train_idx]),
                          eval_dataset=Rows([ids[i] for i in val_idx], [y[i] for i in val_idx]),
                          data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metrics,
                          callbacks=[history])
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
        if args.eval_at_end:
            trainer.evaluate()
        scored = score_file(trainer, encode, labels, test) if test is not None else {}
        if args.save:
            trainer.save_model(args.save)
            tokenizer.save_pretrained(args.save)
    evals = [e for e in history.evals if "eval_accuracy" in e]
    kept = max(evals, key=lambda e: e["eval_macro_f1"]) if evals else {}
    print(json.dumps({
        "seed": args.seed, "best_options": args.best,
        "accuracy": kept.get("eval_accuracy"), "macro_f1": kept.get("eval_macro_f1"), "best_epoch": kept.get("epoch"),
        "final_accuracy": evals[-1]["eval_accuracy"] if evals else None,
        "train_seconds_incl_eval": seconds, "train_runtime": output.metrics.get("train_runtime"),
        "train_samples_per_second": output.metrics.get("train_samples_per_second"),
        "optimizer_steps": output.global_step, "evals": evals, **scored,
    }))


def score_file(trainer: Trainer, encode: Callable[[list[str]], list[list[int]]], labels: LabelSet,
               test: Table) -> dict:
    """The final model's accuracy / macro-F1 on a separate labelled table, and the seconds that took."""
    assert test.labels is not None
    started = time.perf_counter()
    y = labels.encode(test.labels, source=test.source)
    output = trainer.predict(Rows(encode(test.texts), y))
    predicted = np.argmax(output.predictions, axis=-1)
    # Compared with the labels predict() hands back beside the predictions: with group_by_length it may
    # return rows in another order than the input's.
    truth = output.label_ids
    return {"eval_data": test.source, "eval_n": len(y), "eval_accuracy": accuracy_score(truth, predicted),
            "eval_macro_f1": f1_score(truth, predicted, average="macro"),
            "eval_seconds": time.perf_counter() - started}


if __name__ == "__main__":
    main()
