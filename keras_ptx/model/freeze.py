"""Inference networks frozen into constant graphs.

A Keras network reads every weight from a variable on each call (under a mixed policy it also
casts it to the compute dtype there). Frozen, the weights are constants of the graph: Grappler
folds those casts once, and oneDNN reorders each convolution's filter into its own layout once
and keeps it (it caches only constant filters). The same function, faster where weights weigh
against activations (BENCHMARKS.md). A graph cannot hold
more than 2 GB (a protocol buffer's limit, which a SavedModel's saved_model.pb shares), so
only networks whose weights together stay under :data:`MAX_BYTES` are frozen (:func:`fits`).
"""
from __future__ import annotations

from keras_ptx.tf_internals import variables_to_constants
from keras_ptx.tf_setup import tf

MAX_BYTES = 1 << 30                     # of weights frozen into one graph; half the 2 GB limit


def weight_bytes(models) -> int:
    """Bytes of every weight of ``models``."""
    return sum(v.shape.num_elements() * v.dtype.size for m in models for v in m.weights)


def fits(models) -> bool:
    """Whether ``models`` may be frozen into one graph."""
    return weight_bytes(models) <= MAX_BYTES


def freeze(model: tf.keras.Model):
    """``model(x, training=False)`` as a concrete function of a batch of any length with every
    weight a constant; its outputs come as a list in the model's output order."""
    spec = tf.TensorSpec([None, *model.input_shape[1:]], model.inputs[0].dtype)
    traced = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    return variables_to_constants(traced)
