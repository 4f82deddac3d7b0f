"""Pneumothoraces: how many and how large, where they sit, how they look, and their masks.

A pneumothorax is air between the chest wall and a collapsed lung. It is drawn as the band of
lung within ``reach`` pixels of the lung border along one stretch of pleura (apical, lateral or
basal), ``reach`` tapering to zero at both ends of the stretch; one larger than such a band can
hold is the whole lung (the bigger one) shrunk toward its hilum, the gap running round all of
its border but the mediastinal side. Inside the band the lung markings vanish and the air
deepens (darker); just beyond it a thin bright visceral pleural line bounds the collapsed lung. The mask of each annotation is computed once at full
resolution from the upsampled fields, and the same boolean mask darkens the image, so the
label is exactly the region drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from keras_ptx.synthetic.anatomy import SIDES, Chest
from keras_ptx.synthetic.raster import upsample

# Union area per positive image as a fraction of the image: log-normal with the real data's
# median (~0.8%) and 10th percentile (~0.2%), clipped to the real range (~0.05% .. ~15%).
AREA_MEDIAN, AREA_SIGMA, AREA_RANGE = 0.008, 1.08, (0.0005, 0.15)
ANNOTATIONS_PER_IMAGE = {1: 0.80, 2: 0.12, 3: 0.055, 4: 0.025}
# Where along the pleura (angle around the lung centre: 0 lateral, -90 apical, +90 basal),
# the centre range in degrees, the half-width range, and how often.
LOCATIONS = {"apical": ((-115, -85), (25, 50), 0.37),
             "apicolateral": ((-75, -45), (30, 55), 0.36),
             "lateral": ((-35, 10), (25, 45), 0.21),
             "basal": ((35, 55), (12, 25), 0.06)}
_MEDIAL_LIMITS = (math.radians(-135), math.radians(80))
# A near-complete collapse leaves air all round the lung but at the hilum and mediastinum.
_COLLAPSE_LIMITS = (math.radians(-160), math.radians(115))
_WINDOW_GAP = 0.2                   # radians between two lesions on the same lung
MAX_COLLAPSE = 0.7                  # the collapsed lung keeps at least ~30% of its height


@dataclass(frozen=True)
class Lesion:
    side: int                       # -1 image left (patient's right) or +1
    location: str
    angle: float                    # centre of the affected stretch of pleura, radians
    spread: float                   # half-width of that stretch, radians
    depth: float                    # widest gap, working-resolution pixels
    darkening: float                # extra air density in the gap
    line: float                     # brightness of the visceral pleural line
    collapse: float = 0.0           # > 0: the whole lung shrunk by this share toward the hilum

    @property
    def tag(self) -> str:
        return f"ptx_{self.location}_{'right' if self.side < 0 else 'left'}"


def sample_areas(rng: np.random.Generator) -> list[float]:
    """Image fractions of each annotation of one positive image (their sum is the union)."""
    counts, weights = zip(*ANNOTATIONS_PER_IMAGE.items())
    n = int(rng.choice(counts, p=weights))
    total = float(np.clip(AREA_MEDIAN * math.exp(rng.normal(0.0, AREA_SIGMA)), *AREA_RANGE))
    return sorted((total * rng.dirichlet(np.full(n, 2.0))).tolist(), reverse=True)


def _offset(chest: Chest, side: int, angle: float, spread: float) -> np.ndarray:
    """Per pixel, |angle from the stretch's centre| / its half-width."""
    return np.abs(((chest.polar_angle(side) - angle + math.pi) % (2 * math.pi) - math.pi) / spread)


def _reach(chest: Chest, side: int, angle: float, spread: float) -> np.ndarray:
    """How far the gap may extend from the border, per pixel, per unit of depth (0..1)."""
    return np.clip(1.0 - _offset(chest, side, angle, spread) ** 3, 0.0, 1.0) ** 1.5


def _collapsed_sd(chest: Chest, side: int, collapse: float) -> np.ndarray:
    """Signed distance to the lung shrunk by ``collapse`` (0..1) toward its hilum (the most
    medial lung pixel at the lung centre's height): the collapsed lung's outline keeps the
    lung's shape, so the gap runs along the whole apical, lateral and basal border."""
    sd = chest.lung_sd[side]
    cu, cv = chest.lung_center[side]
    near = (sd > 0) & (np.abs(chest.v - cv) < 0.03)
    flat = np.flatnonzero(near)[np.argmin((side * (chest.u - cu))[near])]
    hy, hx = divmod(int(flat), sd.shape[1])
    k = 1.0 - collapse
    ys, xs = np.indices(sd.shape, dtype=np.float32)
    return k * cv2.remap(sd, hx + (xs - hx) / k, hy + (ys - hy) / k, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)


def _collapse_window() -> tuple[float, float]:
    """(centre, half-width) of the stretch of pleura a collapsed lung pulls away from."""
    lo, hi = _COLLAPSE_LIMITS
    return 0.5 * (lo + hi), 0.5 * (hi - lo)


def _collapse_reach(chest: Chest, side: int, collapse: float) -> np.ndarray:
    """The gap around a collapsed lung, fading out toward the mediastinum."""
    angle, spread = _collapse_window()
    fade = np.clip(4.0 * (1.0 - _offset(chest, side, angle, spread)), 0.0, 1.0)
    return (chest.lung_sd[side] - _collapsed_sd(chest, side, collapse)) * fade


