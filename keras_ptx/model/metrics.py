"""Streaming per-image mask scores: the competition's Dice and IoU.

Each image scores on its own (prediction thresholded at ``threshold``, truth at 0.5), 1.0 when
prediction and truth are both empty, and the metric is the mean over all images seen: the
totals are summed across batches and replicas, so the result does not depend on batching.
Given several thresholds, the metric keeps one mean per threshold and reports the best: a
score that does not hinge on one pixel threshold, for choosing checkpoints while the
network's probabilities are still drifting. Both compile under XLA (only reductions and
element-wise ops).
"""
from __future__ import annotations

import abc

from keras_ptx.config import Config
from keras_ptx.model.unetpp import output_names
from keras_ptx.tf_setup import tf


class _PerImageScore(tf.keras.metrics.Metric):
    def __init__(self, threshold=0.5, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.threshold = threshold
        self._thresholds = [float(t) for t in
                            (threshold if isinstance(threshold, (list, tuple)) else [threshold])]
        shape = (len(self._thresholds),)
        self.total = self.add_weight(name="total", shape=shape, initializer="zeros")
        self.count = self.add_weight(name="count", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        batch = tf.shape(y_pred)[0]
        probs = tf.reshape(tf.cast(y_pred, self.dtype), [batch, 1, -1])
        pred = tf.cast(probs > tf.constant(self._thresholds, self.dtype)[:, None], self.dtype)
        y_true = y_true[..., :1]    # a border-weighted loss's truth has its weights next
        true = tf.cast(tf.reshape(y_true, [batch, 1, -1]) > 0.5, self.dtype)
        intersection = tf.reduce_sum(pred * true, axis=2)                   # [B, thresholds]
        pred_area = tf.reduce_sum(pred, axis=2)
        true_area = tf.broadcast_to(tf.reduce_sum(true, axis=2), tf.shape(pred_area))
        score = tf.where(pred_area + true_area > 0,
                         self._score(intersection, pred_area, true_area), tf.ones_like(pred_area))
        weight = tf.ones([batch], self.dtype) if sample_weight is None else tf.broadcast_to(
            tf.reshape(tf.cast(sample_weight, self.dtype), [-1]), [batch])
        self.total.assign_add(tf.reduce_sum(score * weight[:, None], axis=0))
        self.count.assign_add(tf.reduce_sum(weight))

    def result(self):
        return tf.reduce_max(tf.math.divide_no_nan(self.total, self.count))

    def reset_state(self):
        self.total.assign(tf.zeros_like(self.total))
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}

    @staticmethod
    @abc.abstractmethod
    def _score(intersection, pred_area, true_area):
        """Per-image score from the areas (each a [B, thresholds] tensor)."""


class CompetitionScore(_PerImageScore):
    """Mean over images of Dice(pred > threshold, truth); 1.0 for an image when both are empty
    (the best such mean over several thresholds if given)."""

    def __init__(self, threshold=0.5, name="score", dtype=None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    @staticmethod
    def _score(intersection, pred_area, true_area):
        return tf.math.divide_no_nan(2.0 * intersection, pred_area + true_area)


class PerImageIoU(_PerImageScore):
    """Mean over images of IoU(pred > threshold, truth); 1.0 for an image when both are empty."""

    def __init__(self, threshold=0.5, name="iou", dtype=None):
        super().__init__(threshold=threshold, name=name, dtype=dtype)

    @staticmethod
    def _score(intersection, pred_area, true_area):
        return tf.math.divide_no_nan(intersection, pred_area + true_area - intersection)


def make_metrics(config: Config) -> dict:
    """Metrics for ``Model.compile``, keyed by output name: the main mask's scores (at
    ``train.metric_threshold``) and, with the image-level head, the label's AUC."""
    threshold = config.train.metric_threshold
    metrics = {"mask": [CompetitionScore(threshold), PerImageIoU(threshold)]}
    if "label" in output_names(config.model):
        metrics["label"] = [tf.keras.metrics.AUC(name="auc")]
    return metrics
