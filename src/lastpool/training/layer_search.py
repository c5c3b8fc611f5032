"""``--layer auto``: pick the block to pool after, from one pass over the training texts.

Middle blocks of a pretrained decoder often classify better than the last one (which is shaped for
next-token prediction), and which block is best depends on the model and the task. One forward pass
with ``output_hidden_states`` gives the pooled vector after every block; a cross-validated linear probe
scores each block on the training split only (never the validation set, which stays an honest
measurement); the best block wins.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from sklearn.linear_model import RidgeClassifierCV, RidgeCV
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lastpool.models.backbones import HFBackbone
from lastpool.models.gpt import position_ids_from_mask
from lastpool.models.pooling import pool, pooled_index
from lastpool.training.inference import batched_forward, inference_module

PROBE_ALPHAS = (1.0, 10.0, 100.0, 1000.0)  # ridge strengths the probe chooses from (efficient leave-one-out)
# Layer scores already computed in this process, by a digest of their inputs (oldest dropped first).
_SCORED: dict[str, list[float]] = {}
_SCORED_KEPT = 8


def pooled_every_layer(backbone: HFBackbone, pooling: str, ids: Sequence[list[int]], pad_token_id: int,
                       padding_side: str, precision: str, quiet: bool = True) -> torch.Tensor:
    """Pooled hidden states after every block, [N, L, D] float32 in input order.

    Entry ``l - 1`` is what ``--layer l`` pools (the raw output of block ``l``); the last entry is the
    model's own output after its final norm, what a run without ``--layer`` pools.
    """
    runner = inference_module(backbone, precision)

    def every_layer(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = runner.model(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask), use_cache=False,
                               output_hidden_states=True, return_dict=True)
        index = pooled_index(attention_mask, pooling)
        # hidden_states[0] is the embedding output; [l] the output of block l (the last one normed).
        return torch.stack([pool(h, attention_mask, pooling, index) for h in outputs.hidden_states[1:]], dim=1)

    with Progress(disable=quiet, transient=True) as progress:
        task = progress.add_task("pooling after every layer", total=len(ids))
        return batched_forward(runner, every_layer, ids, pad_token_id, padding_side,
                               on_batch=lambda n: progress.advance(task, n))


def score_layers(features: torch.Tensor, labels: Sequence[Any], seed: int = 0, folds: int = 3,
                 classes: bool = True) -> list[float]:
    """Cross-validated accuracy of a standardized ridge probe on each layer's features (training data only);
    not ``classes`` (multi-label 0/1 rows, or values): the R² of a ridge regression onto the targets.

    Kept in this process by a digest of the inputs: ``lastpool tune``'s trials change training settings,
    not the data, and each would otherwise repeat this search (the bulk of a probe trial)."""
    y = np.asarray(labels)
    digest = hashlib.sha256(features.contiguous().numpy().tobytes())
    digest.update(json.dumps([y.tolist(), seed, folds, classes]).encode())
    key = digest.hexdigest()
    if key not in _SCORED:
        if len(_SCORED) >= _SCORED_KEPT:
            del _SCORED[next(iter(_SCORED))]
        _SCORED[key] = _cross_validated(features, y, seed, folds, classes)
    return list(_SCORED[key])


def _cross_validated(features: torch.Tensor, y: np.ndarray, seed: int, folds: int, classes: bool) -> list[float]:
    if not classes:
        return [float(cross_val_score(make_pipeline(StandardScaler(), RidgeCV(alphas=PROBE_ALPHAS)),
                                      features[:, layer].numpy().astype(np.float64), y,
                                      cv=KFold(n_splits=folds, shuffle=True, random_state=seed)).mean())
                for layer in range(features.shape[1])]
    folds = max(2, min(folds, int(np.bincount(y).min()))) if np.bincount(y).min() >= 2 else 0
    scores = []
    for layer in range(features.shape[1]):
        x = features[:, layer].numpy().astype(np.float64)
        probe = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=PROBE_ALPHAS))
        if folds == 0:  # a class with one example: score on the training data itself
            scores.append(float(probe.fit(x, y).score(x, y)))
            continue
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        scores.append(float(cross_val_score(probe, x, y, cv=cv).mean()))
    return scores


def best_layer(scores: Sequence[float]) -> int:
    """The 1-based block with the best score (the earlier one on a tie: fewer blocks to run)."""
    return int(np.argmax(np.asarray(scores))) + 1
