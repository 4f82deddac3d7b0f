"""Draw a frontal chest radiograph at a working resolution: the anatomy and the exposure.

The drawing is a *density* map (roughly: how much the body attenuates along each ray) built
from soft tissue, air-filled lungs with branching vessels, ribs, clavicles, scapulae, spine,
heart and diaphragm, plus confounders that mimic a pleural line (skin folds, scapula edges).
A tone curve then turns density into display brightness (air dark, bone bright). Everything
is described in canonical coordinates (see :mod:`raster`) and varies with the patient
(:class:`Habitus`) and the exam (view, positioning, inspiration, exposure).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from keras_ptx.synthetic.raster import (Frame, blur, chaikin, fill, segments,
                                        signed_distance, smoothstep, stroke)

SIDES = (-1, 1)                     # -1: image left (the patient's right), +1: image right

# The patient's right lung as (distance from the midline, v), clockwise from the medial apex;
# the left lung mirrors it (its diaphragm sits lower and the heart is cut out of it).
_LUNG = np.array([
    (0.060, 0.200), (0.080, 0.135), (0.125, 0.098), (0.180, 0.098), (0.240, 0.130),
    (0.295, 0.195), (0.340, 0.290), (0.372, 0.410), (0.392, 0.540), (0.405, 0.660),
    (0.410, 0.715),                                            # costophrenic angle
    (0.360, 0.680), (0.290, 0.638), (0.210, 0.620), (0.140, 0.625), (0.090, 0.650),
    (0.060, 0.570), (0.048, 0.440), (0.052, 0.310)])
_LUNG_APEX_V = 0.098
_HILUM = (0.115, 0.420)
# The mediastinum and heart in canonical (u, v), clockwise from the thoracic inlet: aortic
# knob, pulmonary trunk and left ventricle on the image right, right atrium and SVC on the left.
_MEDIASTINUM = np.array([
    (0.455, 0.06), (0.545, 0.06), (0.555, 0.22), (0.585, 0.265), (0.592, 0.315),
    (0.578, 0.36), (0.598, 0.42), (0.640, 0.47), (0.690, 0.54), (0.715, 0.61), (0.700, 0.68),
    (0.600, 0.72), (0.480, 0.71), (0.425, 0.665), (0.410, 0.58), (0.425, 0.49), (0.440, 0.42),
    (0.447, 0.32), (0.442, 0.22)])
_VESSEL_STEP = 0.022
_CLAVICLE = np.array([(0.045, 0.190), (0.110, 0.172), (0.200, 0.150), (0.280, 0.128),
                      (0.345, 0.126)])


@dataclass(frozen=True)
class Habitus:
    """The patient: shared by all of their radiographs."""
    sex: str
    age: int
    body_width: float               # torso width relative to average
    lung_width: float
    lung_height: float
    heart: float                    # heart size relative to average
    breast: float                   # 0 = none, 1 = large breast shadows


def sample_habitus(rng: np.random.Generator) -> Habitus:
    sex = "M" if rng.random() < 0.55 else "F"
    age = int(np.clip(rng.normal(50, 17), 16, 92))
    return Habitus(
        sex=sex, age=age,
        body_width=float(np.clip(rng.normal(1.0, 0.07), 0.85, 1.18)),
        lung_width=float(np.clip(rng.normal(1.0, 0.045), 0.88, 1.1)),
        lung_height=float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12)),
        heart=float(np.clip(rng.normal(1.0 + (age - 50) * 0.004, 0.09), 0.8, 1.4)),
        breast=float(rng.uniform(0.4, 1.0) if sex == "F" else rng.uniform(0.0, 0.15)))


@dataclass
class Chest:
    """One drawn chest at the working resolution ``frame.res``.

    ``density`` includes the lung markings ``texture``; :meth:`tone` maps density to display
    brightness in [0, 1]; ``image`` is the toned, edge-enhanced picture. ``lung_sd[side]`` is the
    signed distance (pixels, positive inside) to that lung's border.
    """
    frame: Frame
    view: str
    u: np.ndarray
    v: np.ndarray
    density: np.ndarray
    texture: np.ndarray
    lung_sd: dict[int, np.ndarray]
    lung_center: dict[int, tuple[float, float]]
    tone_low: float
    tone_high: float
    gamma: float
    shoulder: float                 # film-like compression of the brightest densities
    sharpen: float
    tags: list[str] = field(default_factory=list)
    image: np.ndarray | None = None
    _angles: dict = field(default_factory=dict, repr=False)

    def polar_angle(self, side: int) -> np.ndarray:
        """Per pixel, the angle around that lung's centre, mirrored so 0 points to the lateral
        chest wall, -pi/2 to the apex and +pi/2 to the diaphragm."""
        if side not in self._angles:
            cu, cv = self.lung_center[side]
            self._angles[side] = np.arctan2(self.v - cv, side * (self.u - cu))
        return self._angles[side]

    def tone(self, density: np.ndarray) -> np.ndarray:
        """Density -> display brightness in [0, 1] (pointwise)."""
        unit = np.clip((density - self.tone_low) / (self.tone_high - self.tone_low), 0.0, 1.0)
        shoulder = (1.0 - np.exp(-self.shoulder * unit)) / (1.0 - math.exp(-self.shoulder))
        return shoulder ** self.gamma


def _mirror(points, side: int) -> np.ndarray:
    """(distance from midline, v) points -> canonical (u, v) on ``side``."""
    p = np.array(points, dtype=np.float64)
    p[:, 0] = 0.5 + side * p[:, 0]
    return p


def _lung_outline(habitus: Habitus, side: int, inspiration: float, rng) -> np.ndarray:
    pts = _LUNG + rng.normal(0.0, 0.006, _LUNG.shape)
    pts[:, 0] *= habitus.lung_width * rng.uniform(0.96, 1.04)
    stretch = habitus.lung_height * inspiration
    pts[:, 1] = _LUNG_APEX_V + (pts[:, 1] - _LUNG_APEX_V) * stretch
    if side == 1:                   # the left hemidiaphragm lies lower
        low = pts[:, 1] > 0.55
        pts[low, 1] += rng.uniform(0.01, 0.035)
    return chaikin(_mirror(pts, side), closed=True, iterations=3)


def _mediastinum_outline(habitus: Habitus, view: str, inspiration: float, rng) -> np.ndarray:
    """The mediastinum and heart: the dense middle the lungs wrap around (canonical points)."""
    pts = _MEDIASTINUM + rng.normal(0.0, 0.004, _MEDIASTINUM.shape)
    size = habitus.heart * (1.1 if view == "AP" else 1.0) * rng.uniform(0.95, 1.05)
    cardiac = pts[:, 1] > 0.42
    pts[cardiac, 0] = 0.5 + (pts[cardiac, 0] - 0.5) * size
    pts[cardiac, 1] = 0.42 + (pts[cardiac, 1] - 0.42) * (0.6 + 0.4 * size) * inspiration
    return chaikin(pts, closed=True, iterations=3)


def _vessel_tree(rng, starts, angles, lengths, widths, levels=3):
    """Random-walk vessels from ``starts``; each level forks from the previous one.

    Vectorised over branches: returns segment end points (n, 2, 2) and widths (n,).
    """
    pairs, pair_widths = [], []
    for level in range(levels):
        n = len(starts)
        if n == 0:
            break
        steps = max(2, int(lengths.max() / _VESSEL_STEP))
        heading = angles[:, None] + np.cumsum(rng.normal(0.0, 0.18, (n, steps)), axis=1)
        moves = _VESSEL_STEP * np.stack([np.cos(heading), np.sin(heading)], axis=-1)
        pts = np.concatenate([starts[:, None], starts[:, None] + np.cumsum(moves, 1)], axis=1)
        count = np.maximum(2, (lengths / _VESSEL_STEP).astype(int))
        along = np.arange(steps)[None, :] / count[:, None]
        live = along < 1.0
        width = widths[:, None] * (1.0 - 0.7 * along)
        pairs.append(np.stack([pts[:, :-1], pts[:, 1:]], axis=2)[live])
        pair_widths.append(width[live])
        fork = live & (rng.random((n, steps)) < 0.22) & (np.arange(steps) > 0)
        b, j = np.nonzero(fork)
        turn = rng.choice((-1.0, 1.0), len(b)) * rng.uniform(0.35, 0.8, len(b))
        starts, angles = pts[b, j + 1], heading[b, j] + turn
        lengths = (1.0 - along[b, j]) * lengths[b] * rng.uniform(0.5, 0.8, len(b))
        widths = width[b, j] * 0.75
    return np.concatenate(pairs), np.concatenate(pair_widths)


def _vessels(frame: Frame, rng, sides_mask) -> np.ndarray:
    """Pulmonary vessels: trees fanning out from each hilum (density units, float32)."""
    trunks = [int(rng.integers(10, 15)) for _ in SIDES]
    starts = np.concatenate([np.repeat(_mirror([_HILUM], side), n, axis=0)
                             + rng.normal(0, 0.01, (n, 2)) for side, n in zip(SIDES, trunks)])
    sides = np.repeat(SIDES, trunks)
    spread = rng.uniform(-1.9, 1.5, len(sides))             # 0 = lateral, -pi/2 = up
    angles = np.arctan2(np.sin(spread), sides * np.cos(spread))
    pairs, widths = _vessel_tree(rng, starts, angles, rng.uniform(0.16, 0.3, len(sides)),
                                 rng.uniform(0.010, 0.016, len(sides)))
    canvas = np.zeros((frame.res, frame.res), np.uint8)
    segments(canvas, frame.px(pairs), widths * frame.unit, 255 * np.minimum(1.0, widths / 0.012))
    return blur(canvas, 0.8 * frame.res / 256) / 255.0 * sides_mask


def _ribs(frame: Frame, habitus: Habitus, inspiration: float, rng) -> np.ndarray:
    """Posterior ribs (arching out from the spine) and fainter anterior ribs, with bright
    cortical margins (density units, float32)."""
    outer = np.zeros((frame.res, frame.res), np.uint8)
    inner = np.zeros_like(outer)
    front = np.zeros_like(outer)
    spacing = 0.056 * habitus.lung_height * inspiration
    t = np.linspace(0.0, 1.0, 14)
    for side in SIDES:
        top = 0.075 + rng.normal(0, 0.006)
        for k in range(11):
            v0 = top + k * spacing * (1 + 0.012 * k) + rng.normal(0, 0.004)
            reach = (0.43 * habitus.lung_width) * (0.45 + 0.55 * smoothstep(0.05, 0.40, v0))
            x = 0.03 + t * reach
            v = v0 + rng.uniform(0.85, 1.15) * (-0.035 * np.sin(math.pi * t * 0.7)
                                                 + (0.13 + 0.005 * k) * t ** 2)
            pts = frame.px(_mirror(np.stack([x, v], axis=1), side))
            width = (0.021 + 0.0006 * k) * frame.unit
            stroke(outer, pts, width)
            stroke(inner, pts, width * 0.55)
            if k < 8:                               # anterior: lateral wall down to the sternum
                xa = reach - t * (reach - 0.13)
                va = v0 + 0.05 + 0.11 * t - 0.03 * np.sin(math.pi * t)
                stroke(front, frame.px(_mirror(np.stack([xa, va], axis=1), side)),
                       0.016 * frame.unit)
    cortex = outer.astype(np.float32) - inner
    return blur(0.6 * outer + 0.4 * cortex + 0.7 * front, 0.7 * frame.res / 256) / 255.0


def _clavicles_scapulae(frame: Frame, view: str, rng, tags) -> np.ndarray:
    """Clavicles, the scapulae's bodies and bright medial borders, humeral heads."""
    bones = np.zeros((frame.res, frame.res), np.uint8)
    plates = np.zeros_like(bones)
    lift = -0.03 if view == "AP" else 0.0
    for side in SIDES:
        clav = _CLAVICLE + rng.normal(0, 0.004, _CLAVICLE.shape) + (0, lift)
        stroke(bones, frame.px(chaikin(_mirror(clav, side), closed=False)),
               0.022 * frame.unit)
        head = _mirror([(0.45 + rng.uniform(-0.01, 0.02), 0.16 + lift)], side)[0]
        t = np.linspace(0, 2 * math.pi, 24)
        fill(bones, [frame.px(head + 0.065 * np.stack([np.cos(t), np.sin(t)], 1))], 200)
        # The scapula: PA positioning rotates it off the lung, AP leaves it over the lung.
        medial = rng.uniform(0.27, 0.34) if view == "AP" else rng.uniform(0.36, 0.44)
        tip_v = rng.uniform(0.40, 0.50)
        plate = np.array([(medial - 0.02, 0.12), (0.50, 0.14), (0.48, tip_v - 0.05),
                          (medial + 0.05, tip_v)])
        border = chaikin(np.array([(medial - 0.02, 0.12), (medial - 0.015, 0.25),
                                   (medial, 0.36), (medial + 0.05, tip_v)]), closed=False)
        fill(plates, [frame.px(_mirror(plate, side))], 90)
        stroke(bones, frame.px(_mirror(border, side)), 0.006 * frame.unit, 150)
        if medial < 0.40:
            tags.append(f"scapula_over_{'right' if side < 0 else 'left'}_lung")
    return blur(bones.astype(np.float32) + plates, 0.5 * frame.res / 256) / 255.0


