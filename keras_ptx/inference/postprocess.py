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
exactly with a parallel union-find (hook onto the largest neighbouring root, jump pointers),
iterated until nothing changes.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from keras_ptx.config import Tta, choices
from keras_ptx.fileio import read_text, write_atomic
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
            raw = json.loads(read_text(path))
        except json.JSONDecodeError as exc:
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

    ``cls_prob`` is ``[B]`` or ``[B, 1]``; ``side`` defaults to ``max(H, W)`` (static when known).
    """
    from keras_ptx.tf_setup import tf

    prob = tf.cast(tf.convert_to_tensor(prob_maps), tf.float32)
    if side is None:
        static = prob.shape[1:3]
        if static[0] is None or static[1] is None:
            raise PostProcessError("apply_tf needs the map's static height and width or `side`")
        side = max(static[0], static[1])
    top, min_pixels, bottom, min_area = post.rule(int(side))
    keep = tf.ones(tf.shape(prob)[:1], dtype=tf.bool)
    if post.cls_threshold is not None:
        if cls_prob is None:
            raise PostProcessError(f"{post.name} needs the image-level probability")
        cls = tf.reshape(tf.cast(cls_prob, tf.float32), [-1])
        keep = keep & (cls >= tf.constant(post.cls_threshold, tf.float32))
    if min_pixels:
        above = tf.reduce_sum(tf.cast(prob > tf.constant(top, tf.float32), tf.int32), axis=[1, 2, 3])
        keep = keep & (above >= min_pixels)
    mask = (prob > tf.constant(bottom, tf.float32)) & keep[:, None, None, None]
    if min_area:
        mask = mask & (_component_areas_tf(mask) >= min_area)
    return tf.cast(mask, tf.uint8)


def _component_areas_tf(mask):
    """For each pixel of a boolean ``[B, H, W, 1]`` mask, the area of its 8-connected component.

    Parallel union-find on a parent array over each image's pixels (1-based flat indices, held
    in float32, exact up to 4096 x 4096; index 0 is the background). Pointers only ever grow
    and stay inside a component. Each round hooks every pixel's current root onto the largest
    root among its 8 neighbours (3x3 max-pool, segment max), then shortcuts pointers by
    jumping four times. At the fixed point every pointer is a root and neighbours share roots, so
    each component has exactly one root: its largest index. Rounds grow roughly with the log
    of a component's extent, not its length.
    """
    from keras_ptx.tf_setup import tf

    shape = tf.shape(mask)
    batch, n = shape[0], shape[1] * shape[2]
    ids = tf.reshape(tf.range(1, n + 1, dtype=tf.int32), [1, shape[1], shape[2], 1])
    zeros = tf.zeros_like(mask, dtype=tf.float32)
    own = tf.where(mask, tf.cast(tf.broadcast_to(ids, shape), tf.float32), zeros)
    start = tf.concat([tf.zeros([batch, 1]), tf.reshape(own, [batch, n])], axis=1)
    offset = tf.range(batch)[:, None] * (n + 1)            # parent arrays side by side

    def jump(parent):
        return tf.gather(parent, tf.cast(parent, tf.int32), batch_dims=1)

    def step(parent, _):
        labels = tf.reshape(parent[:, 1:], shape)
        neighbour = tf.where(mask, tf.nn.max_pool2d(labels, 3, 1, "SAME"), zeros)
        roots = tf.cast(tf.reshape(labels, [batch, n]), tf.int32) + offset
        hook = tf.math.unsorted_segment_max(tf.reshape(neighbour, [-1]), tf.reshape(roots, [-1]),
                                            batch * (n + 1))
        hooked = tf.maximum(parent, tf.reshape(hook, [batch, n + 1]))
        new = jump(jump(jump(jump(hooked))))
        return new, tf.reduce_any(tf.not_equal(new, parent))

    parent, _ = tf.while_loop(lambda _, changed: changed, step, (start, tf.constant(True)))
    segment = tf.cast(parent[:, 1:], tf.int32) + offset
    counts = tf.math.unsorted_segment_sum(tf.ones_like(segment), segment, batch * (n + 1))
    return tf.reshape(tf.gather(counts, segment), shape)
