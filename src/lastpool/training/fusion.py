"""Adding the bag-of-words model's margins to the LM's logits, at a weight chosen on the validation split.

The LM reads one pooled vector; the bag-of-words model reads every n-gram. Where texts hinge on rare
identifiers (many classes, few texts each) the two err on different texts, and their sum beats both.
Where the LM is already much better, the chosen weight is 0 and the model is the LM alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lastpool.evaluation.calibration import fit_temperature, nll

# The bag-of-words model's candidate shares of the fused score, from the LM alone (0) to nine tenths. A
# grid rather than an optimiser: a few hundred validation texts do not pin the share down more finely.
SHARES = tuple(round(0.1 * i, 1) for i in range(10))


@dataclass(frozen=True)
class FusionChoice:
    share: float  # the bag-of-words model's share, each side first scaled by its own fitted temperature
    weight: float  # the same mix as the factor on the margins added to the LM's raw logits
    lm_temperature: float  # the temperature fitted to the LM's validation logits alone
    log_loss: dict[float, float]  # validation log loss (temperature-scaled) per candidate share


def fusion_note(fusion: dict[str, Any]) -> str:
    """What fusing did, as a clause for the CLI summary (``fusion``: ``metrics.json``'s record)."""
    if not fusion.get("share"):
        return "the bag-of-words model is not fused in (share 0 chosen on validation)"
    alone = float(fusion["language_model"]["accuracy"])
    return f"fused with the bag-of-words model at share {fusion['share']:g} (the language model alone: {alone:.4f})"


def fuse(lm_logits: np.ndarray, bow_scores: np.ndarray, weight: float) -> np.ndarray:
    return np.asarray(lm_logits, dtype=np.float32) + np.float32(weight) * np.asarray(bow_scores, dtype=np.float32)


def choose_weight(val_logits: np.ndarray, val_scores: np.ndarray, val_y: Sequence[int],
                  shares: Sequence[float] = SHARES) -> FusionChoice:
    """The share with the lowest validation log loss once a temperature is fitted for it.

    Each side is first divided by its own fitted temperature, so a share means the same for a probe's
    small logits as for a fine-tuned model's large ones. Log loss rather than accuracy: a proper score
    moves with every text, not only the few near a tie, so it is steadier on a small validation split.
    Ties go to the smaller share (the LM alone, when nothing helps).
    """
    lm_temperature, bow_temperature = fit_temperature(val_logits, val_y), fit_temperature(val_scores, val_y)
    losses: dict[float, float] = {}
    for share in shares:
        if not 0.0 <= share < 1.0:
            raise ValueError(f"a bag-of-words share must be in [0, 1) (got {share})")
        fused = fuse(val_logits, val_scores, _weight(share, lm_temperature, bow_temperature))
        losses[float(share)] = nll(fused, val_y, fit_temperature(fused, val_y))
    best = min(losses, key=lambda a: (round(losses[a], 6), a))
    return FusionChoice(best, _weight(best, lm_temperature, bow_temperature), lm_temperature, losses)


def _weight(share: float, lm_temperature: float, bow_temperature: float) -> float:
    """(1 - a) lm / T_lm + a bow / T_bow, rescaled to lm + w bow (the final temperature takes the scale)."""
    return share * lm_temperature / ((1.0 - share) * bow_temperature)