def _bisect(pixels, hi: float, target: float) -> float:
    """The smallest x in (0, hi] with ``pixels(x) >= target`` (``pixels`` grows with x), or
    ``hi`` if even that falls short."""
    lo = 0.0
    if pixels(hi) <= target:
        return hi
    for _ in range(18):
        mid = 0.5 * (lo + hi)
        if pixels(mid) < target:
            lo = mid
        else:
            hi = mid
    return hi


def _fit_depth(sd: np.ndarray, reach: np.ndarray, target: float, spread: float) -> float:
    """Bisect the depth whose band {0 < sd < depth * reach} has ``target`` pixels, at most a
    share of the lung's thickness that grows with the stretch of pleura (a deep gap along a
    short stretch would pinch into the lung's centre)."""
    inside = sd > 0
    return _bisect(lambda depth: np.count_nonzero(inside & (sd < depth * reach)),
                   float(sd.max()) * min(0.85, 0.25 + 0.35 * spread), target)


def _gap_reach(chest: Chest, lesion: Lesion) -> np.ndarray:
    """Per pixel, how far from the border the gap extends: it is {0 < sd < reach}."""
    if lesion.collapse:
        return _collapse_reach(chest, lesion.side, lesion.collapse)
    return lesion.depth * _reach(chest, lesion.side, lesion.angle, lesion.spread)


def place_lesions(rng: np.random.Generator, chest: Chest, areas) -> list[Lesion]:
    """Put one lesion per area on the chest, on disjoint stretches of pleura."""
    names = list(LOCATIONS)
    odds = np.array([LOCATIONS[n][2] for n in names])
    lesions: list[Lesion] = []
    first_side = int(rng.choice(SIDES))
    pixels = chest.frame.res ** 2
    lung_pixels = {side: np.count_nonzero(chest.lung_sd[side] > 0) for side in SIDES}
    if areas and areas[0] * pixels > 0.5 * lung_pixels[first_side]:
        first_side = max(SIDES, key=lung_pixels.get)     # a big collapse needs the bigger lung
    for area in areas:
        for _ in range(40):
            side = first_side if (not lesions or rng.random() < 0.6) else -first_side
            location = names[int(rng.choice(len(names), p=odds / odds.sum()))]
            centre, width, _ = LOCATIONS[location]
            angle = math.radians(rng.uniform(*centre))
            spread = math.radians(rng.uniform(*width))
            # large collapses run down the lung's outer border, never along the mediastinum
            lo = max(angle - spread, _MEDIAL_LIMITS[0])
            hi = min(angle + spread * (1.0 + min(4.0, 50.0 * area)), _MEDIAL_LIMITS[1])
            angle, spread = 0.5 * (lo + hi), 0.5 * (hi - lo)
            if all(l.side != side or abs(l.angle - angle) > l.spread + spread + _WINDOW_GAP
                   for l in lesions):
                break
        else:
            continue                 # no room left for another separate lesion
        sd = chest.lung_sd[side]
        inside = sd > 0
        target = max(area * pixels, 2.0)
        reach = _reach(chest, side, angle, spread)
        depth = _fit_depth(sd, reach, target, spread)
        collapse = 0.0
        if np.count_nonzero(inside & (sd < depth * reach)) < 0.95 * target:
            # more than a band along one stretch can hold: the whole lung collapses
            collapse = _bisect(lambda c: np.count_nonzero(
                inside & (sd < _collapse_reach(chest, side, c))), MAX_COLLAPSE, target)
            angle, spread = _collapse_window()
        lesions.append(Lesion(side=side, location=location, angle=angle, spread=spread,
                              depth=depth, darkening=float(rng.uniform(0.03, 0.1)),
                              line=float(rng.uniform(0.05, 0.13)), collapse=collapse))
    return lesions


def render_lesions(image: np.ndarray, chest: Chest, lesions, line_width: float) -> list[np.ndarray]:
    """Draw ``lesions`` into the full-resolution ``image`` (float32 [0, 1], in place) and
    return one boolean mask per lesion, disjoint, each exactly the region darkened.

    ``line_width`` is the visceral pleural line's width in full-resolution pixels.
    """
    size, res = image.shape[0], chest.frame.res
    scale = size / res
    taken = np.zeros(image.shape, bool)
    masks = []
    for lesion in lesions:
        sd_low = chest.lung_sd[lesion.side]
        reach_low = _gap_reach(chest, lesion)
        removed = chest.texture + lesion.darkening     # air right up to the chest wall
        delta_low = np.maximum(chest.tone(chest.density) - chest.tone(chest.density - removed), 0)
        ys, xs = np.nonzero((reach_low > 0) & (sd_low > -2))
        margin = 3
        box = (max(0, int((ys.min() - margin) * scale)), min(size, int((ys.max() + margin + 1) * scale)),
               max(0, int((xs.min() - margin) * scale)), min(size, int((xs.max() + margin + 1) * scale)))
        sd = upsample(sd_low, size, box)
        reach = upsample(reach_low, size, box)
        region = (sd > 0) & (sd < reach)
        y0, y1, x0, x1 = box
        region &= ~taken[y0:y1, x0:x1]
        crop = image[y0:y1, x0:x1]
        crop -= region * upsample(delta_low, size, box)
        # The visceral pleural line: a tent profile just beyond the gap, fading at its ends.
        half = 0.5 * line_width / scale
        beyond = sd - reach
        tent = np.clip(1.0 - np.abs(beyond - half) / half, 0.0, 1.0)
        crop += lesion.line * tent * np.clip(reach / (2 * half), 0.0, 1.0) * (sd > 0) * ~region
        mask = np.zeros(image.shape, bool)
        mask[y0:y1, x0:x1] = region
        taken |= mask
        masks.append(mask)
    return masks
