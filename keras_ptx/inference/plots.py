"""Pictures for people: mask overlays on radiographs, score-vs-parameter charts and the ROC.

Overlays are drawn with OpenCV at the image's own resolution (prediction: red fill and
outline; truth: green outline). Charts use matplotlib's object API (no pyplot state, no GUI
backend), so they work in worker threads and on headless machines.
"""
from __future__ import annotations

import io
import re

import cv2
import numpy as np
from matplotlib.figure import Figure

from keras_ptx.fileio import write_atomic

PRED_RGB = (230, 40, 40)
TRUTH_RGB = (40, 210, 60)


def overlay(gray: np.ndarray, pred=None, truth=None, caption: str = "",
            min_side: int = 0) -> np.ndarray:
    """uint8 (H, W) radiograph + {0,1} masks of the same shape -> uint8 RGB picture, enlarged
    (masks by nearest neighbour) when its longer side is under ``min_side``."""
    gray = np.asarray(gray, dtype=np.uint8)
    factor = min_side / max(gray.shape) if min_side else 1.0
    if factor > 1:
        size = (round(gray.shape[1] * factor), round(gray.shape[0] * factor))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_LINEAR)
        pred, truth = (None if m is None else
                       cv2.resize(np.asarray(m, np.uint8), size, interpolation=cv2.INTER_NEAREST)
                       for m in (pred, truth))
    rgb = np.repeat(gray[..., None], 3, axis=2)
    thickness = max(1, max(rgb.shape[:2]) // 400)
    if pred is not None and np.any(pred):
        fill = np.asarray(pred, dtype=bool)
        rgb[fill] = (0.6 * rgb[fill] + 0.4 * np.array(PRED_RGB)).astype(np.uint8)
        _outline(rgb, pred, PRED_RGB, thickness)
    if truth is not None and np.any(truth):
        _outline(rgb, truth, TRUTH_RGB, thickness)
    if caption:
        scale = max(0.35, max(rgb.shape[:2]) / 1400)
        for color, width in (((0, 0, 0), 3 * thickness), ((255, 255, 255), thickness)):
            cv2.putText(rgb, caption, (4 * thickness, int(24 * scale) + 2 * thickness),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, color, width, cv2.LINE_AA)
    return rgb


def _outline(rgb, mask, color, thickness):
    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(rgb, contours, -1, color, thickness)


def safe_filename(name: str) -> str:
    """An image id made safe as a file name (DICOM UIDs already are)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:150] or "image"


def save_png(path, rgb: np.ndarray) -> None:
    """Write ``rgb`` as a PNG to ``path`` (a local path or a URL), whole or not at all."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"{path}: could not encode the PNG")
    write_atomic(path, data.tobytes())


def _save_figure(fig: Figure, path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())


def plot_profiles(path, title: str, profiles: dict) -> None:
    """One panel per parameter: the best score reachable at each of its values."""
    fig = Figure(figsize=(3.2 * max(1, len(profiles)), 3.0), layout="constrained")
    axes = fig.subplots(1, max(1, len(profiles)), squeeze=False)[0]
    for ax, (name, (values, scores)) in zip(axes, profiles.items()):
        ax.plot(values, scores, marker="o", markersize=3)
        best = int(np.argmax(scores))
        ax.axvline(values[best], color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel(name)
        ax.set_ylabel("competition score")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _save_figure(fig, path)


def plot_roc(path, fpr, tpr, auc) -> None:
    fig = Figure(figsize=(4, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}" if auc is not None else None)
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel("false-positive rate (1 - specificity)")
    ax.set_ylabel("true-positive rate (sensitivity)")
    ax.set_title("image level: pneumothorax present")
    if auc is not None:
        ax.legend(loc="lower right")
    _save_figure(fig, path)
