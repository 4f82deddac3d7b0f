"""Gray radiograph -> encoder input in TensorFlow ops (training, evaluation and export share it).

The EfficientNet encoders of segmentation-models expect RGB scaled to [0, 1] minus the ImageNet
mean, divided by its standard deviation (``efficientnet.model.preprocess_input``, "torch" mode).
"""
from __future__ import annotations

from keras_ptx.tf_setup import tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_model_input(gray):
    """[..., H, W, 1] uint8 (or float 0..255) -> float32 [..., H, W, 3], ImageNet-normalised.

    One broadcast multiply-add (gray * scale + offset per channel) makes the three channels
    at once: a cast, a concat and two passes more cost half a training batch's input rate.
    """
    gray = tf.convert_to_tensor(gray)
    if gray.shape.rank is not None and gray.shape[-1] != 1:
        raise ValueError(f"to_model_input expects one gray channel last, got shape {gray.shape}")
    scale = tf.constant([1.0 / (255.0 * s) for s in IMAGENET_STD])
    offset = tf.constant([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    return tf.cast(gray, tf.float32) * scale + offset
