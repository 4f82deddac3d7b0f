"""A run's callbacks (:class:`RunCallbacks`) and those among them that Keras does not ship:
epoch statistics, the one-line epoch summary, validation overlays for TensorBoard, early stopping
and plateau decay that survive a resume, checkpoints replaced whole, and a backup that workers
other than the chief never read."""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from types import SimpleNamespace

import numpy as np

from keras_ptx import rundir
from keras_ptx.config import Config, Normalization
from keras_ptx.data.records_dir import RecordsDir
from keras_ptx.fileio import join
from keras_ptx.input.normalize import gray_from_model_input
from keras_ptx.input.pipeline import make_eval_dataset
from keras_ptx.model.encoders import encoder_layers
from keras_ptx.model.unetpp import named_outputs
from keras_ptx.tf_internals import create_restored_save_counter
from keras_ptx.tf_setup import tf
from keras_ptx.training.averaging import WeightAveraging
from keras_ptx.training.checkpoints import AtomicCheckpoint, TopEpochs
from keras_ptx.training.resume import Monitor, ResumePoint, score_key
from keras_ptx.training.schedules import current_learning_rate
from keras_ptx.training.strategy import is_chief, sync_from_chief

SAMPLE_SCAN = 256           # validation examples searched for positive cases to show


class EpochStats(tf.keras.callbacks.Callback):
    """Adds ``lr`` (the rate of the epoch's last step) and ``images_per_sec`` (training images
    over training time, validation excluded) to each epoch's logs; place it first."""

    def __init__(self, global_batch: int):
        super().__init__()
        self.global_batch = global_batch

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._train_seconds, self._steps = time.perf_counter(), None, 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps = batch + 1

    def on_test_begin(self, logs=None):
        if self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        seconds = self._train_seconds or time.perf_counter() - self._start
        logs["lr"] = current_learning_rate(self.model.optimizer)
        logs["images_per_sec"] = self._steps * self.global_batch / max(seconds, 1e-9)


class EpochSummary(tf.keras.callbacks.Callback):
    """Prints one line per epoch: loss, validation loss and score (the monitored one with the
    best so far), learning rate and images/s."""

    def __init__(self, monitor: Monitor, score: str, epochs: int,
                 start: ResumePoint = ResumePoint(), echo=print):
        super().__init__()
        self.monitor, self.score, self.epochs, self.echo = monitor, score, epochs, echo
        self.best, self.best_epoch = start.best_score, start.best_epoch

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor.key, math.nan)
        if not math.isnan(value) and (self.best is None or self.monitor.better(value, self.best)):
            self.best, self.best_epoch = value, epoch
        best = "" if self.best is None else f" (best {self.best:.4f}, epoch {self.best_epoch + 1})"
        columns = {"val_loss": "val_loss", self.score: "val score"}
        parts = [f"epoch {epoch + 1}/{self.epochs}", f"loss {logs.get('loss', math.nan):.4f}"]
        parts += [f"{label} {logs.get(key, math.nan):.4f}{best if key == self.monitor.key else ''}"
                  for key, label in columns.items() if key in logs or key == self.monitor.key]
        parts += [f"lr {logs.get('lr', math.nan):.3g}",
                  f"{logs.get('images_per_sec', math.nan):.1f} img/s"]
        self.echo("  ".join(parts))


class ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
    """``EarlyStopping`` that starts from the best monitored value and patience count a resumed
    run had reached (the callback's own state does not survive a restart)."""

    def __init__(self, start: ResumePoint = ResumePoint(), **kwargs):
        super().__init__(**kwargs)
        self.start = start

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.start.best_score is not None:
            self.best, self.best_epoch, self.wait = (
                self.start.best_score, self.start.best_epoch, self.start.wait)
        if self.start.stopped_early(self.patience):
            self.stopped_epoch = self.start.epoch - 1


class ResumablePlateau(tf.keras.callbacks.ReduceLROnPlateau):
    """``ReduceLROnPlateau`` whose wait, best and cooldown counters continue where the run's
    earlier epochs left them: it replays ``start.history`` (each row's monitored value and the
    rate it was trained at) through Keras' own rule. The rate itself comes back with the
    optimizer from the backup."""

    def __init__(self, start: ResumePoint = ResumePoint(), **kwargs):
        super().__init__(**kwargs)
        self.start = start
        # the replay's stand-in for the optimizer's rate: made here, outside any strategy scope
        self._rate = tf.Variable(0.0, dtype=tf.float32, trainable=False)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        model, verbose = self.model, self.verbose
        self.verbose = 0
        self.model = SimpleNamespace(optimizer=SimpleNamespace(lr=self._rate))
        try:
            for row in self.start.history:
                self._rate.assign(row["lr"])
                super().on_epoch_end(row["epoch"], dict(row))
        finally:
            self.model, self.verbose = model, verbose


