"""Import TensorFlow with tf-keras and check that tf.keras really is Keras 2."""
import keras_ptx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

if not tf.keras.layers.Layer.__module__.startswith("tf_keras"):
    raise keras_ptx.KerasVersionError(
        "tf.keras is %s, not tf-keras; keras_ptx needs Keras 2 (pip install 'tf-keras~=2.21') "
        "and TF_USE_LEGACY_KERAS=1 before TensorFlow is imported" % tf.keras.layers.Layer.__module__)

__all__ = ["tf"]
