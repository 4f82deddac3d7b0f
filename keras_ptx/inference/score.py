"""The SIIM-ACR competition metric in numpy: mean over images of per-image Dice.

Dice is ``2 |P & T| / (|P| + |T|)`` and is 1 when prediction and truth are both empty, so a
single false-positive pixel on an empty image scores 0, as does a missed pneumothorax.
"""
from __future__ import annotations

import numpy as np


def dice_from_counts(intersection, pred_sum, truth_sum) -> np.ndarray:
    """Per-image Dice from pixel counts (any broadcastable shapes); 1 where both sums are 0."""
    intersection = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(pred_sum, dtype=np.float64) + np.asarray(truth_sum, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * intersection / np.where(total > 0, total, 1.0), 1.0)


def dice_per_image(pred, truth) -> np.ndarray:
    """Dice of each image of a batch of binary masks ``[B, ...]`` (nonzero = foreground) -> ``[B]``."""
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    flat = (pred.shape[0], int(np.prod(pred.shape[1:])))
    p = pred.reshape(flat) != 0
    t = truth.reshape(flat) != 0
    return dice_from_counts((p & t).sum(1), p.sum(1), t.sum(1))


def competition_score(pred, truth) -> float:
    """Mean per-image Dice over a batch ``[B, ...]``: the competition's leaderboard score."""
    scores = dice_per_image(pred, truth)
    if scores.size == 0:
        raise ValueError("no images to score")
    return float(scores.mean())
