"""Losses of the network's outputs, chosen and weighted in ``train.loss``.

Mask terms: binary cross-entropy, soft Dice over the batch, binary focal loss (all three from
segmentation-models), the Lovasz hinge (Berman et al., 2018; written here, per image and
vectorised, as segmentation-models has none) and U-Net's border-weighted cross-entropy
(:func:`border_bce`: the pixel weights come with the truth, as its second channel, from the
input pipeline: :mod:`keras_ptx.input.border`). The paper's recipe is BCE + Dice. Deep-supervision
outputs share the mask loss and every mask output weighs 1/n (the paper's average); ``label``
gets binary cross-entropy weighted by ``train.loss.classifier``.
"""
from __future__ import annotations

from keras_ptx.tf_setup import tf  # before segmentation_models, which imports TensorFlow

import segmentation_models as sm

from keras_ptx.config import Config, LossConfig
from keras_ptx.model.unetpp import output_names
from keras_ptx.tf_internals import keras_logits

_EPSILON = 1e-7


class MaskLoss(sm.base.Loss):
    """Weighted sum of mask loss terms on probabilities; the truth is cast to their dtype.
    With a ``border`` weight, the truth is [..., 2]: the mask, then its border weights."""

    def __init__(self, terms, border: float = 0.0):
        super().__init__(name="mask_loss")
        self.terms = tuple((float(weight), term) for weight, term in terms if weight)
        self.border = float(border)
        if not self.terms and not self.border:
            raise ValueError("train.loss: every mask term (bce, dice, focal, lovasz, "
                             "border_bce) has weight 0")

    def __call__(self, gt, pr):
        gt = tf.cast(gt, pr.dtype)
        mask = gt[..., :1]
        losses = [weight * term(mask, pr) for weight, term in self.terms]
        if self.border:
            losses.append(self.border * border_bce(mask, gt[..., 1:], pr))
        return tf.add_n(losses)


def border_bce(gt, weights, pr):
    """Mean over pixels of ``weights`` x binary cross-entropy of probabilities ``pr`` against
    ``gt`` (from the logits Keras' sigmoid caches on its output, as Keras' own BCE does)."""
    return tf.reduce_mean(weights * tf.keras.backend.binary_crossentropy(gt, pr))


class LovaszHingeLoss(sm.base.Loss):
    """Lovasz hinge on the logits of sigmoid probabilities, per image, averaged over the batch."""

    def __init__(self):
        super().__init__(name="lovasz_hinge_loss")

    def __call__(self, gt, pr):
        return tf.reduce_mean(lovasz_hinge_per_image(gt, pr))


def lovasz_hinge_per_image(gt, pr):
    """[B] Lovasz hinge losses of probabilities ``pr`` against binary ``gt`` (any [B, ...] shape).

    Uses the logits that Keras' sigmoid caches on its output when there are any (as Keras' own
    cross-entropy does): recovered from float32 probabilities, a confidently wrong pixel
    (|logit| > ~16) would saturate and get no gradient.
    """
    batch = tf.shape(pr)[0]
    logits = keras_logits(pr)
    if logits is None:
        pr = tf.clip_by_value(tf.cast(pr, tf.float32), _EPSILON, 1 - _EPSILON)
        logits = tf.math.log(pr) - tf.math.log1p(-pr)
    logits = tf.reshape(tf.cast(logits, tf.float32), [batch, -1])
    gt = tf.reshape(tf.cast(gt, tf.float32), [batch, -1])
    errors = 1.0 - logits * (2.0 * gt - 1.0)
    order = tf.argsort(errors, axis=1, direction="DESCENDING", stable=True)
    errors_sorted = tf.gather(errors, order, batch_dims=1)
    gt_sorted = tf.gather(gt, order, batch_dims=1)
    # Gradient of the Lovasz extension of the Jaccard loss with respect to the sorted errors.
    positives = tf.reduce_sum(gt_sorted, axis=1, keepdims=True)
    intersection = positives - tf.cumsum(gt_sorted, axis=1)
    union = positives + tf.cumsum(1.0 - gt_sorted, axis=1)
    jaccard = 1.0 - intersection / union
    grad = tf.concat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)
    return tf.reduce_sum(tf.nn.relu(errors_sorted) * tf.stop_gradient(grad), axis=1)


def mask_loss(loss: LossConfig) -> MaskLoss:
    return MaskLoss([(loss.bce, sm.losses.BinaryCELoss()),
                     (loss.dice, sm.losses.DiceLoss()),
                     (loss.focal, sm.losses.BinaryFocalLoss()),
                     (loss.lovasz, LovaszHingeLoss())], loss.border_bce)


def make_losses(config: Config) -> tuple[dict, dict]:
    """(losses, loss_weights), both keyed by output name, for ``Model.compile``."""
    names = output_names(config.model)
    masks = [name for name in names if name.startswith("mask")]
    shared = mask_loss(config.train.loss)
    losses = {name: shared for name in masks}
    weights = {name: 1.0 / len(masks) for name in masks}
    if "label" in names:
        losses["label"] = tf.keras.losses.BinaryCrossentropy(name="label_loss")
        weights["label"] = float(config.train.loss.classifier)
    return losses, weights
