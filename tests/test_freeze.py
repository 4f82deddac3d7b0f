"""Networks frozen into constant graphs: the same outputs without a variable, what predictors
run, and the networks too large for one graph left as they are, in process and exported."""
import numpy as np
import pytest

from keras_ptx.config import load_config
from keras_ptx.inference.postprocess import PostProcess
from keras_ptx.inference.runner import Predictor
from keras_ptx.model import build_model, freeze
from keras_ptx.model.unetpp import named_outputs
from keras_ptx.serving.export import export_model
from keras_ptx.tf_setup import tf
from test_fold import _randomise_statistics, deeply_supervised
from test_train import TEST_CONFIG

VARIABLE_OPS = {"VarHandleOp", "ReadVariableOp", "VariableV2"}


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_a_frozen_network_reads_no_variable_and_answers_the_same(policy):
    model = deeply_supervised(policy)
    frozen = freeze.freeze(model)
    assert not frozen.captured_inputs
    assert not {op.type for op in frozen.graph.get_operations()} & VARIABLE_OPS
    x = np.random.default_rng(4).normal(size=(3, 64, 64, 3)).astype(np.float32)
    got, want = (named_outputs(model, outputs) for outputs in (frozen(tf.constant(x)),
                                                                model(x, training=False)))
    assert list(got) == model.output_names == ["mask", "mask_1", "mask_2", "mask_3", "label"]
    tolerance = 1e-5 if policy == "float32" else 0.05      # bfloat16 kernels may differ a step
    for name in want:
        assert got[name].dtype == tf.float32
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), atol=tolerance)


def test_a_single_output_network_freezes_to_a_list_of_it():
    inputs = tf.keras.Input((8, 8, 2))
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(3, 3, padding="same")(inputs))
    x = np.random.default_rng(5).normal(size=(2, 8, 8, 2)).astype(np.float32)
    [out] = freeze.freeze(model)(tf.constant(x))
    np.testing.assert_allclose(out.numpy(), model(x).numpy(), atol=1e-6)


def test_members_too_large_for_one_graph_are_run_and_exported_with_their_variables(
        monkeypatch, tmp_path):
    model = build_model(load_config(TEST_CONFIG))
    _randomise_statistics(model)
    frozen = Predictor(model)
    assert frozen.frozen and frozen.variables == []
    monkeypatch.setattr(freeze, "MAX_BYTES", freeze.weight_bytes(frozen.models) - 1)
    kept = Predictor(model)
    assert not kept.frozen and kept.variables == kept.models[0].variables
    x = np.random.default_rng(6).normal(size=(2, 64, 64, 3)).astype(np.float32)
    for got, want in zip(kept(x), frozen(x)):
        np.testing.assert_allclose(got, want, atol=1e-5)

    squares = np.random.default_rng(7).integers(0, 256, (2, 64, 64, 1)).astype(np.float32)
    in_process = kept._gray(tf.constant(squares, tf.uint8))[0].numpy()
    for predictor, name in ((kept, "kept"), (frozen, "frozen")):
        export = export_model(predictor, PostProcess(), tmp_path / name, warmup_requests=0)
        checkpointed = [n for n, _ in tf.train.list_variables(f"{export}/variables/variables")
                        if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
        assert bool(checkpointed) == (name == "kept")
        served = tf.saved_model.load(export).signatures["predict_image"](
            images=tf.constant(squares))["probabilities"].numpy()
        np.testing.assert_allclose(served, in_process, atol=1e-5)
