"""The one rule that maps an original radiograph onto the square record grid, and back.

Non-square images are padded with zeros at the bottom and right to a square of their longest
side, then resized to ``size`` x ``size`` (area interpolation for images; masks are resized as
fractions and thresholded at 0.5). ``from_square`` undoes it for a probability map or mask.
"""
from __future__ import annotations

import cv2
import numpy as np

RULE = "pad-bottom-right-to-square-then-resize"


def pad_to_square(array: np.ndarray) -> np.ndarray:
    h, w = array.shape[:2]
    side = max(h, w)
    if h == w:
        return array
    out = np.zeros((side, side) + array.shape[2:], dtype=array.dtype)
    out[:h, :w] = array
    return out


def image_to_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) image -> uint8 (size, size)."""
    square = pad_to_square(image)
    if square.shape[0] == size:
        return square
    interp = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interp)


def mask_to_square(mask: np.ndarray, size: int) -> np.ndarray:
    """{0,1} (H, W) mask -> uint8 {0,1} (size, size): area-resized, thresholded at 0.5."""
    square = pad_to_square(mask.astype(np.float32))
    if square.shape[0] != size:
        interp = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR
        square = cv2.resize(square, (size, size), interpolation=interp)
    return (square >= 0.5).astype(np.uint8)


def from_square(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(size, size) float map on the record grid -> (height, width) on the original grid."""
    side = max(height, width)
    array = np.asarray(array, dtype=np.float32)
    if array.shape[0] != side:
        array = cv2.resize(array, (side, side), interpolation=cv2.INTER_LINEAR)
    return array[:height, :width]
