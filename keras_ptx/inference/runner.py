"""Run a trained model, or an ensemble of them, on batches: probability maps and image-level
probabilities.

One compiled function per predictor (``tf.function`` with a fixed input signature, so batches
of any length reuse one trace; ``Model.predict`` would pay its per-call set-up on every batch).
With ``tta='hflip'`` each batch is run together with its mirror image and the mirrored map is
flipped back and averaged in. The image-level probability is the ``label`` head's output when
the model has one, else the map's maximum pixel probability. An ensemble (several models, e.g.
a run's best epochs or the folds of a fold folder) averages its members' maps and image-level
probabilities, each member with the TTA; an ensemble of one model is that model. Its members
share one input normalisation (``model.normalization``), which :meth:`Predictor.from_gray` and
:meth:`Predictor.run_gray_tf` apply (:func:`keras_ptx.input.normalize.to_model_input`). Each member
runs with its BatchNormalizations folded into its convolutions
(:func:`keras_ptx.model.fold.fold_batch_norm`) and, unless the members' weights are too large for
one graph, frozen into constants (:mod:`keras_ptx.model.freeze`): the same function, faster. Every
consumer of a predictor (evaluate, predict, the SavedModel) runs that same graph.
"""
from __future__ import annotations

import numpy as np

from keras_ptx.config import Normalization, Tta
from keras_ptx.input.normalize import DEFAULT, to_model_input
from keras_ptx.model import freeze
from keras_ptx.model.fold import fold_batch_norm
from keras_ptx.model.unetpp import named_outputs
from keras_ptx.tf_setup import tf


class Predictor:
    def __init__(self, models, tta: Tta = "none", normalization: Normalization = DEFAULT):
        """``models``: a Keras model, or a list of them on one grid size (an ensemble), all
        taking ``normalization``'s input."""
        models = list(models) if isinstance(models, (list, tuple)) else [models]
        for model in models:
            if model.output_names[0] != "mask":
                raise ValueError(f"a model's first output must be 'mask', got "
                                 f"{model.output_names}")
        self.models = [fold_batch_norm(model) for model in models]
        self.frozen = freeze.fits(self.models)
        self._networks = [freeze.freeze(model) if self.frozen
                          else (lambda x, model=model: model(x, training=False))
                          for model in self.models]
        self.tta, self.normalization = tta, normalization
        self.has_label_head = all("label" in m.output_names for m in self.models)
        sizes = {int(m.input_shape[1]) for m in self.models}
        if len(sizes) != 1:
            raise ValueError(f"an ensemble's models must share one grid size, got {sorted(sizes)}")
        self.size = sizes.pop()
        spec = tf.TensorSpec([None, self.size, self.size, 3], tf.float32)
        self._normalised = tf.function(self.run_tf, input_signature=[spec])
        gray = tf.TensorSpec([None, self.size, self.size, 1], tf.uint8)
        self._gray = tf.function(self.run_gray_tf, input_signature=[gray])

    @property
    def variables(self) -> list:
        """The variables the members read (what a SavedModel of the predictor checkpoints):
        none when they are frozen."""
        return [] if self.frozen else [v for model in self.models for v in model.variables]

    def run_tf(self, x):
        """Graph version: normalised ``[B, S, S, 3]`` -> (maps ``[B, S, S]``, image prob ``[B]``)."""
        masks, images = zip(*(self._run_one(model, network, x)
                              for model, network in zip(self.models, self._networks)))
        if len(self.models) == 1:
            return masks[0], images[0]
        return tf.add_n(masks) / len(masks), tf.add_n(images) / len(images)

    def run_gray_tf(self, gray):
        """Graph version from gray ``[B, S, S, 1]`` 0..255 (uint8 or float), normalised here."""
        return self.run_tf(to_model_input(gray, self.normalization))

    def _run_one(self, model, network, x):
        n = tf.shape(x)[0]
        label_head = "label" in model.output_names
        if self.tta == "hflip":
            out = named_outputs(model, network(tf.concat([x, tf.reverse(x, axis=[2])], axis=0)))
            mask = (out["mask"][:n] + tf.reverse(out["mask"][n:], axis=[2])) / 2.0
            label = (out["label"][:n] + out["label"][n:]) / 2.0 if label_head else None
        else:
            out = named_outputs(model, network(x))
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
