"""Checkpoints: files replaced whole (:class:`AtomicCheckpoint`), and the weights of a run's N
best epochs (``train.keep_best: N``) for checkpoint ensembles.

During training, :class:`TopEpochs` keeps ``checkpoints/top-epoch-NNN.weights.h5`` (1-based)
for the N best epochs so far by ``train.monitor`` and deletes an epoch's file when a better one
pushes it out; after a resume it starts from the ranking of the history rows the backup covers.
:func:`finish_top_epochs` then writes each as ``RUN_DIR/top/epoch-NNN.weights.h5`` without the
optimizer's state, best first in metrics.json's ``top_epochs``: what ensembles load
(``--checkpoints``, :mod:`keras_ptx.inference.ensemble`).
"""
from __future__ import annotations

import math
import os

from keras_ptx import rundir
from keras_ptx.fileio import atomic_path, join, local_copy
from keras_ptx.model.unetpp import build_model_to_load
from keras_ptx.tf_internals import HookedModelCheckpoint
from keras_ptx.tf_setup import tf
from keras_ptx.training.resume import Monitor, ResumePoint

PATTERN = "top-epoch-{epoch:03d}.weights.h5"      # in checkpoints/, as Keras formats it


class AtomicCheckpoint(HookedModelCheckpoint):
    """``ModelCheckpoint`` of weights whose file is replaced whole: a crash while it writes
    leaves the previous checkpoint, not half of a new one."""

    def write_file(self, filepath):
        with atomic_path(filepath) as tmp:
            self.model.save_weights(tmp, overwrite=True)


def ranking(rows, monitor: Monitor, n: int) -> list[tuple[float, int]]:
    """The ``n`` best (value, 0-based epoch) of history rows, best first (earlier on a tie, as
    ``ModelCheckpoint`` keeps the first best); NaN never ranks."""
    scored = [(row[monitor.key], row["epoch"]) for row in rows
              if not math.isnan(row.get(monitor.key, math.nan))]
    sign = -1.0 if monitor.mode == "max" else 1.0
    return sorted(scored, key=lambda item: (sign * item[0], item[1]))[:n]


class TopEpochs(AtomicCheckpoint):
    """Keeps the weights of the ``n`` best epochs (see the module docstring). Every worker
    saves (reading BatchNorm statistics is a collective; the others write to Keras' temporary
    folders); the chief alone deletes."""

    def __init__(self, checkpoints: str, n: int, monitor: Monitor, start: ResumePoint,
                 chief: bool):
        super().__init__(join(checkpoints, PATTERN), save_weights_only=True,
                         monitor=monitor.key)
        self.folder, self.n, self.rank_by, self.chief = checkpoints, n, monitor, chief
        self.kept = ranking(start.history, monitor, n)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.rank_by.key, math.nan)
        ranked = ranking([*({"epoch": e, self.rank_by.key: v} for v, e in self.kept),
                          {"epoch": epoch, self.rank_by.key: value}], self.rank_by, self.n)
        if (value, epoch) not in ranked:
            return
        self.kept = ranked
        self.save_at(epoch, logs)
        if self.chief:
            self._delete_others()

    def _delete_others(self) -> None:
        keep = {PATTERN.format(epoch=e + 1) for _, e in self.kept}
        for path in tf.io.gfile.glob(join(self.folder, "top-epoch-*.weights.h5")):
            if os.path.basename(path) not in keep:
                tf.io.gfile.remove(path)


def finish_top_epochs(run: str, config, history, monitor: Monitor) -> list[int]:
    """Write RUN_DIR/top/ from the kept checkpoints (the chief, after training); returns the
    1-based epochs, best first."""
    epochs = [e + 1 for _, e in ranking(history, monitor, config.train.keep_best)]
    folder = join(run, rundir.TOP)
    tf.io.gfile.makedirs(folder)
    twin = build_model_to_load(config)
    for epoch in epochs:
        source = join(run, rundir.CHECKPOINTS, PATTERN.format(epoch=epoch))
        with local_copy(source) as local:
            twin.load_weights(local)
        with atomic_path(join(folder, rundir.TOP_FILE.format(epoch))) as tmp:
            twin.save_weights(tmp)
    return epochs
