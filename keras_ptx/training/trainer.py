"""One training run: checks, strategy, data, model, callbacks, ``fit``, and the run's results.

Order matters under MultiWorkerMirroredStrategy, which must exist before TensorFlow runs an op:
settings and the data directory are checked with plain file access first, then the strategy is
created, the records are checked, the chief alone prepares RUN_DIR while the others wait at a
barrier, and only then are the datasets and the model (inside ``strategy.scope()``) built.
Nothing is written to RUN_DIR before every check has passed.

Callbacks, in the order Keras calls them at an epoch's end: epoch statistics (lr, images/s),
TerminateOnNaN, ModelCheckpoint (best by ``train.monitor``, the validation score or loss; and
last; weights), EarlyStopping on the same, ReduceLROnPlateau (``lr_schedule: plateau``), weight
averaging (``swa_epochs``), TensorBoard overlays, CSVLogger and TensorBoard scalars (chief), the
progress bar, the one-line summary (chief), and BackupAndRestore last, so that a backup of epoch N means
every file of epoch N is written. Workers other than the chief write checkpoints to temporary
directories (Keras does this itself) and nothing else.

After ``fit`` every worker loads the best checkpoint (or the weight average, when it does
better on the validation split), the chief saves it as RUN_DIR/best.weights.h5 and writes
metrics.json. Epochs are 1-based in printed lines and metrics.json, 0-based in history.csv.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from keras_ptx import rundir
from keras_ptx.config import Config, ConfigError, check_image_size
from keras_ptx.data import manifest, records
from keras_ptx.input import cache, pipeline
from keras_ptx.input.policy import build_policy
from keras_ptx.input.workers import AugmentWorkerError
from keras_ptx.model import (WeightsError, build_model, make_losses, make_metrics,
                             output_names, resolve_jit_compile, resolve_mixed_precision)
from keras_ptx.model.metrics import thresholds
from keras_ptx.model.unetpp import build_model_to_load, check_model_config
from keras_ptx.tf_setup import tf
from keras_ptx.training import TrainingError
from keras_ptx.training.averaging import WeightAveraging
from keras_ptx.training.callbacks import (EpochStats, EpochSummary, ResumableEarlyStopping,
                                          ValidationImages, validation_sample)
from keras_ptx.training.resume import (Monitor, ResumePoint, best_row, is_finished,
                                       prepare_run_dir, read_history, resume_point)
from keras_ptx.training.schedules import check_settings as check_optimizer_settings
from keras_ptx.training.schedules import make_optimizer
from keras_ptx.training.strategy import barrier, is_chief, make_strategy, resolve_strategy_name

SAMPLE_SCAN = 256           # validation examples searched for positive cases to show


@dataclass
class TrainResult:
    metrics: dict                           # as in metrics.json
    model: tf.keras.Model | None = None     # final weights; None if the run was already finished


def score_key(config: Config) -> str:
    """Keras' name of the competition-score metric: prefixed by 'mask_' with several outputs."""
    return "score" if len(output_names(config.model)) == 1 else "mask_score"


def make_monitor(config: Config) -> Monitor:
    """What picks the best epoch, early stopping and plateau decay (``train.monitor``)."""
    if config.train.monitor == "loss":
        return Monitor("val_loss", "min")
    if config.train.monitor == "score":
        return Monitor("val_" + score_key(config), "max")
    raise ConfigError(f"train.monitor: expected score or loss, got {config.train.monitor!r}")


def check_settings(config: Config) -> None:
    """ConfigError for settings that cannot train (before anything heavy starts)."""
    train = config.train
    make_monitor(config)
    try:
        resolve_strategy_name(train.strategy)
        check_optimizer_settings(train)
        check_model_config(config.model)
        thresholds(train.metric_threshold)
        make_losses(config)
        check_image_size(config.data.image_size)
        pipeline.check_settings(config.data)
        pipeline.positive_share_for_epoch(config, 0, train.epochs)
        build_policy(config.augment, config.data.image_size, train_crop=config.data.train_crop)
        cache.check_setting(config.data.cache)
        resolve_jit_compile(train.jit_compile)
        resolve_mixed_precision(train.mixed_precision)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for key, least in (("epochs", 1), ("batch_size", 1), ("swa_epochs", 0),
                       ("tensorboard_images", 0), ("early_stopping_patience", 0)):
        if getattr(train, key) < least:
            raise ConfigError(f"train.{key}: must be at least {least}, got {getattr(train, key)}")
    for key in ("steps_per_epoch", "validation_steps"):
        if getattr(train, key) is not None and getattr(train, key) < 1:
            raise ConfigError(f"train.{key}: must be at least 1 or null, got {getattr(train, key)}")


