"""Every private TensorFlow and tf-keras internal keras_ptx relies on, and nowhere else.

Code reaches these only through this module, and ``tests/test_tf_internals.py`` pins each one,
so a TensorFlow or tf-keras upgrade that moves one fails at that test, by name, rather than
somewhere in training or export.

- ``Layer._inbound_nodes``, ``_outbound_nodes``, ``Node.inbound_layers`` (``model.fold``):
  the convolution a BatchNormalization alone follows.
- ``tensorflow.python.framework.convert_to_constants`` (``model.freeze``): weights as graph
  constants.
- A sigmoid output's ``_keras_logits`` (``model.losses``): the logits behind saturated
  probabilities.
- ``ModelCheckpoint._save_handler``, ``_save_model``, ``epochs_since_last_save``
  (``training.checkpoints``): checkpoint files written whole; a save at an epoch of our choosing.
- ``BackupAndRestore._training_state`` (``training.callbacks``): the restore's collective on
  every worker.
"""
from __future__ import annotations

from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from keras_ptx.tf_setup import tf


def inbound_nodes(layer) -> list:
    """The calls of ``layer`` in the functional networks it belongs to, one node each."""
    return layer._inbound_nodes


def outbound_nodes(layer) -> list:
    """The calls of other layers on ``layer``'s outputs, one node each."""
    return layer._outbound_nodes


def node_inputs(node):
    """The layer whose output a call (a node) took, or a list of them for several inputs."""
    return node.inbound_layers


def variables_to_constants(function):
    """The concrete ``function`` with every variable it reads made a constant of its graph."""
    return convert_variables_to_constants_v2(function)


def keras_logits(probabilities):
    """The logits a Keras sigmoid (or softmax) cached on its output tensor, else None."""
    return getattr(probabilities, "_keras_logits", None)


class HookedModelCheckpoint(tf.keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` with its two private hooks under names of our own: override
    :meth:`write_file` to change how a checkpoint file is written; call :meth:`save_at` to save
    at an epoch whatever ``save_freq`` counts."""

    def _save_handler(self, filepath):
        self.write_file(filepath)

    def write_file(self, filepath: str) -> None:
        """Write the checkpoint to ``filepath`` (Keras' own writer)."""
        super()._save_handler(filepath)

    def save_at(self, epoch: int, logs) -> None:
        """Save now, as Keras would at the end of ``epoch`` once its epoch count is due."""
        self.epochs_since_last_save += 1
        self._save_model(epoch=epoch, batch=None, logs=logs)


def create_restored_save_counter(backup: tf.keras.callbacks.BackupAndRestore) -> None:
    """Create the save counter of the checkpoint ``backup`` restores from (once its
    ``on_train_begin`` ran). Creating it is a collective under MultiWorkerMirroredStrategy: the
    chief's restore creates it, so a worker that restored nothing must create it too, at the
    same point, or the collectives that follow pair up wrongly."""
    backup._training_state.read_checkpoint_manager.checkpoint.save_counter
