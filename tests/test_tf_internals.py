"""Each private TensorFlow / tf-keras internal of keras_ptx.tf_internals, pinned on a tiny
network: an upgrade that moves one fails here, by name."""
import numpy as np

from keras_ptx import tf_internals
from keras_ptx.tf_setup import tf

layers = tf.keras.layers


def _conv_bn():
    """input -> conv -> batch norm -> relu, and a second conv used twice."""
    x = tf.keras.Input((8, 8, 3))
    conv = layers.Conv2D(4, 3, padding="same", name="conv")
    bn = layers.BatchNormalization(name="bn")
    shared = layers.Conv2D(4, 1, name="shared")
    y = layers.ReLU()(bn(conv(x)))
    return tf.keras.Model(x, [shared(y), shared(y)]), conv, bn, shared


def test_layer_nodes_name_a_layers_calls_and_their_input():
    _, conv, bn, shared = _conv_bn()
    assert len(tf_internals.inbound_nodes(bn)) == 1
    assert tf_internals.node_inputs(tf_internals.inbound_nodes(bn)[0]) is conv
    assert len(tf_internals.outbound_nodes(conv)) == 1
    assert len(tf_internals.inbound_nodes(shared)) == 2


def test_variables_to_constants_freezes_the_weights():
    weight = tf.Variable([[2.0]])
    traced = tf.function(lambda x: tf.matmul(x, weight)).get_concrete_function(
        tf.TensorSpec([None, 1], tf.float32))
    frozen = tf_internals.variables_to_constants(traced)
    assert not frozen.graph.variables
    assert not [op for op in frozen.graph.get_operations() if op.type == "ReadVariableOp"]
    weight.assign([[5.0]])                      # the frozen graph kept the value it read
    np.testing.assert_array_equal(frozen(tf.constant([[3.0]]))[0], [[6.0]])


def test_a_sigmoid_output_carries_its_logits():
    @tf.function
    def logits_behind(x):
        return tf_internals.keras_logits(layers.Activation("sigmoid")(x))

    x = tf.constant([[-30.0, 0.0, 30.0]])
    np.testing.assert_array_equal(logits_behind(x), x)
    assert tf_internals.keras_logits(tf.constant([0.5])) is None


class _Recorded(tf_internals.HookedModelCheckpoint):
    def write_file(self, filepath):
        self.written.append(filepath)


def test_model_checkpoint_writes_through_write_file_and_saves_when_told(tmp_path):
    model = tf.keras.Sequential([tf.keras.Input((1,)), layers.Dense(1)])
    checkpoint = _Recorded(str(tmp_path / "e{epoch:03d}.weights.h5"), save_weights_only=True,
                           save_freq=2 * 10**9)     # never due by count: only save_at saves
    checkpoint.written = []
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 1.0})
    assert checkpoint.written == []
    checkpoint.save_at(4, {"loss": 1.0})
    assert checkpoint.written == [str(tmp_path / "e005.weights.h5")]
    checkpoint = tf_internals.HookedModelCheckpoint(str(tmp_path / "keras.weights.h5"),
                                                    save_weights_only=True)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"loss": 1.0})    # Keras' own writer, reached by the hook
    assert (tmp_path / "keras.weights.h5").exists()


def test_backup_and_restore_reaches_the_checkpoint_it_restores_from(tmp_path):
    model = tf.keras.Sequential([tf.keras.Input((1,)), layers.Dense(1)])
    model.compile("sgd", "mse")
    backup = tf.keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    backup.set_model(model)
    backup.on_train_begin()
    tf_internals.create_restored_save_counter(backup)   # AttributeError once the path moves
