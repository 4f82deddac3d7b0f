"""Post-processing: from a pneumothorax probability map to the binary mask that is submitted.

Two rules, each optionally gated by the image-level head:

- ``threshold``: the mask is every pixel whose probability exceeds ``threshold`` (the paper: 0.75).
- ``triplet`` (the competition winner's): the image is empty unless at least ``min_pixels``
  pixels exceed ``top_threshold``; then the mask is every pixel above ``bottom_threshold``,
  minus the 8-connected components smaller than ``min_area`` pixels.
- gating: with ``cls_threshold`` set, the mask is empty unless the image-level probability is
  ``>= cls_threshold``.

``min_pixels`` and ``min_area`` are counted at 1024 x 1024, as in the competition, and scaled
by ``(side / 1024) ** 2`` for a map whose square side is ``side`` (the record size on the
record grid, ``max(height, width)`` on an original radiograph). All comparisons are made in
float32. :func:`PostProcess.apply` (numpy, one map) and :func:`apply_tf` (TensorFlow ops, a
batch, for the SavedModel) give identical masks; the TF component filter labels components
exactly (runs of pixels joined by a parallel union-find) on maps of any, even dynamic, size.

At an image's own size, ``bin/predict`` and the SavedModel's ``serving_default`` give the same
masks, pixel for pixel: both map the square grid's probabilities back with one TF op
(:func:`image_map_tf`) and then apply the rule with the image's side, ``bin/predict`` through
:meth:`PostProcess.apply`, the SavedModel through :func:`image_mask_tf`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from keras_ptx.config import Tta, choices
from keras_ptx.fileio import read_json, write_atomic
from keras_ptx.errors import UserError

REFERENCE_SIDE = 1024
KINDS = ("threshold", "triplet")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class PostProcessError(UserError):
    """A post-processing setting or file that is not valid."""


def scale_area(area: int, side: int) -> int:
    """A pixel count defined at 1024 x 1024 -> the same share of a ``side`` x ``side`` square.

    A positive count stays at least 1, so a requirement never silently disappears.
    """
    if area <= 0:
        return 0
    return max(1, int(round(area * (side / REFERENCE_SIDE) ** 2)))


def scale_area_tf(area: int, side):
    """:func:`scale_area` for a side that is a scalar tensor: int32, the same value.

    The product is exact in float64 for any side below 65536, and ``tf.round``, like Python's
    ``round``, rounds halves to even.
    """
    from keras_ptx.tf_setup import tf

    if area <= 0:
        return tf.constant(0, tf.int32)
    ratio = tf.cast(side, tf.float64) / REFERENCE_SIDE
    return tf.maximum(tf.cast(tf.round(area * (ratio * ratio)), tf.int32), 1)


@dataclass(frozen=True)
class PostProcess:
    kind: str = "threshold"
    threshold: float = 0.75                 # threshold: pixel threshold
    top_threshold: float = 0.75             # triplet: the "is anything there" threshold ...
    min_pixels: int = 0                     # ... and how many pixels (at 1024^2) must exceed it
    bottom_threshold: float = 0.3           # triplet: the mask threshold
    min_area: int = 0                       # triplet: smallest component kept (at 1024^2)
    cls_threshold: Optional[float] = None   # gate on the image-level probability (None = off)
    tta: Optional[str] = None               # the test-time augmentation it was tuned with

    def __post_init__(self):
        if self.kind not in KINDS:
            raise PostProcessError(f"kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.tta is not None and self.tta not in choices(Tta):
            raise PostProcessError(f"tta {self.tta!r}: expected one of {', '.join(choices(Tta))}")
        for name in ("threshold", "top_threshold", "bottom_threshold", "cls_threshold"):
            value = getattr(self, name)
            if value is None and name == "cls_threshold":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise PostProcessError(f"{name} must be a number in [0, 1], got {value!r}")
        for name in ("min_pixels", "min_area"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PostProcessError(f"{name} must be a non-negative integer, got {value!r}")

    @property
    def name(self) -> str:
        """'threshold', 'triplet', 'gated-threshold' or 'gated-triplet'."""
        return self.kind if self.cls_threshold is None else f"gated-{self.kind}"

    def describe(self) -> str:
        if self.kind == "threshold":
            text = f"pixels > {self.threshold:g}"
        else:
            text = (f"empty unless >= {self.min_pixels} px (at 1024^2) > {self.top_threshold:g}; "
                    f"then pixels > {self.bottom_threshold:g}")
            if self.min_area:
                text += f", components >= {self.min_area} px (at 1024^2)"
        if self.cls_threshold is not None:
            text += f"; only if image-level probability >= {self.cls_threshold:g}"
        return text

    def rule(self, side: int):
        """(gate threshold, gate pixel count, mask threshold, min component area) for a side."""
        if self.kind == "threshold":
            return self.threshold, 0, self.threshold, 0
        return (self.top_threshold, scale_area(self.min_pixels, side), self.bottom_threshold,
                scale_area(self.min_area, side))

    def apply(self, prob_map, cls_prob=None, side: Optional[int] = None) -> np.ndarray:
        """Probability map ``(H, W)`` or ``(H, W, 1)`` -> uint8 {0,1} mask of the same shape."""
        prob = np.asarray(prob_map, dtype=np.float32)
        if prob.ndim == 3 and prob.shape[-1] == 1:
            return self.apply(prob[..., 0], cls_prob, side)[..., None]
        if prob.ndim != 2:
            raise PostProcessError(f"expected a 2-D probability map, got shape {prob.shape}")
        top, min_pixels, bottom, min_area = self.rule(side or max(prob.shape))
        empty = np.zeros(prob.shape, dtype=np.uint8)
        if self.cls_threshold is not None:
            if cls_prob is None:
                raise PostProcessError(f"{self.name} needs the image-level probability "
                                       "(the model has no classification head?)")
            if not np.asarray(cls_prob, np.float32).reshape(()) >= np.float32(self.cls_threshold):
                return empty
        if min_pixels and np.count_nonzero(prob > np.float32(top)) < min_pixels:
            return empty
        mask = prob > np.float32(bottom)
        if min_area:
            mask = remove_small_components(mask, min_area)
        return mask.astype(np.uint8)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "PostProcess":
        if not isinstance(raw, dict):
            raise PostProcessError(f"expected a JSON object, got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise PostProcessError(f"unknown post-processing keys: {', '.join(unknown)}")
        return cls(**raw)

    def save(self, path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "PostProcess":
        try:
            raw = read_json(path)
        except ValueError as exc:
            raise PostProcessError(f"{path}: not valid JSON: {exc}") from None
        try:
            return cls.from_dict(raw)
        except (PostProcessError, TypeError) as exc:
            raise PostProcessError(f"{path}: {exc}") from None


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop the 8-connected components of a 2-D boolean mask that have fewer than ``min_area`` px."""
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return mask.astype(bool)
    keep = np.bincount(labels.ravel()) >= min_area
    keep[0] = False
    return keep[labels]