def check_data_dir(data_dir: str) -> None:
    """TrainingError for a missing or empty data directory (file access only, no TF ops)."""
    if not tf.io.gfile.isdir(data_dir):
        raise TrainingError(f"--data {data_dir}: " + ("not a directory" if tf.io.gfile.exists(data_dir)
                                                      else "no such directory"))
    if not tf.io.gfile.listdir(data_dir):
        raise TrainingError(f"--data {data_dir}: the directory is empty; build records with "
                            f"build-tfrecords")


def check_records(config: Config, data_dir: str) -> None:
    """TrainingError unless both splits' records exist and have ``data.image_size``
    (the input pipeline's own checks; they read one record per split)."""
    if records.shard_files(data_dir, "train") and not records.shard_files(data_dir, "val"):
        raise TrainingError(f"--data {data_dir}: no val split, which training validates on (and "
                            f"picks its best epoch by); rebuild with --val-fraction above 0")
    try:
        for split in ("train", "val"):
            pipeline.checked_files(config, data_dir, split)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    except tf.errors.OpError as exc:
        raise TrainingError(f"--data {data_dir}: unreadable records ({exc.message})") from None


def train(config: Config, data_dir: str, run_dir, *, resume: bool = False,
          overwrite: bool = False, callbacks=(), echo=print) -> TrainResult:
    """Train ``config`` on the records in ``data_dir`` into ``run_dir`` (see module docstring).

    ``callbacks`` are extra Keras callbacks, called before the run's own.
    """
    run = Path(run_dir)
    check_settings(config)
    check_data_dir(data_dir)
    if not overwrite and is_finished(run, config):
        metrics = rundir.read_json(run, rundir.METRICS)
        echo(f"{run} already holds this finished run (best epoch {metrics['best_epoch']}, "
             f"{metrics['monitor']} {metrics['best'][metrics['monitor']]:.4f}); nothing to do. "
             f"Use --overwrite to train again.")
        return TrainResult(metrics)

    strategy = make_strategy(config.train.strategy)
    check_records(config, data_dir)
    chief = is_chief(strategy)
    if chief:
        prepare_run_dir(run, config, resume=resume, overwrite=overwrite)
    barrier(strategy)                   # the chief has prepared RUN_DIR
    monitor = make_monitor(config)
    start = resume_point(run, monitor)
    train_data, val_data, steps, caching = _datasets(config, data_dir, strategy, start)

    tf.keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        try:
            model = build_model(config, any_size=bool(config.data.train_crop))
        except WeightsError as exc:
            raise TrainingError(str(exc)) from None
        losses, loss_weights = make_losses(config)
        model.compile(optimizer=make_optimizer(config.train, steps), loss=losses,
                      loss_weights=loss_weights, metrics=make_metrics(config),
                      jit_compile=resolve_jit_compile(config.train.jit_compile))
    own = _Callbacks(config, data_dir, run, monitor, start, chief, echo)
    echo(_opening_line(config, strategy, steps, start))
    echo(caching)
    try:
        model.fit(train_data, validation_data=val_data, epochs=config.train.epochs,
                  steps_per_epoch=steps,
                  callbacks=[*callbacks, *own.callbacks], verbose=1 if sys.stdout.isatty() else 2)
    except tf.errors.DataLossError as exc:
        raise TrainingError(pipeline.damaged_records(data_dir, exc)) from None
    except tf.errors.OpError as exc:      # keep only the worker's own message
        marker = f"{AugmentWorkerError.__module__}.{AugmentWorkerError.__name__}: "
        if marker not in exc.message:
            raise
        detail = exc.message.rsplit(marker, 1)[1].split("\n\n\t [[", 1)[0].strip()
        raise TrainingError(f"augmentation stopped training: {detail}") from None
    barrier(strategy)                   # every worker's last epoch is written
    metrics = _finish(model, config, run, monitor, val_data, own, chief, echo)
    return TrainResult(metrics, model)


