"""The SIIM-ACR competition metric in numpy (mean over images of per-image Dice), and the
image-level scores of the "is there a pneumothorax" question (ROC AUC by ranks, sensitivity, ...).

Dice is ``2 |P & T| / (|P| + |T|)`` and is 1 when prediction and truth are both empty, so a
single false-positive pixel on an empty image scores 0, as does a missed pneumothorax.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


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


def roc_auc(scores, labels) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney U, ties counted half); None for one class."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate, threshold) at every distinct score, from (0, 0)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]     # end of each tie group
    tp = np.cumsum(labels)[last]
    fp = np.cumsum(~labels)[last]
    tpr = np.r_[0.0, tp / max(int(labels.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~labels).sum()), 1)]
    return fpr, tpr, np.r_[np.inf, scores[last]]


def classification_metrics(scores, labels, threshold: float = 0.5) -> dict:
    """Accuracy, sensitivity, specificity (None when undefined) of ``score >= threshold``."""
    predicted = np.asarray(scores).ravel() >= threshold
    labels = np.asarray(labels).ravel().astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    return {
        "threshold": float(threshold),
        "accuracy": float((predicted == labels).mean()) if labels.size else None,
        "sensitivity": float((predicted & labels).sum() / positives) if positives else None,
        "specificity": float((~predicted & ~labels).sum() / negatives) if negatives else None,
        "auc": roc_auc(scores, labels),
    }
