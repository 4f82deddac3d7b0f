"""Gray radiograph -> encoder input in TensorFlow ops: the one normalisation that training, its
validation, the TensorBoard images, evaluate, predict, the doctor and the SavedModel apply.

A run's normalisation is ``model.normalization`` (its encoder's, from
:data:`keras_ptx.model.encoders.REGISTRY`; ``imagenet`` for runs older than that setting), one
of :data:`NORMALIZATIONS`: each is ``gray * scale + offset`` per RGB channel.

- ``imagenet``: the EfficientNet encoders of segmentation-models expect RGB scaled to [0, 1]
  minus the ImageNet mean, divided by its standard deviation
  (``efficientnet.model.preprocess_input``, "torch" mode).
- ``pixels``: RGB 0..255, for encoders that normalise inside the network (EfficientNetV2 of
  ``tf.keras.applications`` with its preprocessing layers).

:func:`to_model_input` is the portable form (evaluation, inference, SavedModels);
:func:`fused_to_model_input` is the same arithmetic compiled by XLA for the training pipeline,
which runs it for every image of every epoch.
"""
from __future__ import annotations

from keras_ptx.config import ModelConfig, Normalization
from keras_ptx.tf_setup import tf

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# name -> (scale, offset) per RGB channel of a gray level 0..255
NORMALIZATIONS = {
    "imagenet": (tuple(1.0 / (255.0 * s) for s in IMAGENET_STD),
                 tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))),
    "pixels": ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
}
DEFAULT = ModelConfig.normalization     # what a run without model.normalization was trained with


def to_model_input(gray, normalization: Normalization = DEFAULT):
    """[..., H, W, 1] uint8 (or float 0..255) -> float32 [..., H, W, 3] encoder input.

    Each channel is gray * scale + offset (:data:`NORMALIZATIONS`). Written as a (pixels x 1)
    @ (1 x 3) matrix product plus offset, which TensorFlow's CPU kernels run faster than the
    broadcasting multiply-add (or a cast, concat and two passes).
    """
    gray = tf.convert_to_tensor(gray)
    if gray.shape.rank is not None and gray.shape[-1] != 1:
        raise ValueError(f"to_model_input expects one gray channel last, got shape {gray.shape}")
    scale, offset = NORMALIZATIONS[normalization]
    x = tf.cast(gray, tf.float32)
    rgb = tf.matmul(tf.reshape(x, [-1, 1]), tf.constant([scale])) + tf.constant(offset)
    rgb = tf.reshape(rgb, tf.concat([tf.shape(x)[:-1], [3]], axis=0))
    rgb.set_shape(x.shape[:-1].concatenate([3]))
    return rgb


def gray_from_model_input(image, normalization: Normalization = DEFAULT):
    """[..., H, W, 3] model input (numpy or TensorFlow) -> [..., H, W, 1] gray in [0, 1] (up to
    rounding; the inverse of :func:`to_model_input` for the first channel, as all three are
    the same gray)."""
    scale, offset = NORMALIZATIONS[normalization]
    return (image[..., :1] - offset[0]) / (scale[0] * 255.0)


@tf.function(jit_compile=True)
def fused_to_model_input(gray, normalization: Normalization = DEFAULT):
    """:func:`to_model_input` compiled with XLA, which fuses the cast, product and offset into
    one pass over the pixels, so it costs less CPU than :func:`to_model_input` in the training
    pipeline's main process, which runs it for every image of every epoch (its CPU per image:
    BENCHMARKS.md, "Where the normalisation could run"). Results may differ from
    :func:`to_model_input` in the last bit (< 1e-6). tf.data runs it on the host CPU, GPU or
    not; each batch shape and normalisation compiles once."""
    return to_model_input(gray, normalization)