def _datasets(config: Config, data_dir: str, strategy, start: ResumePoint):
    """(train, val, steps per epoch, a line saying which splits are cached and why).

    Training: ``distribute_datasets_from_function``, so each worker reads its own files at the
    per-replica batch; Keras runs distributed datasets for a fixed number of steps without
    restarting them, so the stream is endless and an epoch is ``steps`` global batches (one
    pass over the split unless ``train.steps_per_epoch`` says otherwise). Validation: a plain
    dataset that Keras distributes and restarts each epoch, which is what gives every
    validation image exactly once per epoch, partial batches included (its first
    ``train.validation_steps`` batches, if set); workers take alternate batches.
    ``data.cache: auto`` is settled here, once per split, so the log says what was done; a
    validation cut short by ``train.validation_steps`` never completes a cache, so it has none.
    """
    names = output_names(config.model)

    def settled(cfg: Config, split: str) -> Config:
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                                 cache=plans[split].cache))

    def targets(image, truth):
        return image, {name: truth["label" if name == "label" else "mask"] for name in names}

    try:
        plans = {split: cache.plan(config.data, data_dir, split) for split in ("train", "val")}
        if config.train.validation_steps and plans["val"].cache:
            plans["val"] = cache.CachePlan(False, "train.validation_steps reads part of it")
        steps = pipeline.steps_per_epoch(config, data_dir) or _one_pass(config, data_dir)
        endless = settled(dataclasses.replace(config, train=dataclasses.replace(
            config.train, steps_per_epoch=steps)), "train")
        train_data = strategy.distribute_datasets_from_function(
            lambda context: pipeline.make_dataset(
                endless, data_dir, "train", epoch=start.epoch, num_epochs=config.train.epochs,
                input_context=context).map(targets))
        val_data = pipeline.make_dataset(settled(config, "val"), data_dir, "val",
                                         training=False).map(targets)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    except tf.errors.OpError as exc:
        raise TrainingError(f"--data {data_dir}: unreadable records ({exc.message})") from None
    if config.train.validation_steps:
        val_data = val_data.repeat().take(config.train.validation_steps).apply(
            tf.data.experimental.assert_cardinality(config.train.validation_steps))
    options = tf.data.Options()     # workers split the batches (the split may be a single file)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    caching = "decoded records kept in memory: " + ", ".join(
        f"{split} {'yes' if p.cache else 'no'} ({p.reason})" for split, p in plans.items())
    return train_data, val_data.with_options(options), steps, caching


def _one_pass(config: Config, data_dir: str) -> int:
    count, _ = manifest.split_counts(data_dir, "train")
    if count < config.train.batch_size:
        raise TrainingError(f"--data {data_dir}: {count} training records, fewer than one "
                            f"batch of train.batch_size={config.train.batch_size}")
    return pipeline.steps_in_one_pass(config, count)


class _Callbacks:
    """The run's own callbacks (module docstring), with handles on the ones ``_finish`` reads."""

    def __init__(self, config: Config, data_dir: str, run: Path, monitor: Monitor,
                 start: ResumePoint, chief: bool, echo):
        train = config.train
        checkpoints = run / rundir.CHECKPOINTS
        keras = tf.keras.callbacks
        self.best = keras.ModelCheckpoint(
            str(checkpoints / rundir.BEST_WEIGHTS), monitor=monitor.key, mode=monitor.mode,
            save_best_only=True, save_weights_only=True, initial_value_threshold=start.best_score)
        self.early_stopping = ResumableEarlyStopping(
            start, monitor=monitor.key, mode=monitor.mode, patience=train.early_stopping_patience,
            verbose=1) if train.early_stopping_patience else None
        self.averaging = WeightAveraging(
            max(0, train.epochs - train.swa_epochs), checkpoints, write=chief,
            resume_epoch=start.epoch, echo=echo) if train.swa_epochs else None
        self.callbacks = [
            EpochStats(train.batch_size), keras.TerminateOnNaN(), self.best,
            keras.ModelCheckpoint(str(checkpoints / rundir.LAST_WEIGHTS), save_weights_only=True),
        ]
        if self.early_stopping:
            self.callbacks.append(self.early_stopping)
        if train.lr_schedule == "plateau":
            self.callbacks.append(keras.ReduceLROnPlateau(
                monitor=monitor.key, mode=monitor.mode, factor=train.plateau_factor,
                patience=train.plateau_patience, min_lr=train.min_learning_rate, verbose=1))
        if self.averaging:
            self.callbacks.append(self.averaging)
        if train.tensorboard_images:
            images, masks = validation_sample(
                pipeline.make_eval_dataset(config, data_dir, "val", batch_size=32),
                train.tensorboard_images, SAMPLE_SCAN)
            self.callbacks.append(ValidationImages(
                images, masks, config.eval.threshold,
                log_dir=run / rundir.LOGS / "images" if chief else None))
        if chief:
            self.callbacks += [
                keras.CSVLogger(str(run / rundir.HISTORY), append=start.epoch > 0),
                keras.TensorBoard(str(run / rundir.LOGS), write_graph=False, profile_batch=0),
            ]
        self.callbacks.append(keras.ProgbarLogger(count_mode="steps"))
        if chief:
            self.callbacks.append(EpochSummary(monitor, "val_" + score_key(config), train.epochs,
                                               start, echo))
        self.callbacks.append(keras.BackupAndRestore(str(checkpoints / rundir.BACKUP)))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _opening_line(config: Config, strategy, steps: int, start: ResumePoint) -> str:
    train, size, crop = config.train, config.data.image_size, config.data.train_crop
    line = (f"training UNet++ {config.model.encoder} at {size}x{size}"
            f"{f' on {crop}x{crop} crops' if crop else ''}: {_count(train.epochs, 'epoch')} of "
            f"{_count(steps, 'step')}, global batch {train.batch_size} on "
            f"{_count(strategy.num_replicas_in_sync, 'replica')} "
            f"({resolve_strategy_name(train.strategy)} strategy), XLA "
            f"{'on' if resolve_jit_compile(train.jit_compile) else 'off'}, mixed precision "
            f"{'on' if resolve_mixed_precision(train.mixed_precision) else 'off'}")
    if start.epoch:
        line += f"\ncontinuing after epoch {start.epoch} from the backup"
        if start.best_score is not None:
            line += f" (best {start.best_score:.4f} so far, epoch {start.best_epoch + 1})"
    return line