def _skin_fold(frame: Frame, u, v, rng) -> np.ndarray:
    """A skin fold: a long edge roughly parallel to the lateral chest wall with denser tissue
    on one side, the classic mimic of a pneumothorax's pleural line."""
    side = int(rng.choice(SIDES))
    x0 = rng.uniform(0.26, 0.38)
    pts = np.array([(x0 + rng.uniform(-0.03, 0.05), rng.uniform(0.05, 0.2)),
                    (x0 + rng.uniform(0.0, 0.05), 0.4),
                    (x0 + rng.uniform(-0.06, 0.02), rng.uniform(0.7, 0.95))])
    curve = _mirror(chaikin(pts, closed=False), side)
    line = np.zeros((frame.res, frame.res), np.uint8)
    stroke(line, frame.px(curve), 1.0)
    dist = cv2.distanceTransform((line < 128).astype(np.uint8), cv2.DIST_L2, 3) / frame.unit
    lateral = np.interp(v, curve[:, 1], curve[:, 0])
    beyond = (u - lateral) * side > 0
    return (beyond * np.exp(-dist / rng.uniform(0.02, 0.06))).astype(np.float32)


def draw_chest(habitus: Habitus, rng: np.random.Generator, res: int, zoom: float = 1.0) -> Chest:
    """Draw one radiograph of ``habitus`` at ``res`` x ``res`` (positioning, view and exposure
    are drawn from ``rng``), the patient ``zoom`` times the usual size."""
    tags: list[str] = []
    view = "AP" if rng.random() < 0.45 else "PA"
    frame = Frame(res, scale=zoom * float(rng.uniform(1.0, 1.14)),
                  angle=float(np.clip(rng.normal(0, 0.025), -0.07, 0.07)),
                  shift=(float(rng.normal(0, 0.015)), float(rng.normal(0.01, 0.02))))
    inspiration = float(rng.uniform(0.86, 1.0) if view == "AP" else rng.uniform(0.93, 1.07))
    u, v = frame.grid()
    x = np.abs(u - 0.5)

    # Soft tissue: an elliptical torso under the neck and shoulders, thicker toward the abdomen.
    half = 0.49 * habitus.body_width * (0.2 + 0.8 * smoothstep(0.0, 0.2, v))
    body = np.sqrt(np.clip(1.0 - (x / half) ** 3, 0.0, 1.0))
    soft = body * (0.78 + 0.22 * smoothstep(0.55, 0.85, v))

    lungs = {side: _lung_outline(habitus, side, inspiration, rng) for side in SIDES}
    middle = _mediastinum_outline(habitus, view, inspiration, rng)
    middle_mask = fill(np.zeros((res, res), np.uint8), [frame.px(middle)], 1)
    lung_sd, lung_center = {}, {}
    for side, outline in lungs.items():
        mask = fill(np.zeros((res, res), np.uint8), [frame.px(outline)], 1) & (1 - middle_mask)
        lung_sd[side] = blur(signed_distance(mask), 0.8 * res / 256)
        lung_center[side] = (float(outline[:, 0].mean()), float(outline[:, 1].mean()))
    sd = np.maximum(lung_sd[-1], lung_sd[1])
    ramp = 0.02 * frame.unit
    lung_air = smoothstep(-0.5, ramp, sd) * (0.75 + 0.25 * smoothstep(0.0, 6 * ramp, sd))
    lung_air *= 1.0 - 0.25 * smoothstep(0.5, 0.75, v)              # bases: overlying soft tissue

    texture = _vessels(frame, rng, smoothstep(0.0, ramp, sd)) * rng.uniform(0.09, 0.15)
    texture += blur(rng.standard_normal((res, res)).astype(np.float32), 1.6 * res / 256) \
        * (0.06 * lung_air)
    hilum_blob = sum(np.exp(-(((u - _mirror([_HILUM], s)[0][0]) / 0.05) ** 2
                              + ((v - _HILUM[1]) / 0.08) ** 2)) for s in SIDES)

    bone = _ribs(frame, habitus, inspiration, rng) * rng.uniform(0.07, 0.12) \
        * (0.3 + 0.7 * smoothstep(0.04, 0.11, x))           # faint over the spine
    bone += _clavicles_scapulae(frame, view, rng, tags) * rng.uniform(0.14, 0.2)
    # vertebral bodies with darker disc spaces, pedicles as paired ovals
    level = (v / (0.052 * habitus.lung_height)) % 1.0
    spine = smoothstep(0.045, 0.025, x) * (0.8 + 0.2 * smoothstep(0.0, 0.15, level)
                                          * smoothstep(1.0, 0.85, level))
    spine += 0.5 * np.exp(-(((x - 0.03) / 0.008) ** 2 + ((level - 0.35) / 0.15) ** 2))
    bone += spine * 0.07 * smoothstep(0.0, 0.05, v)
    trachea = smoothstep(0.022, 0.012, np.abs(u - 0.5 - 0.01)) * smoothstep(0.36, 0.30, v)

    heart_soft = blur(middle_mask.astype(np.float32), 2 * res / 256) * smoothstep(0.35, 0.5, v)
    breast = 0.0
    if habitus.breast > 0.05:
        for side in SIDES:
            cu = 0.5 + side * 0.25
            r = ((u - cu) / 0.2) ** 2 + ((v - 0.66) / (0.12 + 0.04 * habitus.breast)) ** 2
            breast = breast + smoothstep(1.05, 0.8, r) * 0.06 * habitus.breast
    density = (0.9 * soft - 0.52 * lung_air + 0.05 * heart_soft + 0.08 * hilum_blob * body
               + bone * body - 0.07 * trachea + breast * body + texture)
    if rng.random() < 0.7:          # the gastric air bubble under the left hemidiaphragm
        left = lungs[1]
        cu = 0.5 + rng.uniform(0.1, 0.18)
        dome = float(left[np.abs(left[:, 0] - cu) < 0.04, 1].max())
        bubble = ((u - cu) / rng.uniform(0.035, 0.07)) ** 2 \
            + ((v - dome - rng.uniform(0.04, 0.07)) / rng.uniform(0.02, 0.035)) ** 2
        density -= smoothstep(1.3, 0.2, bubble) * rng.uniform(0.06, 0.14) * body
    if rng.random() < (0.3 if view == "AP" else 0.1):
        density += _skin_fold(frame, u, v, rng) * rng.uniform(0.07, 0.14) * body
        tags.append("skin_fold")

    chest = Chest(frame=frame, view=view, u=u, v=v,
                  density=density.astype(np.float32), texture=texture.astype(np.float32),
                  lung_sd=lung_sd, lung_center=lung_center,
                  tone_low=float(rng.uniform(0.0, 0.1)), tone_high=float(rng.uniform(1.0, 1.25)),
                  gamma=float(rng.uniform(1.1, 1.6)), shoulder=float(rng.uniform(1.2, 2.2)),
                  sharpen=float(rng.uniform(0.1, 0.5)),
                  tags=tags)
    shown = chest.tone(chest.density)
    chest.image = np.clip(shown + chest.sharpen * (shown - blur(shown, 6 * res / 256)), 0, 1)
    return chest
