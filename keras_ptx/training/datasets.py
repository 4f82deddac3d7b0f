"""The training and validation datasets of a run, and the decisions they are built with.

Training: ``distribute_datasets_from_function``, so each worker reads its own files at the
per-replica batch; Keras runs distributed datasets for a fixed number of steps without
restarting them, so the stream is endless and an epoch is ``steps`` global batches (one pass
over the split unless ``train.steps_per_epoch`` says otherwise; in a fold run, ``data.fold``,
the splits are the fold's: :mod:`keras_ptx.data.records_dir`). Validation: a plain dataset
that Keras distributes and restarts each epoch, which is what gives every validation image
exactly once per epoch, partial batches included (its first ``train.validation_steps``
batches, if set); workers take alternate batches. ``data.cache: auto`` is settled here, once
per split, so the log says what was done; a validation cut short by
``train.validation_steps`` never completes a cache, so it has none.
"""
from __future__ import annotations

from dataclasses import dataclass

from keras_ptx.config import Config
from keras_ptx.data.records_dir import RecordsDir
from keras_ptx.input import cache, pipeline
from keras_ptx.model import output_names
from keras_ptx.tf_setup import tf
from keras_ptx.training import TrainingError
from keras_ptx.training.resume import ResumePoint

SPLITS = ("train", "val")


@dataclass
class RunData:
    train: tf.distribute.DistributedDataset
    val: tf.data.Dataset
    steps: int                  # global training steps per epoch
    caching: str                # a line for the log: which splits are cached and why


def check_records(config: Config, records: RecordsDir) -> None:
    """TrainingError unless both splits' records exist with ``data.image_size`` (in a fold run:
    the records have the fold, and it and the other folds have images) and the training split
    holds a whole batch: a larger one would repeat images within a batch, and past what
    TensorFlow can shape fails only once training runs (reads one record per split)."""
    fold = config.data.fold
    if fold is None and records.files("train") and not records.files("val"):
        raise TrainingError(f"--data {records}: no val split, which training validates on (and "
                            f"picks its best epoch by); rebuild with --val-fraction above 0")
    for split in SPLITS:
        records.source(split, config.data.image_size, fold)
        if fold is not None and not records.counts(split, fold).records:
            raise TrainingError(f"--data {records}: no {split} images in the fold run "
                                f"data.fold={fold}")
    count = records.counts("train", fold).records
    if count < config.train.batch_size:
        raise TrainingError(f"--data {records}: {count} training records, fewer than one "
                            f"batch of train.batch_size={config.train.batch_size}")


def run_data(config: Config, records: RecordsDir, strategy, start: ResumePoint) -> RunData:
    """The datasets ``fit`` trains and validates on (see the module docstring)."""
    names = output_names(config.model)

    def targets(image, truth):
        return image, {name: truth["label" if name == "label" else "mask"] for name in names}

    plans = {split: cache.plan(config.data, records, split) for split in SPLITS}
    if config.train.validation_steps and plans["val"].cache:
        plans["val"] = cache.CachePlan(False, "train.validation_steps reads part of it")
    steps = pipeline.epoch_steps(config.train, records, fold=config.data.fold)
    train = strategy.distribute_datasets_from_function(
        lambda context: pipeline.make_dataset(
            config, records, "train", cached=plans["train"].cache, steps_per_epoch=steps,
            epoch=start.epoch, num_epochs=config.train.epochs, input_context=context,
        ).map(targets))
    val = pipeline.make_dataset(config, records, "val", training=False,
                                cached=plans["val"].cache).map(targets)
    if config.train.validation_steps:
        val = val.repeat().take(config.train.validation_steps).apply(
            tf.data.experimental.assert_cardinality(config.train.validation_steps))
    options = tf.data.Options()     # workers split the batches (the split may be a single file)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    caching = "decoded records kept in memory: " + ", ".join(
        f"{split} {'yes' if p.cache else 'no'} ({p.reason})" for split, p in plans.items())
    return RunData(train, val.with_options(options), steps, caching)