def _finish(model, config: Config, run: Path, monitor: Monitor, val_data, own: _Callbacks,
            chief: bool, echo) -> dict:
    best_path = run / rundir.CHECKPOINTS / rundir.BEST_WEIGHTS
    if not best_path.is_file():
        raise TrainingError(f"no epoch ended with a finite {monitor.key}, so there is no best "
                            f"checkpoint (see {run / rundir.HISTORY}); lower "
                            f"train.learning_rate and re-run with --overwrite")
    _load_weights(model, best_path, config)
    final, averaged = "best_epoch", None
    if own.averaging and own.averaging.mean is not None:
        best_weights = model.get_weights()
        model.set_weights(own.averaging.averaged_weights(best_weights))
        scores = model.evaluate(val_data, return_dict=True, verbose=0)
        averaged = {"epochs": [e + 1 for e in own.averaging.epochs],
                    monitor.key: float(scores[monitor.key[len("val_"):]])}
        if monitor.better(averaged[monitor.key], own.best.best):
            final = "swa"
        else:
            model.set_weights(best_weights)
    _save_for_inference(model, config, run / rundir.BEST_WEIGHTS, chief)
    if not chief:
        return {}

    history = read_history(run)
    best = best_row(history, monitor)
    stop = None
    if any(math.isnan(row.get("loss", 0.0)) for row in history):
        stop = "nan_loss"
    elif own.early_stopping and own.early_stopping.stopped_epoch:
        stop = "early_stopping"
    speeds = [row["images_per_sec"] for row in history[1:] if "images_per_sec" in row]
    metrics = {
        "completed": True,
        "monitor": monitor.key,
        "best_epoch": best["epoch"] + 1,
        "best": {key: value for key, value in best.items() if key != "epoch"},
        "epochs_trained": len(history),
        "stopped": stop,
        "final_weights": final,
        "weight_averaging": averaged,
        "images_per_sec": statistics.median(speeds) if speeds else None,
    }
    _write_json(run / rundir.METRICS, metrics)
    echo(f"best epoch {metrics['best_epoch']} of {len(history)}: "
         f"{monitor.key} {best[monitor.key]:.4f}"
         + (f"; weight average of epochs {averaged['epochs'][0]}-{averaged['epochs'][-1]}: "
            f"{averaged[monitor.key]:.4f}" if averaged else "")
         + f"\nsaved {'the weight average' if final == 'swa' else 'the best epoch'} as "
           f"{run / rundir.BEST_WEIGHTS}")
    return metrics


def _load_weights(model, path: Path, config: Config) -> None:
    """``model.load_weights`` for a model of any strategy: tf-keras cannot assign values read
    from an h5 file to the sync-on-read variables (BatchNorm statistics) of a distributed
    model, so those get the weights through a plain twin."""
    if resolve_strategy_name(config.train.strategy) == "default":
        model.load_weights(str(path))
        return
    twin = build_model_to_load(config)
    twin.load_weights(str(path))
    model.set_weights(twin.get_weights())


def _save_for_inference(model, config: Config, path: Path, chief: bool) -> None:
    """The chief writes ``model``'s weights without the optimizer's state (two thirds of a
    compiled model's file for B0), through an uncompiled twin: what predict, evaluate and
    export load. Every worker reads the weights: that is a collective."""
    weights = model.get_weights()
    if not chief:
        return
    twin = build_model_to_load(config)
    twin.set_weights(weights)
    tmp = path.with_name("." + path.name)
    twin.save_weights(str(tmp))
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name("." + path.name)
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
