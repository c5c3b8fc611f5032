"""Which prompt and which block a frozen SmolLM2 probes best, on every set of the dev suite.

For each set of ``suite.py`` (same samples and splits) and each candidate template: one pass pools the
last token after every block (``lastpool.training.layer_search.pooled_every_layer``, bf16), the
cross-validated ridge probe of ``--layer auto`` scores every block on the training texts, and a
standardized logistic regression fitted on the training texts is scored on the evaluation texts at the
block ``--layer auto`` picks and at the best block in hindsight. The zero-shot columns score the label
words' output rows on the last block (raw and with contextual calibration), as ``--mode zeroshot`` does.
This is what chose ``--prompt auto`` and showed that ``--layer auto`` lands near the best block.

    python benchmarks/prompt_layers.py [--sets fpb,snips,stackoverflow20] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from suite import DEFAULT_DATA_ROOT, SETS, prepare

from lastpool.data.labels import LabelSet
from lastpool.models.backbones import load_backbone
from lastpool.models.label_head import CONTENT_FREE, content_free_bias, label_rows, output_embeddings
from lastpool.text.label_words import AUTO_TEMPLATE, label_words
from lastpool.text.tokenizers import TextEncoder, load_pretrained_tokenizer
from lastpool.training.layer_search import best_layer, pooled_every_layer, score_layers

MODEL = DEFAULT_DATA_ROOT.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATES = {
    "plain": lambda words: "{text}",
    "label": lambda words: "{text}\nLabel:",
    "about (auto)": lambda words: AUTO_TEMPLATE,
    "choice": lambda words: "{text}\nLabel (" + ", ".join(words) + "):",
}


def accuracy_at(features: torch.Tensor, n: int, y_train: np.ndarray, y_eval: np.ndarray, layer: int) -> float:
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=500))
    probe.fit(features[:n, layer - 1].numpy(), y_train)
    return float((probe.predict(features[n:, layer - 1].numpy()) == y_eval).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    backbone, _ = load_backbone(str(MODEL))
    tokenizer = load_pretrained_tokenizer(str(MODEL))
    embeddings = output_embeddings(backbone, str(MODEL))
    with tempfile.TemporaryDirectory() as work:
        for name in args.sets.split(","):
            prep = prepare(SETS[name], args.seed, DEFAULT_DATA_ROOT, None, Path(work))
            labels = LabelSet.from_labels(prep.train_labels)
            y_train = np.array(labels.encode(prep.train_labels))
            y_eval = np.array(labels.encode(prep.score_labels))
            words = label_words(list(labels.names))
            rows = label_rows(embeddings, tokenizer, words)
            for template_name, template in TEMPLATES.items():
                encoder = TextEncoder(tokenizer, 128, template(words))
                started = time.perf_counter()
                every = pooled_every_layer(backbone, "last", encoder.encode(prep.train_texts + prep.score_texts),
                                           encoder.pad_token_id, "right", "bf16")
                seconds = time.perf_counter() - started
                n = len(prep.train_texts)
                scores = score_layers(every[:n], y_train.tolist(), seed=args.seed)
                chosen = best_layer(scores)
                at_layer = [accuracy_at(every, n, y_train, y_eval, layer) for layer in range(1, every.shape[1] + 1)]
                content_free = [ids for ids in encoder.encode(list(CONTENT_FREE)) if ids]
                cf = pooled_every_layer(backbone, "last", content_free, encoder.pad_token_id, "right", "bf16")
                logits = every[n:, -1] @ rows.T
                bias = content_free_bias(cf[:, -1] @ rows.T)
                print(json.dumps({
                    "set": name, "template": template_name, "pass_seconds": round(seconds, 1),
                    "auto_layer": chosen, "cv_at_auto": round(scores[chosen - 1], 4),
                    "eval_at_auto": round(at_layer[chosen - 1], 4), "best_layer": int(np.argmax(at_layer)) + 1,
                    "eval_at_best": round(max(at_layer), 4),
                    "zeroshot": round(float((logits.argmax(-1).numpy() == y_eval).mean()), 4),
                    "zeroshot_calibrated": round(float(((logits + bias).argmax(-1).numpy() == y_eval).mean()), 4),
                }), flush=True)


if __name__ == "__main__":
    main()
