"""One synthetic radiograph from (seed, index): pixels, pneumothorax masks and what is in it.

The anatomy is drawn at a working resolution and upsampled; lesions (with their exact masks),
devices and detector noise are added at full resolution. Every random choice comes from
generators seeded by ``(seed, patient)`` (the patient's build) and ``(seed, index)`` (this
exam; the lesions have a stream of their own), so an image never depends on which worker draws
it or in what order, and a positive image differs from its negative twin only in the lesions.

A non-square detector format (``aspect`` = width / height, ``size`` its long side) is drawn on
the ``size`` x ``size`` canvas with the patient scaled down to fill the short side as they fill
a square image, and the canvas is cropped to its centre: a portrait image shows more above and
below the chest, a landscape one more beside it.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from keras_ptx.synthetic.anatomy import draw_chest, sample_habitus
from keras_ptx.synthetic.devices import draw_devices
from keras_ptx.synthetic.pneumothorax import place_lesions, render_lesions, sample_areas
from keras_ptx.synthetic.raster import upsample

PATIENT_STREAM, IMAGE_STREAM, LESION_STREAM = 0, 1, 4     # SeedSequence keys (dataset.py: 2, 3)
MIN_SIZE = 32


@dataclass(frozen=True)
class SyntheticImage:
    """``pixels``: (height, width) uint8, air dark. ``masks``: one boolean mask per annotation
    (disjoint, in the pixel array's orientation). ``tags``: what was drawn (view, lesion
    locations, devices, confounders)."""
    pixels: np.ndarray
    masks: tuple[np.ndarray, ...]
    tags: tuple[str, ...]
    sex: str
    age: int
    view: str

    @property
    def union(self) -> np.ndarray:
        return np.logical_or.reduce(self.masks) if self.masks else np.zeros(self.pixels.shape, bool)


def working_resolution(size: int) -> int:
    """The anatomy's drawing resolution for an output of ``size`` pixels."""
    return min(size, max(256, size // 4))


def rng_for(seed: int, key: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, key, stream]))


def image_shape(size: int, aspect: float) -> tuple[int, int]:
    """(height, width) of an image whose long side is ``size`` and width / height ``aspect``."""
    return (size, round(size * aspect)) if aspect <= 1 else (round(size / aspect), size)


def generate_image(seed: int, index: int, size: int = 1024, positive: bool = False,
                   patient: int | None = None, aspect: float = 1.0) -> SyntheticImage:
    """Draw image ``index`` of the dataset ``seed`` (``patient`` defaults to ``index``), of
    width / height ``aspect`` with ``size`` its long side."""
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    habitus = sample_habitus(rng_for(seed, index if patient is None else patient,
                                     PATIENT_STREAM))
    rng = rng_for(seed, index, IMAGE_STREAM)
    zoom = min(aspect, 1 / aspect)
    chest = draw_chest(habitus, rng, working_resolution(size), zoom)
    # Lesions draw from their own stream: a positive image is its negative twin plus the lesion.
    # Their areas (shares of the canvas) shrink with the patient, so they keep their lung share.
    lesion_rng = rng_for(seed, index, LESION_STREAM)
    areas = [area * zoom ** 2 for area in sample_areas(lesion_rng)]
    lesions = place_lesions(lesion_rng, chest, areas) if positive else []
    image = upsample(chest.image, size)
    masks = render_lesions(image, chest, lesions, line_width=max(1.2, 2.5 * size / 1024))
    height, width = image_shape(size, aspect)
    top, left = (size - height) // 2, (size - width) // 2
    window = np.s_[top:top + height, left:left + width]
    kept = [(lesion, mask[window]) for lesion, mask in zip(lesions, masks) if mask[window].any()]
    tags = [chest.view, *chest.tags, *(lesion.tag for lesion, _ in kept)]
    tags += draw_devices(image, chest.frame.at(size), chest.view, rng)
    # Detector noise, grain about two pixels at 1024, stronger where fewer photons arrive.
    grain = max(MIN_SIZE, size // 2)
    noise = upsample(rng.standard_normal((grain, grain), dtype=np.float32), size)
    noise *= rng.uniform(0.008, 0.022)
    image += noise * (0.6 + 0.8 * image)
    pixels = cv2.convertScaleAbs(np.clip(image[window], 0.0, 1.0), alpha=255.0)
    return SyntheticImage(pixels=pixels, masks=tuple(mask for _, mask in kept), tags=tuple(tags),
                          sex=habitus.sex, age=habitus.age, view=chest.view)
