"""Run a trained model on batches: probability maps and image-level probabilities.

One compiled function per model (``tf.function`` with a fixed input signature, so batches of
any length reuse one trace; ``Model.predict`` would pay its per-call set-up on every batch).
With ``tta='hflip'`` each batch is run together with its mirror image and the mirrored map is
flipped back and averaged in. The image-level probability is the ``label`` head's output when
the model has one, else the map's maximum pixel probability.
"""
from __future__ import annotations

import numpy as np

from keras_ptx.config import Tta
from keras_ptx.input.normalize import to_model_input
from keras_ptx.model.unetpp import named_outputs
from keras_ptx.tf_setup import tf

class Predictor:
    def __init__(self, model, tta: Tta = "none"):
        self.model = model
        self.tta = tta
        self.names = list(model.output_names)
        if self.names[0] != "mask":
            raise ValueError(f"the model's first output must be 'mask', got {self.names}")
        self.has_label_head = "label" in self.names
        self.size = int(model.input_shape[1])
        spec = tf.TensorSpec([None, self.size, self.size, 3], tf.float32)
        self._normalised = tf.function(self.run_tf, input_signature=[spec])
        gray = tf.TensorSpec([None, self.size, self.size, 1], tf.uint8)
        self._gray = tf.function(lambda g: self.run_tf(to_model_input(g)), input_signature=[gray])

    def _outputs(self, x):
        return named_outputs(self.model, self.model(x, training=False))

    def run_tf(self, x):
        """Graph version: normalised ``[B, S, S, 3]`` -> (maps ``[B, S, S]``, image prob ``[B]``)."""
        n = tf.shape(x)[0]
        if self.tta == "hflip":
            out = self._outputs(tf.concat([x, tf.reverse(x, axis=[2])], axis=0))
            mask = (out["mask"][:n] + tf.reverse(out["mask"][n:], axis=[2])) / 2.0
            label = (out["label"][:n] + out["label"][n:]) / 2.0 if self.has_label_head else None
        else:
            out = self._outputs(x)
            mask, label = out["mask"], out.get("label")
        mask = tf.cast(mask[..., 0], tf.float32)
        if label is None:
            image = tf.reduce_max(mask, axis=[1, 2])
        else:
            image = tf.reshape(tf.cast(label, tf.float32), [-1])
        return mask, image

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 ``[B, S, S, 3]`` -> (maps float32 ``[B, S, S]``, image prob ``[B]``)."""
        mask, image = self._normalised(tf.convert_to_tensor(images, tf.float32))
        return mask.numpy(), image.numpy()

    def from_gray(self, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[B, S, S]`` gray squares (the record grid) -> as :meth:`__call__`."""
        mask, image = self._gray(tf.convert_to_tensor(squares[..., None], tf.uint8))
        return mask.numpy(), image.numpy()