class SharedBackupAndRestore(tf.keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` (kept after ``fit``) whose state only the chief reads back.

    Keras has every worker restore from the chief's backup folder, which on machines that share
    no disk is not there. Here the other workers back up into a local temporary folder (every
    worker must take part in writing a backup: reading BatchNorm statistics is a collective)
    and restore nothing; when the chief has restored (``resuming``, which every worker knows
    from the chief), they receive its weights and optimizer state
    (:func:`~keras_ptx.training.strategy.sync_from_chief`). ``fit`` must then be given the
    resumed ``initial_epoch`` on every worker.
    """

    def __init__(self, backup_dir: str, strategy, resuming: bool):
        self.strategy, self.resuming = strategy, resuming
        self._scratch = None if is_chief(strategy) else tempfile.mkdtemp(prefix="keras-ptx-backup-")
        super().__init__(self._scratch or backup_dir, delete_checkpoint=False)

    def on_train_begin(self, logs=None):
        if not self.resuming:
            super().on_train_begin(logs)
            return
        self.model.optimizer.build(self.model.trainable_variables)  # its state exists to sync
        super().on_train_begin(logs)
        if self._scratch:
            create_restored_save_counter(self)
        sync_from_chief(self.strategy, [*self.model.variables, *self.model.optimizer.variables])

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)


class FreezeEncoder(tf.keras.callbacks.Callback):
    """Trains the decoder and heads only for epochs before ``epochs``
    (``train.freeze_encoder_epochs``), then the whole network, within one ``fit``; frozen
    encoder layers are not trainable, so their BatchNorm layers run in inference mode.

    Why one ``fit`` whose step function is rebuilt: ``fit`` traces its step once, with the
    trainable variables and BatchNorm modes of that moment, so a flip of ``trainable`` takes
    effect only in a step built afterwards. Rebuilding it (``make_train_function(force=True)``,
    what ``compile`` would make ``fit`` do, without resetting the loss, metrics and optimizer)
    at the epoch where the state changes keeps everything else one run: the callbacks' state,
    the history, the learning-rate schedule and the backup. A resume needs nothing more: the
    state follows each epoch's number, which the backup decides. The optimizer is built for
    every variable before the first epoch (its state variables exist, and are saved in the
    backup, in the same order whether the run starts frozen, resumes or never freezes);
    frozen variables get no gradient, so their optimizer state and values stay as they were.
    Two ``fit`` calls, the alternative, would restart every callback (history, early stopping,
    the plateau replay) at the boundary.
    """

    def __init__(self, epochs: int, encoder: str, echo=None):
        super().__init__()
        self.epochs, self.encoder, self.echo = epochs, encoder, echo
        self._frozen, self._layers = False, []

    def on_train_begin(self, logs=None):
        self.model.optimizer.build(self.model.trainable_variables)
        self._layers = encoder_layers(self.model, self.encoder)

    def on_epoch_begin(self, epoch, logs=None):
        frozen = epoch < self.epochs
        if frozen != self._frozen and self.echo:
            self.echo(f"epoch {epoch + 1}: " + (f"encoder frozen through epoch {self.epochs}"
                                                if frozen else "the whole network trains"))
        self._set(frozen)

    def on_train_end(self, logs=None):
        self._set(False)        # the network as compiled, for what follows fit

    def _set(self, frozen: bool) -> None:
        if frozen == self._frozen:
            return
        for layer in self._layers:
            layer.trainable = not frozen
        self._frozen = frozen
        self.model.train_function = self.model.make_train_function(force=True)


class ValidationImages(tf.keras.callbacks.Callback):
    """Each epoch, a few validation images with the true mask (green) and the predicted one
    (red; overlap yellow) drawn into TensorBoard under ``validation/overlay``.

    Every worker predicts (reading the weights is a collective under MultiWorkerMirroredStrategy);
    only a worker with ``log_dir`` writes.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, threshold: float,
                 normalization: Normalization, log_dir=None):
        """``images``: model input, normalised as ``normalization`` says."""
        super().__init__()
        self.images, self.masks, self.threshold = images, masks, threshold
        self.normalization = normalization
        self.writer = tf.summary.create_file_writer(str(log_dir)) if log_dir else None

    def on_epoch_end(self, epoch, logs=None):
        outputs = named_outputs(self.model, self.model(self.images, training=False))["mask"]
        if self.writer is None:
            return
        with self.writer.as_default():
            tf.summary.image("validation/overlay", overlay(self.images, self.masks, outputs,
                                                           self.threshold, self.normalization),
                             step=epoch, max_outputs=len(self.images))
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()


def overlay(images, masks, probabilities, threshold: float, normalization: Normalization):
    """RGB [N, S, S, 3] in [0, 1]: the gray radiograph with truth in green, prediction in red."""
    gray = tf.clip_by_value(gray_from_model_input(tf.convert_to_tensor(images, tf.float32),
                                                  normalization), 0.0, 1.0)
    truth = tf.cast(tf.convert_to_tensor(masks) > 0.5, tf.float32)
    pred = tf.cast(tf.cast(probabilities, tf.float32) > threshold, tf.float32)
    colour = tf.concat([pred, truth, tf.zeros_like(truth)], axis=-1)
    alpha = 0.5 * tf.maximum(truth, pred)
    return tf.tile(gray, [1, 1, 1, 3]) * (1.0 - alpha) + colour * alpha


def validation_sample(dataset, count: int, scan: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` (image, mask) pairs from the first ``scan`` examples of an evaluation
    dataset (batches of dicts with 'image' and 'mask'), images with a mask first."""
    images, masks = [], []
    for batch in dataset:
        images.append(batch["image"].numpy())
        masks.append(batch["mask"].numpy())
        if sum(len(b) for b in images) >= scan:
            break
    if not images:
        return np.zeros((0,)), np.zeros((0,))
    images, masks = np.concatenate(images)[:scan], np.concatenate(masks)[:scan]
    order = np.argsort(-(masks.reshape(len(masks), -1).max(axis=1)), kind="stable")[:count]
    return images[order], masks[order]


class RunCallbacks:
    """A run's own callbacks, in the order Keras calls them at an epoch's end (see
    :mod:`keras_ptx.training.run`), with handles on the ones :mod:`~keras_ptx.training.finish`
    reads."""

    def __init__(self, config: Config, records: RecordsDir, run: str, monitor: Monitor,
                 start: ResumePoint, strategy, echo):
        train = config.train
        chief = is_chief(strategy)
        checkpoints = join(run, rundir.CHECKPOINTS)
        keras = tf.keras.callbacks
        self.best = AtomicCheckpoint(
            join(checkpoints, rundir.BEST_WEIGHTS), monitor=monitor.key, mode=monitor.mode,
            save_best_only=True, save_weights_only=True, initial_value_threshold=start.best_score)
        self.early_stopping = ResumableEarlyStopping(
            start, monitor=monitor.key, mode=monitor.mode, patience=train.early_stopping_patience,
            verbose=1) if train.early_stopping_patience else None
        self.averaging = WeightAveraging(
            max(0, train.epochs - train.swa_epochs), checkpoints, strategy,
            resume_epoch=start.epoch, echo=echo) if train.swa_epochs else None
        self.callbacks = [EpochStats(train.batch_size)]
        if train.freeze_encoder_epochs:     # before the backup, which restores the optimizer
            self.callbacks.append(FreezeEncoder(train.freeze_encoder_epochs,
                                                config.model.encoder, echo if chief else None))
        self.callbacks += [
            keras.TerminateOnNaN(), self.best,
            *([TopEpochs(checkpoints, train.keep_best, monitor, start, chief)]
              if train.keep_best > 1 else []),
            AtomicCheckpoint(join(checkpoints, rundir.LAST_WEIGHTS),
                             save_weights_only=True),
        ]
        if self.early_stopping:
            self.callbacks.append(self.early_stopping)
        if train.lr_schedule == "plateau":
            self.callbacks.append(ResumablePlateau(
                start, monitor=monitor.key, mode=monitor.mode, factor=train.plateau_factor,
                patience=train.plateau_patience, min_lr=train.min_learning_rate, verbose=1))
        if self.averaging:
            self.callbacks.append(self.averaging)
        if train.tensorboard_images:
            images, masks = validation_sample(
                make_eval_dataset(config, records, "val", batch_size=32),
                train.tensorboard_images, SAMPLE_SCAN)
            self.callbacks.append(ValidationImages(
                images, masks, config.eval.threshold, config.model.normalization,
                log_dir=join(run, rundir.LOGS, "images") if chief else None))
        if chief:
            self.callbacks += [
                keras.CSVLogger(join(run, rundir.HISTORY), append=start.epoch > 0),
                keras.TensorBoard(join(run, rundir.LOGS), write_graph=False,
                                  profile_batch=0),
            ]
        self.callbacks.append(keras.ProgbarLogger(count_mode="steps"))
        if chief:
            self.callbacks.append(EpochSummary(monitor, "val_" + score_key(config.model),
                                               train.epochs, start, echo))
        # kept after fit: finish deletes it once metrics.json is written
        self.callbacks.append(SharedBackupAndRestore(join(checkpoints, rundir.BACKUP),
                                                     strategy, resuming=start.epoch > 0))
