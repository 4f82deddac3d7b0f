"""Raster helpers shared by the synthetic drawing modules: the canonical frame, curves, upsampling.

Anatomy is described in *canonical* coordinates: ``u`` across the image (0 = image left, the
patient's right), ``v`` down, both in [0, 1] for an average patient centred in the image. A
:class:`Frame` places that canvas on a pixel grid with the exam's zoom, tilt and offset, so the
same description draws at any resolution.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

SUBPIXEL_BITS = 4                   # cv2 drawing with `shift`: coordinates in 1/16 pixel


@dataclass(frozen=True)
class Frame:
    """Canonical (u, v) -> pixel (x, y) of a ``res`` x ``res`` grid (pixel centres at integers)."""
    res: int
    scale: float = 1.0              # > 1 zooms in (a larger patient in the field)
    angle: float = 0.0              # radians, positive turns the patient clockwise on screen
    shift: tuple[float, float] = (0.0, 0.0)

    def at(self, res: int) -> Frame:
        """The same placement on a grid of another resolution."""
        return replace(self, res=res)

    @property
    def unit(self) -> float:
        """Pixels per canonical unit."""
        return self.res * self.scale

    def px(self, uv) -> np.ndarray:
        """Canonical points (..., 2) -> pixel coordinates (..., 2), float."""
        uv = np.asarray(uv, dtype=np.float64) - 0.5
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = c * uv[..., 0] - s * uv[..., 1]
        y = s * uv[..., 0] + c * uv[..., 1]
        out = np.stack([x, y], axis=-1) * self.scale + 0.5 + np.asarray(self.shift)
        return out * self.res - 0.5

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (U, V) of every pixel centre, float32 arrays of shape (res, res)."""
        p = (np.arange(self.res, dtype=np.float32) + 0.5) / self.res
        x = (p - 0.5 - self.shift[0]) / self.scale
        y = (p - 0.5 - self.shift[1]) / self.scale
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = c * x[None, :] + s * y[:, None] + 0.5
        v = -s * x[None, :] + c * y[:, None] + 0.5
        return u.astype(np.float32), v.astype(np.float32)


def smoothstep(edge0, edge1, x):
    """Hermite step from 0 at ``edge0`` to 1 at ``edge1`` (either order)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def chaikin(points, closed: bool = True, iterations: int = 3) -> np.ndarray:
    """Smooth a polygon / polyline by corner cutting (open curves keep their end points)."""
    p = np.asarray(points, dtype=np.float64)
    for _ in range(iterations):
        nxt = np.roll(p, -1, axis=0) if closed else p[1:]
        cur = p if closed else p[:-1]
        cut = np.stack([0.75 * cur + 0.25 * nxt, 0.25 * cur + 0.75 * nxt], axis=1).reshape(-1, 2)
        p = cut if closed else np.concatenate([p[:1], cut, p[-1:]])
    return p


def fixed(points_px) -> np.ndarray:
    """Pixel coordinates -> int32 points for cv2 drawing with ``shift=SUBPIXEL_BITS``."""
    return np.round(np.asarray(points_px) * (1 << SUBPIXEL_BITS)).astype(np.int32)


def fill(canvas: np.ndarray, polygons_px, value=255) -> np.ndarray:
    """Fill polygons (pixel coordinates) on a uint8 canvas, in place."""
    cv2.fillPoly(canvas, [fixed(p) for p in polygons_px], value, cv2.LINE_8, SUBPIXEL_BITS)
    return canvas


def stroke(canvas: np.ndarray, points_px, thickness: float, value=255) -> np.ndarray:
    """Draw an anti-aliased polyline ``thickness`` pixels wide on a uint8 canvas, in place.

    cv2 draws whole-pixel widths; lines thinner than one pixel are drawn one pixel wide at a
    proportionally lower value, which is what they look like once blurred.
    """
    width = max(1, int(round(thickness)))
    value = value * min(1.0, thickness)
    cv2.polylines(canvas, [fixed(points_px)], False, float(value), width, cv2.LINE_AA,
                  SUBPIXEL_BITS)
    return canvas


def segments(canvas: np.ndarray, pairs_px, thickness, value) -> np.ndarray:
    """Draw many anti-aliased line segments (``pairs_px``: (n, 2, 2) pixel coordinates) with
    per-segment ``thickness`` and ``value``, batched by rounded width and value (fast)."""
    pairs = fixed(pairs_px)
    thickness = np.asarray(thickness, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64) * np.minimum(1.0, thickness)
    width = np.maximum(1, np.round(thickness)).astype(int)
    level = np.round(value / 16).astype(int)
    for w, lv in sorted(set(zip(width.tolist(), level.tolist()))):
        chosen = pairs[(width == w) & (level == lv)]
        cv2.polylines(canvas, list(chosen), False, float(min(255, lv * 16)), int(w),
                      cv2.LINE_AA, SUBPIXEL_BITS)
    return canvas


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a kernel sized from ``sigma`` (pixels); returns float32."""
    image = np.asarray(image, dtype=np.float32)
    if sigma <= 0:
        return image
    k = 2 * int(math.ceil(3 * sigma)) + 1
    return cv2.GaussianBlur(image, (k, k), sigma, borderType=cv2.BORDER_REPLICATE)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Pixels from the boundary of a binary mask: positive inside, negative outside (float32)."""
    inside = mask.astype(np.uint8)
    d_in = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    d_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    return np.where(inside > 0, d_in - 0.5, 0.5 - d_out).astype(np.float32)


def upsample(low: np.ndarray, size: int, box=None) -> np.ndarray:
    """Bilinear upsampling of a square float32 image to ``size`` (pixel centres aligned as in
    cv2.resize), or only the window ``box = (y0, y1, x0, x1)`` of that result."""
    low = np.asarray(low, dtype=np.float32)
    if box is None:
        return cv2.resize(low, (size, size), interpolation=cv2.INTER_LINEAR)
    y0, y1, x0, x1 = box
    f = low.shape[0] / size
    matrix = np.array([[f, 0.0, (x0 + 0.5) * f - 0.5],
                       [0.0, f, (y0 + 0.5) * f - 0.5]])
    return cv2.warpAffine(low, matrix, (x1 - x0, y1 - y0),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
