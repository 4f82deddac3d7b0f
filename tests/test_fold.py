"""Folding inference BatchNormalization into the convolution before it: the same function, the
original left untouched, only the foldable pairs folded, and the networks every predictor runs."""
import numpy as np
import pytest

from keras_ptx.config import load_config
from keras_ptx.inference.runner import Predictor
from keras_ptx.model import build_model
from keras_ptx.model.fold import fold_batch_norm, foldable_pairs
from keras_ptx.model.unetpp import named_outputs
from keras_ptx.tf_setup import tf
from test_train import TEST_CONFIG

layers = tf.keras.layers


def _randomise_statistics(model, seed=0):
    """Batch-norm statistics far from the identity, so a wrong fold cannot pass."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if "variance" in w.name or
                               "gamma" in w.name else rng.normal(0, 0.3, w.shape)
                               for w in layer.weights])


def deeply_supervised(policy: str):
    """The tests' UNet++ with deep supervision under ``policy``, random batch-norm statistics."""
    model = build_model(load_config(TEST_CONFIG, ["model.deep_supervision=true",
                                                  f"train.mixed_precision={policy}"]))
    _randomise_statistics(model)
    return model


def _toy():
    x = inputs = tf.keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="plain")(x)
    x = layers.BatchNormalization(name="plain_bn")(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="depthwise")(x)
    x = layers.BatchNormalization(name="depthwise_bn")(x)
    x = layers.Activation("swish")(x)
    y = layers.Conv2D(16, 1, name="shared")(x)                # two consumers: not foldable
    z = layers.BatchNormalization(center=False, name="shared_bn")(y)
    x = layers.Add()([y, z])
    x = layers.BatchNormalization(scale=False, name="after_add")(x)   # no convolution before it
    x = layers.Conv2D(4, 1, name="biased")(x)
    x = layers.BatchNormalization(center=False, scale=False, name="biased_bn")(x)
    x = layers.Conv2D(4, 1, activation="relu", name="activated")(x)   # BN after the relu
    x = layers.BatchNormalization(name="activated_bn")(x)
    x = layers.Conv2DTranspose(4, 3, padding="same", name="transposed")(x)  # [h, w, out, in]
    x = layers.BatchNormalization(name="transposed_bn")(x)
    return tf.keras.Model(inputs, x)


def test_folding_keeps_the_function_and_folds_only_a_convolutions_sole_consumer():
    model = _toy()
    _randomise_statistics(model)
    before = [w.copy() for w in model.get_weights()]
    assert {k: v.name for k, v in foldable_pairs(model).items()} == {
        "plain": "plain_bn", "depthwise": "depthwise_bn", "biased": "biased_bn"}
    folded = fold_batch_norm(model)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(),
                               rtol=1e-5, atol=1e-5)
    kinds = {layer.name: type(layer).__name__ for layer in folded.layers}
    assert kinds["plain_bn"] == kinds["depthwise_bn"] == kinds["biased_bn"] == "Activation"
    for name in ("shared_bn", "after_add", "activated_bn", "transposed_bn"):
        assert kinds[name] == "BatchNormalization", name
    assert folded.get_layer("plain").use_bias and folded.get_layer("depthwise").use_bias
    for got, want in zip(model.get_weights(), before):           # the original is untouched
        np.testing.assert_array_equal(got, want)
    assert isinstance(model.get_layer("plain_bn"), layers.BatchNormalization)


def test_a_network_without_batch_norm_is_returned_as_it_is():
    inputs = tf.keras.Input((8, 8, 1))
    model = tf.keras.Model(inputs, layers.Conv2D(2, 3)(inputs))
    assert fold_batch_norm(model) is model


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_every_batch_norm_of_the_unetpp_folds_and_its_outputs_stay(policy):
    model = deeply_supervised(policy)
    folded = fold_batch_norm(model)
    assert not [layer for layer in folded.layers if isinstance(layer, layers.BatchNormalization)]
    assert folded.output_names == model.output_names
    assert folded.get_layer("x01_conv1").compute_dtype == model.get_layer("x01_conv1").compute_dtype
    x = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)
    got = named_outputs(folded, folded(x, training=False))
    want = named_outputs(model, model(x, training=False))
    tolerance = 1e-5 if policy == "float32" else 0.05      # a few bfloat16 steps of rounding
    for name in want:
        assert got[name].dtype == tf.float32
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), atol=tolerance)


def test_a_predictor_runs_the_folded_networks_of_its_members():
    model = build_model(load_config(TEST_CONFIG))
    _randomise_statistics(model)
    predictor = Predictor([model, model])
    assert len(predictor.models) == 2 and predictor.models[0] is not model
    assert not [layer for m in predictor.models for layer in m.layers
                if isinstance(layer, layers.BatchNormalization)]
    x = np.random.default_rng(3).normal(size=(2, 64, 64, 3)).astype(np.float32)
    maps, _ = predictor(x)
    np.testing.assert_allclose(maps, model(x, training=False)[0].numpy()[..., 0], atol=1e-5)
