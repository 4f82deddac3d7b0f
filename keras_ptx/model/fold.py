"""Inference networks with each BatchNormalization folded into the convolution before it.

In inference a BatchNormalization is a per-channel affine map, ``y = (x - mean) * scale + beta``
with ``scale = gamma / sqrt(var + eps)``; after a convolution (or a depthwise one) whose only
consumer it is, it can be merged into that convolution's kernel (times ``scale`` per output
channel) and bias (``(bias - mean) * scale + beta``). The folded network computes the same
function with one op fewer per convolution, in less time (BENCHMARKS.md). Everything that runs a
trained network for its answers (:class:`keras_ptx.inference.runner.Predictor`: evaluate,
predict, export) runs the folded one, so they answer alike; training keeps the original layers.
"""
from __future__ import annotations

import numpy as np

from keras_ptx.tf_internals import inbound_nodes, node_inputs, outbound_nodes
from keras_ptx.tf_setup import tf

layers = tf.keras.layers
CONVOLUTIONS = (layers.Conv2D, layers.DepthwiseConv2D)


def foldable_pairs(model: tf.keras.Model) -> dict[str, layers.BatchNormalization]:
    """Convolution name -> the BatchNormalization that alone consumes its output: a plain
    channels-last Conv2D or DepthwiseConv2D (not a subclass such as Conv2DTranspose, whose
    kernel is laid out otherwise) without an activation of its own, used once."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or len(inbound_nodes(layer)) != 1:
            continue
        source = node_inputs(inbound_nodes(layer)[0])
        if (type(source) in CONVOLUTIONS and source.get_config()["activation"] == "linear"
                and len(inbound_nodes(source)) == 1 and len(outbound_nodes(source)) == 1
                and list(layer.axis) in ([-1], [3])):
            pairs[source.name] = layer
    return pairs


def fold_batch_norm(model: tf.keras.Model) -> tf.keras.Model:
    """A copy of ``model`` for inference with every foldable BatchNormalization merged into its
    convolution (the BatchNormalization becomes a linear activation of the same name); the
    original is left as it is. Same inputs, outputs, names and dtype policies."""
    pairs = foldable_pairs(model)
    if not pairs:
        return model
    folded = {bn.name for bn in pairs.values()}

    def clone(layer):
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        elif layer.name in folded:
            return layers.Activation("linear", name=layer.name, dtype=layer.dtype_policy)
        return layer.__class__.from_config(config)

    twin = tf.keras.models.clone_model(model, clone_function=clone)
    assignments = []
    for layer in model.layers:
        if layer.name in folded or not layer.weights:
            continue
        weights = _folded(layer, pairs[layer.name]) if layer.name in pairs else layer.get_weights()
        assignments += zip(twin.get_layer(layer.name).weights, weights)
    tf.keras.backend.batch_set_value(assignments)
    return twin


def _folded(conv, bn) -> list[np.ndarray]:
    """The kernel and bias of ``conv`` followed by ``bn`` in inference, in float64 then cast."""
    kernel, *bias = conv.get_weights()
    dtype = kernel.dtype
    mean, var = (np.asarray(v.numpy(), np.float64) for v in (bn.moving_mean, bn.moving_variance))
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros_like(mean)
    bias = np.asarray(bias[0], np.float64) if bias else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.epsilon)
    kernel = np.asarray(kernel, np.float64)
    if isinstance(conv, layers.DepthwiseConv2D):    # [h, w, in, multiplier]: out = in * mult
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])[None, None]
    else:                                           # [h, w, in, out]
        kernel = kernel * scale
    return [kernel.astype(dtype), ((bias - mean) * scale + beta).astype(dtype)]
