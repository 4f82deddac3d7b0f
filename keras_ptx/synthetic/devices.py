"""Radiopaque extras drawn at full resolution: tubes, lines, ECG electrodes, side markers.

Sick patients (more often on AP films) carry endotracheal and nasogastric tubes, central
venous lines and chest drains; all are thin bright curves a model must learn to look past.
Chest drains appear as often in negatives as in positives, so they are no shortcut.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from keras_ptx.synthetic.raster import Frame, blur, chaikin, stroke

# name: (probability on an AP film, on a PA film)
DEVICES = {"ecg_leads": (0.35, 0.08), "endotracheal_tube": (0.2, 0.0),
           "nasogastric_tube": (0.15, 0.02), "central_line": (0.25, 0.05),
           "chest_drain": (0.07, 0.05), "side_marker": (0.5, 0.5)}


def _curve(rng, points, jitter=0.01) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64) + rng.normal(0, jitter, (len(points), 2))
    return chaikin(pts, closed=False, iterations=4)


def _tube(canvas, frame: Frame, pts, width: float, value: float = 255.0):
    """A hollow tube: two bright walls with a fainter lumen."""
    px = frame.px(pts)
    stroke(canvas, px, width * frame.unit, value * 0.45)
    stroke(canvas, px, max(1.0, 0.25 * width * frame.unit), value)


def draw_devices(image: np.ndarray, frame: Frame, view: str, rng: np.random.Generator) -> list[str]:
    """Draw a random set of devices on the float ``image`` (in place; ``frame`` at the image's
    resolution); returns their names."""
    chosen = [name for name, (ap, pa) in DEVICES.items()
              if rng.random() < (ap if view == "AP" else pa)]
    if not chosen:
        return []
    canvas = np.zeros(image.shape, np.uint8)
    side = int(rng.choice((-1, 1)))
    for name in chosen:
        if name == "ecg_leads":
            for _ in range(int(rng.integers(2, 5))):
                c = np.array([rng.uniform(0.15, 0.85), rng.uniform(0.05, 0.8)])
                t = np.linspace(0, 2 * math.pi, 20)
                ring = c + 0.012 * np.stack([np.cos(t), np.sin(t)], 1)
                stroke(canvas, frame.px(ring), 0.004 * frame.unit, 230)
                stroke(canvas, frame.px(np.array([c, c])), 0.008 * frame.unit, 255)
                end = c + rng.normal(0, 0.25, 2)
                wire = _curve(rng, [c, (c + end) / 2 + rng.normal(0, 0.05, 2), end], 0.02)
                stroke(canvas, frame.px(wire), 0.003 * frame.unit, 200)
        elif name == "endotracheal_tube":
            tip = 0.22 + rng.uniform(0, 0.08)
            _tube(canvas, frame, _curve(rng, [(0.505, -0.05), (0.505, 0.1), (0.5, tip)], 0.004),
                  0.014)
        elif name == "nasogastric_tube":
            _tube(canvas, frame, _curve(rng, [(0.49, -0.05), (0.485, 0.3), (0.5, 0.6),
                                              (0.58, 0.76), (0.64, 0.8)], 0.008), 0.007)
        elif name == "central_line":
            start = (0.5 + side * 0.33, 0.12)
            _tube(canvas, frame, _curve(rng, [start, (0.5 + side * 0.2, 0.16),
                                              (0.5 + side * 0.06, 0.22), (0.47, 0.34)]), 0.005)
        elif name == "chest_drain":
            s = int(rng.choice((-1, 1)))
            _tube(canvas, frame, _curve(rng, [(0.5 + s * 0.5, 0.62), (0.5 + s * 0.40, 0.55),
                                              (0.5 + s * 0.33, 0.35), (0.5 + s * 0.22, 0.2)],
                                        0.015), 0.016)
        elif name == "side_marker":
            # placed on the cassette, not the patient: pixel position, drawn in a small patch
            # (putText is slow on a large canvas)
            size = image.shape[0]
            scale = size / 400
            box = int(30 * scale)
            x = int(rng.uniform(0.03, 0.12) * size)
            y = int(rng.uniform(0.03, 0.08) * size)
            cv2.putText(canvas[y:y + box, x:x + box], "R" if rng.random() < 0.7 else "L",
                        (0, int(24 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, 255,
                        max(1, int(round(scale * 2))), cv2.LINE_AA)
    strength = rng.uniform(0.15, 0.35)
    image += blur(canvas, 0.4 * image.shape[0] / 1024) * (strength / 255.0)
    return chosen
