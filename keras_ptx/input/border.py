"""U-Net's border weights of a mask (Ronneberger et al., 2015), free of TensorFlow.

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``, with d1 and d2 the Euclidean
distances (in pixels of the grid) from x to the nearest and the second-nearest lesion, a lesion
being an 8-connected component of the mask. Choices:

- w_c = 1 everywhere: class balance is left to the Dice term beside it (the inverse pixel
  frequency of pneumothorax, ~1% of a positive image, would swamp the border term).
- The border term weighs pixels off the lesions only, as in U-Net (the gaps between objects);
  lesion pixels weigh w_c.
- One lesion: d2 = d1, so its surroundings weigh as if a second lesion touched it there (most
  SIIM masks are one lesion, which d2 = infinity would leave unweighted). No lesion: w = w_c.

``train.loss.border_sigma`` is in pixels at 1024 (the SIIM DICOMs' side), scaled to the records'
grid (:func:`border_for`). Training computes the weights from each augmented mask in the
augmentation workers (:mod:`keras_ptx.input.workers`, :func:`keras_ptx.input.policy.augment_batch`)
and validation from its masks, only when ``train.loss.border_bce`` is above 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from keras_ptx.config import Config

REFERENCE_SIDE = 1024       # border_sigma's pixels are pixels of a 1024 x 1024 radiograph


@dataclass(frozen=True)
class Border:
    w0: float
    sigma: float            # in pixels of the grid the weights are computed on


def border_for(config: Config) -> Border | None:
    """The border weighting of ``config`` on its records' grid; None when the term is off."""
    loss = config.train.loss
    if not loss.border_bce:
        return None
    return Border(loss.border_w0, loss.border_sigma * config.data.image_size / REFERENCE_SIDE)


def border_weights(mask: np.ndarray, border: Border) -> np.ndarray:
    """float32 weights of the shape of ``mask`` (2-D, lesion where above 0); see module doc.

    Exact in float32 at a fraction of the whole-image cost: beyond ``reach`` (d1 + d2) the term
    is below half a float32 step of 1, so 1 + term rounds to 1. Each lesion's distances (OpenCV's
    exact Euclidean transform, ``DIST_MASK_PRECISE``) are computed only in its bounding box
    grown by ``reach``, which holds every pixel that lesion can weigh, and folded into the
    nearest and second-nearest as they come.
    """
    weights = np.ones(mask.shape, np.float32)
    if not border.w0 or not mask.any():
        return weights
    count, labels = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    reach = border.sigma * math.sqrt(2 * math.log(border.w0 * 2.0 ** 24))
    grow = math.ceil(reach)
    d1 = np.full(mask.shape, np.inf, np.float32)
    d2 = d1.copy()
    for k, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        window = (slice(max(rows.start - grow, 0), rows.stop + grow),
                  slice(max(cols.start - grow, 0), cols.stop + grow))
        d = cv2.distanceTransform((labels[window] != k).astype(np.uint8), cv2.DIST_L2,
                                  cv2.DIST_MASK_PRECISE)
        np.minimum(d2[window], np.maximum(d1[window], d), out=d2[window])
        np.minimum(d1[window], d, out=d1[window])
    total = d1 + (d1 if count == 2 else d2)      # one lesion: d2 = d1
    near = (labels == 0) & (total < reach)
    weights[near] += np.float32(border.w0) * np.exp(-np.square(total[near])
                                                    / np.float32(2 * border.sigma ** 2))
    return weights


def batch_border_weights(masks: np.ndarray, border: Border) -> np.ndarray:
    """float32 [B, S, S, 1] weights of uint8 [B, S, S, 1] masks (validation batches)."""
    return np.stack([border_weights(mask[..., 0], border) for mask in masks])[..., None]
