"""Stochastic weight averaging (SWA) over the last ``train.swa_epochs`` epochs.

The running mean of the weights at the end of every epoch from ``epochs - swa_epochs`` on, as
the strong SIIM entries averaged their last checkpoints. Every worker keeps the mean (reading
weights is a collective under MultiWorkerMirroredStrategy, so all must take part); the chief
also saves it after each epoch as ``checkpoints/swa-epoch-NNN.npz`` (the last two are kept), so
a resumed run continues the mean from the epoch its backup holds (the chief reads it and sends
it to the others). BatchNorm moving statistics
are averaged like every other weight, not re-estimated from a pass over the training set.
After training, :func:`keras_ptx.training.finish.finish` scores the mean on the validation
split and keeps it only if it beats the best epoch.
"""
from __future__ import annotations

import os

import numpy as np

from keras_ptx.fileio import atomic_path, join, local_copy
from keras_ptx.tf_setup import tf
from keras_ptx.training.strategy import broadcast, from_chief, is_chief

_PATTERN = "swa-epoch-{:03d}.npz"


class WeightAveraging(tf.keras.callbacks.Callback):
    def __init__(self, first_epoch: int, state_dir: str, strategy, *, resume_epoch: int = 0,
                 echo=print):
        super().__init__()
        self.first_epoch, self.state_dir, self.strategy = first_epoch, str(state_dir), strategy
        self.write = is_chief(strategy)
        self.resume_epoch, self.echo = resume_epoch, echo
        self.mean: list[np.ndarray] | None = None
        self.epochs: list[int] = []

    def on_train_begin(self, logs=None):
        if self.resume_epoch <= self.first_epoch:
            return
        if self.write:
            self._load(join(self.state_dir, _PATTERN.format(self.resume_epoch - 1)))
        self.epochs = from_chief(self.strategy, self.epochs if self.write else None)
        if self.epochs:
            like = self.mean or [np.zeros(w.shape, np.float64) for w in self.model.weights]
            self.mean = [m.numpy() for m in broadcast(self.strategy, like)]

    def _load(self, path: str) -> None:
        if not tf.io.gfile.exists(path):
            self.echo(f"weight averaging: no saved mean in {path}; averaging restarts here")
            return
        with local_copy(path) as local, np.load(local) as state:
            self.epochs = [int(e) for e in state["epochs"]]
            self.mean = [state[f"w{i}"] for i in range(len(state.files) - 1)]

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.first_epoch:
            return
        weights = self.model.get_weights()
        if self.mean is None:
            self.mean = [np.asarray(w, np.float64) for w in weights]
        else:
            n = len(self.epochs) + 1
            self.mean = [m + (np.asarray(w, np.float64) - m) / n for m, w in zip(self.mean, weights)]
        self.epochs.append(epoch)
        if self.write:
            self._save(epoch)

    def averaged_weights(self, like: list[np.ndarray]) -> list[np.ndarray] | None:
        """The mean cast to the dtypes of ``like`` (the model's weights), or None if no epoch
        was averaged."""
        if self.mean is None:
            return None
        return [m.astype(w.dtype) for m, w in zip(self.mean, like)]

    def _save(self, epoch: int) -> None:
        tf.io.gfile.makedirs(self.state_dir)
        with atomic_path(join(self.state_dir, _PATTERN.format(epoch))) as tmp:
            np.savez(tmp, epochs=np.asarray(self.epochs),
                     **{f"w{i}": m for i, m in enumerate(self.mean)})
        for old in tf.io.gfile.glob(join(self.state_dir, "swa-epoch-[0-9][0-9][0-9].npz")):
            if int(os.path.basename(old)[len("swa-epoch-"):-len(".npz")]) < epoch - 1:
                tf.io.gfile.remove(old)
