"""Random weights that behave like trained ones where inference speed can tell the difference.

A freshly built network's batch norms are identities (mean 0, variance 1, gamma 1, beta 0), so
folding them gives biases of exactly zero, and a frozen graph drops bias additions of zero
constants, which a trained network's graph keeps: the benchmarks randomise the statistics.
"""
import numpy as np

from keras_ptx.tf_setup import tf


def randomise_batch_norms(model, seed: int = 1) -> None:
    """Give every BatchNormalization of ``model`` random statistics (in place)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if name in ("gamma", "variance")
                               else rng.normal(0, 0.1, w.shape)
                               for name, w in zip(_names(layer), layer.get_weights())])


def _names(layer) -> list[str]:
    return (["gamma"] * layer.scale + ["beta"] * layer.center + ["mean", "variance"])
