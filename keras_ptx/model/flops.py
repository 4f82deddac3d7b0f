"""Size of a network: parameters and floating-point operations per image.

FLOPs count each multiply-add of the convolutions and dense layers as two operations (the
usual convention); normalisation, activations and resizing add a few percent more.
"""
from __future__ import annotations

import numpy as np

from keras_ptx.tf_setup import tf


def count_flops(model: tf.keras.Model) -> int:
    """Multiply-add FLOPs of one forward pass of one image through ``model``."""
    total = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D)):
            kernel = layer.depthwise_kernel if isinstance(
                layer, tf.keras.layers.DepthwiseConv2D) else layer.kernel
            # A depthwise kernel (kh, kw, cin, m) and a conv kernel (kh, kw, cin/groups, cout)
            # both hold the multiply-adds per output position of all its channels.
            positions = int(np.prod(layer.output_shape[1:-1]))
            total += 2 * positions * int(np.prod(kernel.shape))
        elif isinstance(layer, tf.keras.layers.Dense):
            positions = int(np.prod(layer.output_shape[1:-1]))
            total += 2 * positions * int(np.prod(layer.kernel.shape))
    return total


def size_summary(model: tf.keras.Model) -> dict:
    """Parameters, FLOPs per image and output shapes of ``model``, for a summary line."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return {"name": model.name,
            "input_shape": tuple(model.input_shape[1:]),
            "parameters": model.count_params(),
            "trainable_parameters": trainable,
            "gflops_per_image": count_flops(model) / 1e9,
            "outputs": {name: tuple(output.shape[1:])
                        for name, output in zip(model.output_names, model.outputs)}}


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer
