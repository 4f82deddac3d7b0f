"""The one rule that maps an original radiograph onto the square record grid, and back.

A non-square image is padded at the bottom and right to a square of its longest side, then
resized to ``size`` x ``size`` (area interpolation when shrinking, bilinear when growing; masks
are resized as fractions and thresholded at 0.5). Padding at the bottom/right keeps the image
at the grid's origin, so :func:`from_square` is a resize and a plain crop.

Images are padded by *edge replication* (each padding row or column repeats the image's last
one), masks with 0 (no label outside the image). Zero padding drew a step where the image ends,
which a network took for a pleural line (issue #21). Replication is continuous there and adds
no structure along the boundary. Reflection would fold any gradient that reaches the border
into a ridge along it (a line again), mirror a real pleural line near the border into
unlabelled padding, and cannot fill a pad taller than the image (past 2:1; ``tf.pad`` refuses
it); replication fills any pad. Its cost: what touches the border (noise, a marker) is smeared
into streaks across the padding, perpendicular to the boundary.
``keras_ptx.serving.export.to_square_tf`` is the same rule in TensorFlow ops.
"""
from __future__ import annotations

import cv2
import numpy as np

# Recorded in each records manifest (``options.geometry``); records built with another rule
# are refused (``keras_ptx.data.manifest.geometry_problem``).
RULE = "pad-bottom-right-replicating-edges-to-square-then-resize"


def pad_to_square(array: np.ndarray, label: bool = False) -> np.ndarray:
    """A 2-D array padded at the bottom/right to its longest side: edges replicated, or with 0
    when ``label`` (a mask)."""
    h, w = array.shape[:2]
    side = max(h, w)
    border = cv2.BORDER_CONSTANT if label else cv2.BORDER_REPLICATE
    return cv2.copyMakeBorder(array, 0, side - h, 0, side - w, border, value=0)


def _resize(square: np.ndarray, size: int) -> np.ndarray:
    if square.shape[0] == size:
        return square
    interp = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


def image_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) image -> uint8 (size, size)."""
    return _resize(pad_to_square(image), size)


def mask_to_square(mask: np.ndarray, size: int) -> np.ndarray:
    """{0,1} (H, W) mask -> uint8 {0,1} (size, size): area-resized, thresholded at 0.5."""
    square = _resize(pad_to_square(mask.astype(np.float32), label=True), size)
    return (square >= 0.5).astype(np.uint8)


def from_square(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(size, size) float map on the record grid -> (height, width) on the original grid."""
    side = max(height, width)
    array = np.asarray(array, dtype=np.float32)
    if array.shape[0] != side:
        array = cv2.resize(array, (side, side), interpolation=cv2.INTER_LINEAR)
    return array[:height, :width]