def apply_tf(post: PostProcess, prob_maps, cls_prob=None, side=None):
    """:meth:`PostProcess.apply` in TensorFlow ops on a batch ``[B, H, W, 1]`` -> uint8 ``[B, H, W, 1]``.

    ``cls_prob`` is ``[B]`` or ``[B, 1]``; ``side`` (an int or a scalar tensor) defaults to
    ``max(H, W)``, which may be dynamic.
    """
    from keras_ptx.tf_setup import tf

    prob = tf.cast(tf.convert_to_tensor(prob_maps), tf.float32)
    if side is None:
        side = tf.reduce_max(tf.shape(prob)[1:3])
    top, min_pixels, bottom, min_area = post.rule(REFERENCE_SIDE)   # the counts at 1024^2
    keep = tf.ones(tf.shape(prob)[:1], dtype=tf.bool)
    if post.cls_threshold is not None:
        if cls_prob is None:
            raise PostProcessError(f"{post.name} needs the image-level probability")
        cls = tf.reshape(tf.cast(cls_prob, tf.float32), [-1])
        keep = keep & (cls >= tf.constant(post.cls_threshold, tf.float32))
    if min_pixels:
        above = tf.reduce_sum(tf.cast(prob > tf.constant(top, tf.float32), tf.int32), axis=[1, 2, 3])
        keep = keep & (above >= scale_area_tf(min_pixels, side))
    mask = (prob > tf.constant(bottom, tf.float32)) & keep[:, None, None, None]
    if min_area:                                    # nothing to label on an empty batch
        mask = tf.cond(tf.reduce_any(mask), lambda: mask & (
            _component_areas_tf(mask) >= scale_area_tf(min_area, side)), lambda: mask)
    return tf.cast(mask, tf.uint8)


def image_map_tf(square_map, height, width):
    """A float ``[S, S]`` map on the model's square grid -> ``[height, width]``, the image's own grid.

    :func:`keras_ptx.data.geometry.from_square`'s rule in TF ops: bilinear (half-pixel centres)
    to the image's longest side, then the top-left ``height`` x ``width``. ``bin/predict``
    (:func:`image_map`) and the SavedModel both map with this op, so both post-process the same
    floats.
    """
    from keras_ptx.tf_setup import tf

    side = tf.maximum(height, width)
    square = tf.image.resize(tf.cast(square_map, tf.float32)[..., None], [side, side],
                             method="bilinear")
    return square[:height, :width, 0]


def image_map(square_map, height: int, width: int) -> np.ndarray:
    """:func:`image_map_tf` for numpy callers: float32 ``(S, S)`` -> ``(height, width)``."""
    return image_map_tf(square_map, height, width).numpy()


def image_mask_tf(post: PostProcess, square_map, cls_prob, height, width):
    """The uint8 mask ``[height, width]`` of one ``[S, S]`` map at its image's own size.

    :func:`image_map_tf`, then :func:`apply_tf` with the image's side: the TF twin of
    ``post.apply(image_map(square_map, height, width), cls_prob)``, which ``bin/predict`` runs.
    """
    from keras_ptx.tf_setup import tf

    prob = image_map_tf(square_map, height, width)[None, ..., None]
    cls = None if cls_prob is None else tf.reshape(cls_prob, [1])
    return apply_tf(post, prob, cls, side=tf.maximum(height, width))[0, ..., 0]


def _component_areas_tf(mask):
    """For each pixel of a boolean ``[B, H, W, 1]`` mask, the area of its 8-connected component
    (sizes may be dynamic; off the mask the value is meaningless).

    Labels horizontal runs, not pixels: the images' rows are stacked, each run of mask pixels in
    a row gets an id (a cumulative sum of run starts), and two runs in consecutive rows of one
    image are joined where any of their pixels touch (three column offsets; one edge where a
    run pair begins, so a few edges per run). A parallel union-find over the run ids then hooks
    each edge's roots onto the larger one and shortcuts pointers by jumping four times per
    round, until nothing changes; pointers only grow and stay inside a component, so each
    component ends with one root (its largest run id). Rounds grow with the log of a component's
    runs; the work per round is over runs and edges, not pixels.
    """
    from keras_ptx.tf_setup import tf

    shape = tf.shape(mask)
    height, width = shape[1], shape[2]
    rows = tf.reshape(mask, [-1, width])                        # [B * H, W]
    on = tf.cast(rows, tf.int32)
    starts = on * (1 - tf.pad(on[:, :-1], [[0, 0], [1, 0]]))   # 1 where a run begins
    run = tf.reshape(tf.cumsum(tf.reshape(starts, [-1])), tf.shape(rows)) * on
    count = tf.reduce_sum(starts) + 1                          # run ids 1..K; 0 is off the mask
    same_image = tf.cast(tf.range(1, tf.shape(rows)[0]) % height > 0, tf.int32)[:, None]
    up, down = run[:-1] * same_image, run[1:]

    def shifted(x, d):          # column c holds x[:, c + d] (0 outside the row)
        return x if d == 0 else tf.pad(x[:, d:], [[0, 0], [0, d]]) if d > 0 \
            else tf.pad(x[:, :d], [[0, 0], [-d, 0]])

    sources, targets = [], []
    for d in (-1, 0, 1):
        below = shifted(down, d)
        touching = (up > 0) & (below > 0)
        begins = touching & ((up != shifted(up, -1)) | (below != shifted(below, -1)))
        sources.append(tf.boolean_mask(up, begins))
        targets.append(tf.boolean_mask(below, begins))
    source, target = tf.concat(sources, 0), tf.concat(targets, 0)
    ends = tf.concat([source, target], 0)
    others = tf.concat([target, source], 0)

    def step(parent, _):
        hook = tf.math.unsorted_segment_max(tf.gather(parent, others), tf.gather(parent, ends),
                                            count)
        new = tf.maximum(parent, hook)
        for _ in range(4):
            new = tf.gather(new, new)
        return new, tf.reduce_any(tf.not_equal(new, parent))

    root, _ = tf.while_loop(lambda _, changed: changed, step,
                            (tf.range(count), tf.constant(True)))
    lengths = tf.math.unsorted_segment_sum(tf.reshape(on, [-1]), tf.reshape(run, [-1]), count)
    run_areas = tf.gather(tf.math.unsorted_segment_sum(lengths, root, count), root)
    return tf.reshape(tf.gather(run_areas, run), shape)
